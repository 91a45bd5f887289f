"""Avocado tests that tests/unit/test_fleet.py spreads over namespace test
hosts (harness/fleet/): some that say where they ran, one during which its
host is killed.

Not part of the functional suite (``make functional`` looks only in
tests/functional).
"""

import json
import os
import socket
import time

from avocado import Test

LOST_MARK = 'host-to-kill'      # in the test's log directory: the host's name
LOST_SLEEP_S = 60               # far longer than the unit test waits for the kill


class Where(Test):
    """Each test records the host it ran on, and takes two seconds, so
    that some are still to run when a host is killed.

    :avocado: enable
    """

    def where(self):
        time.sleep(2)
        self.whiteboard = json.dumps({'host': socket.gethostname()})

    def test_a(self):
        self.where()

    def test_b(self):
        self.where()

    def test_c(self):
        self.where()

    def test_d(self):
        self.where()


class Lost(Test):
    """Names its host in a file, then waits for that host to be killed.

    :avocado: enable
    """

    timeout = 2 * LOST_SLEEP_S

    def test_lost(self):
        with open(os.path.join(self.logdir, LOST_MARK), 'w', encoding='utf-8') as f:
            f.write(socket.gethostname())
        time.sleep(LOST_SLEEP_S)
