"""Run a real ``avocado run`` on a fixture module of tests/jobs, as the
harness's own tests of how jobs end (test_job_stop.py, test_boot_diagnosis.py).

Every process of the job inherits a MPQEMU_SUITE_TOKEN of its own, so that
what outlives the job can be found whoever its parent is now
(harness/base/leftovers.py).
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from harness.base import leftovers, paths
from harness.base.waiting import wait_until

AVOCADO = os.path.join(os.path.dirname(sys.executable), 'avocado')
AVOCADO_CONF = os.path.join(paths.REPO_DIR, 'tests', 'functional', 'avocado.conf')
JOBS_DIR = os.path.join(paths.REPO_DIR, 'tests', 'jobs')
STATE_TIMEOUT_S = 60.0       # a fixture test reaching the state a scenario needs
JOB_END_TIMEOUT_S = 120.0    # the job returning
CLEANUP_BOUND_S = 5.0        # the README's promise: nothing left 5 s after the job


class AvocadoJob:
    def __init__(self, tmp_path, module: str, tests, *args, env=None):
        self.dir = tmp_path
        self.token = f'job-{uuid.uuid4().hex[:12]}'
        full_env = dict(os.environ, **(env or {}))
        full_env[leftovers.TOKEN_VARIABLE] = self.token
        self.log_path = tmp_path / 'avocado.out'
        fixture = os.path.join(JOBS_DIR, module)
        with open(self.log_path, 'wb') as log:
            self.proc = subprocess.Popen(
                [AVOCADO, '--config', AVOCADO_CONF, 'run', '--job-results-dir',
                 str(tmp_path / 'results'), '--max-parallel-tasks', '2', *args,
                 *[f'{fixture}:{t}' for t in tests]],
                cwd=paths.REPO_DIR, env=full_env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)

    def wait_file(self, name: str) -> None:
        """Wait for a fixture test to create ``name`` in the job's directory."""
        wait_until(lambda: (self.dir / name).exists() or self.proc.poll() is not None,
                   STATE_TIMEOUT_S, f'the fixture test to reach {name!r}')
        assert self.proc.poll() is None, f'the job ended early:\n{self.output()}'

    def output(self) -> str:
        return self.log_path.read_text(errors='replace')[-3000:]

    def end(self) -> float:
        """Wait for the job to return, then for its processes to go; fails
        if any is left CLEANUP_BOUND_S later.  Returns how long they took."""
        try:
            self.proc.wait(JOB_END_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f'the job did not return within {JOB_END_TIMEOUT_S} s:\n'
                        f'{self.output()}')
        returned = time.monotonic()
        left = leftovers.wait_none(self.token, CLEANUP_BOUND_S)
        cleanup_s = time.monotonic() - returned
        if left:
            details = leftovers.describe(left)
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            pytest.fail(f'{len(left)} process(es) outlived the job by {CLEANUP_BOUND_S} s:\n'
                        f'{details}\n--- avocado ---\n{self.output()}')
        print(f'cleanup after the job returned: {cleanup_s * 1000:.0f} ms')
        return cleanup_s

    def results(self) -> dict:
        with open(self.dir / 'results' / 'latest' / 'results.json', encoding='utf-8') as f:
            return json.load(f)

    def test_result(self, name: str) -> dict:
        """The results.json entry of the test whose id ends with ``name``."""
        for test in self.results()['tests']:
            if test['id'].endswith(name):
                return test
        raise AssertionError(f'no result for {name} in {self.output()}')
