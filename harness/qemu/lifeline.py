"""Tie a child process's life to the harness's.

Avocado kills a timed-out test's runner but not its children, and a
harness killed by SIGKILL runs no cleanup; PR_SET_PDEATHSIG makes the
kernel kill every QEMU we start in either case.

Caveat (prctl(2)): the signal fires when the *thread* that forked the
child exits.  Start long-lived processes from the test's main thread.
"""

import ctypes
import os
import signal
from typing import Callable

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def preexec() -> Callable[[], None]:
    """A ``preexec_fn`` for subprocess that SIGKILLs the child when its
    parent dies.  Call it in the parent, right before starting the child."""
    parent_pid = os.getpid()

    def _setup() -> None:
        # Between fork and exec: keep to async-signal-safe calls.
        if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(127)
        # The parent may have died before prctl took effect: we were then
        # reparented, and nothing would ever kill us.
        if os.getppid() != parent_pid:
            os._exit(127)
    return _setup
