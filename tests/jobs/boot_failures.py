"""Avocado tests whose guest never comes up, for
tests/unit/test_boot_diagnosis.py: each must end as a FAIL from the harness
that names the cause, never as Avocado's "Test interrupted: Timeout reached".

Not part of the functional suite (``make functional`` looks only in
tests/functional).
"""

import os
import threading

from harness.base import deadlines
from harness.testing import MultiprocessTest
from harness.base.waiting import wait_until

# Small, so that the harness's deadline (this less REPORT_RESERVE_S) is
# what ends the boot wait: it must report before Avocado's timeout.
SHORT_TIMEOUT_S = deadlines.REPORT_RESERVE_S + 20


class StoppedRemote(MultiprocessTest):
    """The remote serving the boot disk is stopped while the firmware
    reads it.

    :avocado: enable
    """

    timeout = SHORT_TIMEOUT_S

    def _stop_remote_once_the_firmware_reads(self) -> None:
        firmware = os.path.join(self.outputdir, 'firmware.log')

        def reading():
            if not self._vms or not os.path.exists(firmware):
                return None
            with open(firmware, encoding='utf-8', errors='replace') as f:
                return 'Booting from Hard Disk' in f.read() and self._vms[-1]
        vm = wait_until(reading, 15, 'the firmware to boot from the LSI disk', 0.005)
        vm.remote('lsi1').faults.hang()

    def test_boot(self):
        threading.Thread(target=self._stop_remote_once_the_firmware_reads, daemon=True).start()
        self.launch(guest='lsi-boot')


class UserDisk(MultiprocessTest):
    """Boots the disk given as ``-p image=`` (the job gives one of zeros).

    :avocado: enable
    """

    timeout = SHORT_TIMEOUT_S

    def test_boot(self):
        self.launch(guest=self.guest_image())
