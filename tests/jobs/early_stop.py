"""Avocado tests that a job stops early, for tests/unit/test_job_stop.py
and .ci/run: they check that nothing of the suite outlives such a job.

Not part of the functional suite (``make functional`` looks only in
tests/functional).  ``EARLY_STOP_DIR`` names a directory where each test
leaves a file once it has reached the state the stop must find it in.
"""

import ctypes
import os
import signal
import threading

from harness.guest.session import GuestSession
from harness.testing import MultiprocessTest
from harness.base.waiting import wait_until

READY_TIMEOUT_S = 60.0
HOLD_S = 120.0          # far beyond any stop the scenarios make


def reached(state: str) -> None:
    path = os.path.join(os.environ['EARLY_STOP_DIR'], state)
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
        f.write(f'{os.getpid()}\n')
    os.replace(path + '.tmp', path)


def has_reached(state: str) -> bool:
    return os.path.exists(os.path.join(os.environ['EARLY_STOP_DIR'], state))


class Booting(MultiprocessTest):
    """A guest booting from a remote LSI when the job stops.

    :avocado: enable
    """

    timeout = HOLD_S + 60

    def test_mid_boot(self):
        vm = self.new_vm()
        vm.add_lsi('lsi1')
        session = GuestSession(self.guest_image('tiny'), self.outputdir)
        vm.add_args(*session.qemu_args())
        vm.launch()
        reached('booting')
        session.wait_ready(vm.qemu)
        reached('booted')
        threading.Event().wait(HOLD_S)


class Wedged(MultiprocessTest):
    """A test process that ignores SIGTERM and is stuck the way a real one
    was: a thread blocked writing a full pipe, the main thread waiting
    for it.

    :avocado: enable
    """

    timeout = HOLD_S + 60

    def test_stuck(self):
        vm = self.new_vm()
        vm.add_lsi('lsi1')
        self.launch(vm)
        # Process-wide, from this worker thread (Python's signal.signal
        # works only in the main thread): Avocado's SIGTERM is discarded.
        ctypes.CDLL(None).signal(signal.SIGTERM, ctypes.c_void_p(1))     # SIG_IGN
        _, write_end = os.pipe()
        os.set_blocking(write_end, True)
        writer = threading.Thread(target=lambda: os.write(write_end, b'x' * (1 << 20)),
                                  daemon=True)
        writer.start()
        reached('wedged')
        writer.join(HOLD_S)


class Fails(MultiprocessTest):
    """Fails once the state named by ``EARLY_STOP_AFTER`` is reached, so
    that --failfast stops the job with the other test still running.

    :avocado: enable
    """

    def test_fails(self):
        wait_until(lambda: has_reached(os.environ.get('EARLY_STOP_AFTER', 'booting')),
                   READY_TIMEOUT_S, 'the sibling test to get going')
        self.fail('deliberate failure: --failfast must stop the job here')
