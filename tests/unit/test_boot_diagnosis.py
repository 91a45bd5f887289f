"""A guest that never comes up ends as a FAIL from the harness that names
the cause, before the test's own timeout: real Avocado jobs on
tests/jobs/boot_failures.py."""

import pytest

from harness.images.image import resolve_image

from avocado_job import AvocadoJob

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module', autouse=True)
def lsi_boot_image():
    return resolve_image('lsi-boot')


@pytest.fixture(scope='module')
def job(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('boot-failures')
    zeros = tmp_path / 'zeros.raw'
    with open(zeros, 'wb') as f:
        f.truncate(64 << 20)
    run = AvocadoJob(tmp_path, 'boot_failures.py', ['StoppedRemote.test_boot',
                                                    'UserDisk.test_boot'],
                     '-p', f'image={zeros}', '-p', 'image_user=root',
                     '-p', 'image_password=unused')
    run.end()
    return run


def test_a_disk_of_zeros_fails_at_once_naming_the_firmware(job):
    result = job.test_result('UserDisk.test_boot')
    assert result['status'] == 'FAIL', result
    reason = result['fail_reason']
    assert reason.startswith('the guest did not come up: the firmware found no bootable '
                             'disk'), reason
    # Ended by the firmware giving up, not by the boot deadline.
    assert "firmware.log showed 'No bootable device' while waiting for SSH" in reason, reason


def test_a_remote_stopped_mid_boot_fails_naming_the_remote(job):
    result = job.test_result('StoppedRemote.test_boot')
    assert result['status'] == 'FAIL', result
    reason = result['fail_reason']
    assert reason.startswith('the guest did not come up: remote-lsi1 is stopped (SIGSTOP); '
                             "the proxy's CPU 0/TCG waits for a reply on the socket to "
                             'remote-lsi1'), reason
    assert 'Booting from Hard Disk' in reason           # how far the firmware got
