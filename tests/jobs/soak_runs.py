"""Avocado tests whose results across runs tests/unit/test_soak.py
aggregates (harness/tools/soak.py): one steady, one whose status changes
from one run to the next, one that always fails, one that waits until
the soak is stopped.

Not part of the functional suite (``make functional`` looks only in
tests/functional).  ``SOAK_RUNS_DIR`` names a directory where each run
leaves a mark, so that a test knows which run of the soak it is in.
"""

import json
import os
import time

from avocado import Test


def run_number(name: str) -> int:
    """1 for the first run of the soak that reaches ``name``, 2 next..."""
    marks = os.path.join(os.environ['SOAK_RUNS_DIR'], name)
    with open(marks, 'a', encoding='utf-8') as f:
        f.write('run\n')
    with open(marks, encoding='utf-8') as f:
        return len(f.readlines())


def record(test: Test, **figures) -> None:
    """As harness/testing.py's record(): figures as JSON in the whiteboard."""
    test.whiteboard = json.dumps(figures, indent=2, sort_keys=True)


class Steady(Test):
    """Passes every run; its figures grow by run: 10, 20, ... ms.

    :avocado: enable
    """

    def test_steady(self):
        run = run_number('steady')
        record(self, latency_ms=10.0 * run, round_trip={'median': 1.0 * run, 'n': 100},
               qemu='7.2.0', known_issues_met=[])


class Flaky(Test):
    """Passes in odd runs, cancels in even ones: a status that changes.

    :avocado: enable
    """

    def test_flaky(self):
        if run_number('flaky') % 2 == 0:
            self.cancel('even run')
        record(self, latency_ms=5.0)


class Fails(Test):
    """Fails every run.

    :avocado: enable
    """

    def test_fails(self):
        self.fail('fails every run')


class Waits(Test):
    """Leaves a mark, then waits far beyond any stop of the soak.

    :avocado: enable
    """

    timeout = 180

    def test_waits(self):
        run_number('waits')
        time.sleep(120)
