"""Nothing of the suite outlives an Avocado job, however the job stops.

Each scenario runs a real ``avocado run`` on tests/jobs/early_stop.py (real
remotes, proxies and guests), stops it the way a developer or a CI system
would, and then looks for any process still carrying the job's
MPQEMU_SUITE_TOKEN (harness/base/leftovers.py): QEMUs, runners, test processes,
watchers.  The bound is the one the README promises: none 5 s after the job
has returned.
"""

import os
import signal

import pytest

from harness.images.image import resolve_image

from avocado_job import AvocadoJob

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module', autouse=True)
def tiny_image():
    """Built (or found cached) before any job runs: not part of a stop."""
    return resolve_image('tiny')


def early_stop_job(tmp_path, tests, *args, after='booting') -> AvocadoJob:
    return AvocadoJob(tmp_path, 'early_stop.py', tests, *args,
                      env={'EARLY_STOP_DIR': str(tmp_path), 'EARLY_STOP_AFTER': after})


def test_failfast_with_a_sibling_mid_boot(tmp_path):
    job = early_stop_job(tmp_path, ['Booting.test_mid_boot', 'Fails.test_fails'], '--failfast')
    job.end()
    assert job.proc.returncode != 0
    assert job.results()['failures'] == 1
    assert (tmp_path / 'booting').exists()


@pytest.mark.parametrize('how', ['ctrl-c', 'sigint', 'sigterm'])
def test_job_stopped_by_a_signal(tmp_path, how):
    job = early_stop_job(tmp_path, ['Booting.test_mid_boot'])
    job.wait_file('booting')
    if how == 'ctrl-c':           # the terminal signals the whole process group
        os.killpg(job.proc.pid, signal.SIGINT)
    else:
        job.proc.send_signal(signal.SIGINT if how == 'sigint' else signal.SIGTERM)
    job.end()
    assert job.proc.returncode != 0


def test_job_timeout(tmp_path):
    job = early_stop_job(tmp_path, ['Booting.test_mid_boot'], '--job-timeout', '8')
    job.end()
    assert job.proc.returncode != 0
    assert (tmp_path / 'booting').exists()


def test_wedged_test_process(tmp_path):
    job = early_stop_job(tmp_path, ['Wedged.test_stuck', 'Fails.test_fails'], '--failfast',
                         after='wedged')
    job.end()
    assert job.proc.returncode != 0
    assert (tmp_path / 'wedged').exists()
