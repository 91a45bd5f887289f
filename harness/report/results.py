"""What an Avocado job left: each test's status, reason, tags and the
figures its whiteboard holds (harness/testing.py ``record()``).

Shared by the soak (harness/tools/soak.py), which compares runs, and the
report (harness/report/), which plots and tabulates them.
"""

import dataclasses
import json
import os
from typing import Dict, Optional

RESULTS_JSON = 'results.json'
RESULTS_HTML = 'results.html'       # avocado-framework-plugin-result-html's


def numeric_figures(figures: dict, prefix: str = '') -> Dict[str, float]:
    """The numbers of a whiteboard, nested dicts flattened to ``a.b``."""
    found: Dict[str, float] = {}
    for key, value in figures.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            found.update(numeric_figures(value, f'{name}.'))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[name] = value
    return found


def read_tests(results_path: str) -> Dict[str, dict]:
    """{test name: {status, reason, tags, figures}} of one job's
    results.json; ``figures`` are numeric_figures() of the whiteboard plus
    the test's duration as ``time_s``."""
    with open(results_path, encoding='utf-8') as f:
        results = json.load(f)
    tests = {}
    for test in results.get('tests', []):
        try:
            whiteboard = json.loads(test.get('whiteboard') or '{}')
        except ValueError:
            whiteboard = {}
        figures = numeric_figures(whiteboard) if isinstance(whiteboard, dict) else {}
        if isinstance(test.get('time_elapsed'), (int, float)):
            figures['time_s'] = test['time_elapsed']
        reason = test.get('fail_reason') or ''
        tests[test['name']] = {'status': test.get('status', ''),
                               'reason': '' if reason == '<unknown>' else reason,
                               'tags': test.get('tags') or {},
                               'figures': figures}
    return tests


@dataclasses.dataclass
class Job:
    """One finished Avocado job: its directory, results and HTML report."""
    label: str
    path: str
    job_id: str
    counts: Dict[str, int]
    tests: Dict[str, dict]          # read_tests()
    raw: Dict[str, dict]            # results.json's own entries, by test name

    @property
    def html(self) -> Optional[str]:
        """Avocado's HTML report of the job, if the plugin wrote one."""
        path = os.path.join(self.path, RESULTS_HTML)
        return path if os.path.isfile(path) else None


COUNTED = ('pass', 'warn', 'cancel', 'skip', 'failures', 'errors', 'interrupt')


def read_job(path: str, label: Optional[str] = None) -> Job:
    """The job in directory ``path`` (``build/job-results/latest`` and the
    like: symlinks are followed).  Raises OSError (no results.json: the job
    did not finish) or ValueError (one that is not Avocado's)."""
    path = os.path.realpath(path)
    results_path = os.path.join(path, RESULTS_JSON)
    with open(results_path, encoding='utf-8') as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get('tests'), list):
        raise ValueError(f'{results_path} is not an Avocado job\'s results.json')
    return Job(label=label or os.path.basename(path), path=path,
               job_id=str(data.get('job_id') or ''),
               counts={key: int(data.get(key) or 0) for key in COUNTED},
               tests=read_tests(results_path),
               raw={test['name']: test for test in data['tests']})
