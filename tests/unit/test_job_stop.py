"""Nothing of the suite outlives an Avocado job, however the job stops.

Each scenario runs a real ``avocado run`` on tests/jobs/early_stop.py (real
remotes, proxies and guests), stops it the way a developer or a CI system
would, and then looks for any process still carrying the job's
MPQEMU_SUITE_TOKEN (harness/leftovers.py): QEMUs, runners, test processes,
watchers.  The bound is the one the README promises: none 5 s after the job
has returned.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from harness import leftovers, paths
from harness.guest.image import resolve_image
from harness.waiting import wait_until

FIXTURE = os.path.join(paths.REPO_DIR, 'tests', 'jobs', 'early_stop.py')
AVOCADO = os.path.join(os.path.dirname(sys.executable), 'avocado')
AVOCADO_CONF = os.path.join(paths.REPO_DIR, 'tests', 'functional', 'avocado.conf')
STATE_TIMEOUT_S = 60.0       # the fixture test reaching the state the stop needs
JOB_END_TIMEOUT_S = 60.0     # the job returning once stopped
CLEANUP_BOUND_S = 5.0

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module', autouse=True)
def tiny_image():
    """Built (or found cached) before any job runs: not part of a stop."""
    return resolve_image('tiny')


class Job:
    def __init__(self, tmp_path, tests, *args, after='booting'):
        self.dir = tmp_path
        self.token = f'job-stop-{uuid.uuid4().hex[:12]}'
        self.after = after
        env = dict(os.environ, EARLY_STOP_DIR=str(tmp_path), EARLY_STOP_AFTER=after)
        env[leftovers.TOKEN_VARIABLE] = self.token
        self.log_path = tmp_path / 'avocado.out'
        with open(self.log_path, 'wb') as log:
            self.proc = subprocess.Popen(
                [AVOCADO, '--config', AVOCADO_CONF, 'run', '--job-results-dir',
                 str(tmp_path / 'results'), '--max-parallel-tasks', '2', *args,
                 *[f'{FIXTURE}:{t}' for t in tests]],
                cwd=paths.REPO_DIR, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)

    def wait_state(self) -> None:
        wait_until(lambda: (self.dir / self.after).exists() or self.proc.poll() is not None,
                   STATE_TIMEOUT_S, f'the fixture test to reach {self.after!r}')
        assert self.proc.poll() is None, f'the job ended early:\n{self.output()}'

    def output(self) -> str:
        return self.log_path.read_text(errors='replace')[-3000:]

    def end(self) -> float:
        """Wait for the job to return, then for its processes to go;
        returns how long they took after the job returned."""
        try:
            self.proc.wait(JOB_END_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f'the stopped job did not return within {JOB_END_TIMEOUT_S} s:\n'
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


def test_failfast_with_a_sibling_mid_boot(tmp_path):
    job = Job(tmp_path, ['Booting.test_mid_boot', 'Fails.test_fails'], '--failfast')
    job.end()
    assert job.proc.returncode != 0
    assert job.results()['failures'] == 1
    assert (tmp_path / 'booting').exists()


@pytest.mark.parametrize('how', ['ctrl-c', 'sigint', 'sigterm'])
def test_job_stopped_by_a_signal(tmp_path, how):
    job = Job(tmp_path, ['Booting.test_mid_boot'])
    job.wait_state()
    if how == 'ctrl-c':           # the terminal signals the whole process group
        os.killpg(job.proc.pid, signal.SIGINT)
    else:
        job.proc.send_signal(signal.SIGINT if how == 'sigint' else signal.SIGTERM)
    job.end()
    assert job.proc.returncode != 0


def test_job_timeout(tmp_path):
    job = Job(tmp_path, ['Booting.test_mid_boot'], '--job-timeout', '8')
    job.end()
    assert job.proc.returncode != 0
    assert (tmp_path / 'booting').exists()


def test_wedged_test_process(tmp_path):
    job = Job(tmp_path, ['Wedged.test_stuck', 'Fails.test_fails'], '--failfast',
              after='wedged')
    job.end()
    assert job.proc.returncode != 0
    assert (tmp_path / 'wedged').exists()
