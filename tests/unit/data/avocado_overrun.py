"""An Avocado test that overruns its timeout while holding a topology.

Run by test_teardown.py; not part of the functional suite.
"""

import json
import os
import time

from harness.testing import MultiprocessTest


class Overrun(MultiprocessTest):
    """
    :avocado: enable
    """

    timeout = 3

    def test_overrun(self):
        vm = self.launch(disks=[self.scratch_disk(16)])
        with open(os.environ['MPQEMU_PIDS_FILE'], 'w', encoding='utf-8') as f:
            json.dump([p.pid for p in vm.processes()], f)
        time.sleep(60)
