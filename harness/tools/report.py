"""The report of one or more finished Avocado jobs: plots of their figures
and their results as a coloured table, in one ``index.html``.

    python -m harness.tools.report                     # build/job-results/latest
    python -m harness.tools.report build/soak/run-*/latest --out build/soak/report
    python -m harness.tools.report A/latest B/latest --label 7.2 --label 10.0

One job's report goes into ``JOB/report/`` (beside Avocado's own
``results.html``, which avocado-framework-plugin-result-html writes), that
of several into ``--out`` (``build/report``).  Each job is a column of the
table; the plots pool them (harness/report/plots.py).  ``make functional``
writes the report of every job it runs.

Exit status 1, with the reason, when a job directory holds no finished job.
"""

import argparse
import os
import sys
from typing import Optional, Sequence

from ..base import paths
from ..report import page, plots
from ..report.results import read_job

DEFAULT_JOB = os.path.join(paths.build_dir(), 'job-results', 'latest')
DEFAULT_OUT = os.path.join(paths.build_dir(), 'report')


def write(job_dirs: Sequence[str], out_dir: Optional[str] = None,
          labels: Sequence[str] = ()) -> str:
    """The report of ``job_dirs`` (label each by ``labels``, else by its
    directory); returns the path of its index.html."""
    jobs = [read_job(path, labels[n] if n < len(labels) else None)
            for n, path in enumerate(job_dirs)]
    if out_dir is None:
        out_dir = os.path.join(jobs[0].path, 'report') if len(jobs) == 1 else DEFAULT_OUT
    plotted = plots.draw_all(jobs, os.path.join(out_dir, 'plots'))
    return page.render(jobs, plotted, out_dir)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m harness.tools.report',
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('jobs', nargs='*', default=[DEFAULT_JOB], metavar='JOB_DIR',
                        help=f'an Avocado job directory (default {DEFAULT_JOB})')
    parser.add_argument('--out', help='where index.html and plots/ go')
    parser.add_argument('--label', action='append', default=[],
                        help="a job's column title, in the order of the jobs")
    args = parser.parse_args(argv)
    try:
        index = write(args.jobs, args.out, args.label)
    except (OSError, ValueError) as err:
        print(f'report: no report: {err}', file=sys.stderr)
        return 1
    print(f'report: {index}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
