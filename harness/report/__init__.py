"""A job's report: its figures as plots, its results as a coloured table,
one ``index.html`` beside Avocado's own ``results.html``
(harness/tools/report.py writes it; ``make functional`` does after every job).
"""
