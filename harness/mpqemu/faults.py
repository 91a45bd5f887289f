"""Inject faults into a remote device process and remember when.

Each injection returns a ``Fault`` with its kind, the signal used and the
monotonic time it was sent, and tells the watchdogs that look out for its
effect (the remote's own; every remote's, for the guest's QEMU), so that
detection latencies are measured from the injection itself.
"""

import dataclasses
import signal
import time
from typing import Optional

from ..base.errors import HarnessError
from ..qemu.process import QEMUProcess
from .watchdog import RemoteWatchdog


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str             # 'kill', 'terminate', 'crash', 'hang', 'resume'
    signal: int
    injected_at: float    # time.monotonic()


class FaultInjector:
    """Signals for one QEMU process: crash it, stop it, resume it."""

    KINDS = {
        'kill': signal.SIGKILL,        # no chance to clean up
        'terminate': signal.SIGTERM,   # QEMU's orderly exit
        'crash': signal.SIGABRT,       # what an assert() failure does
        'hang': signal.SIGSTOP,        # alive, but answers nothing
        'resume': signal.SIGCONT,
    }

    def __init__(self, process: QEMUProcess, *watchdogs: Optional[RemoteWatchdog]):
        self.process = process
        self.watchdogs = [w for w in watchdogs if w]
        self.history = []

    def inject(self, kind: str) -> Fault:
        if kind not in self.KINDS:
            raise HarnessError(f"unknown fault {kind!r}; known: {', '.join(self.KINDS)}")
        if not self.process.is_running():
            raise HarnessError(f"cannot inject {kind}: {self.process.name} is not running "
                               f"(exit status {self.process.exitcode})")
        sig = self.KINDS[kind]
        injected_at = time.monotonic()
        # Before the signal: a watchdog may see the effect at once.
        for watchdog in self.watchdogs:
            watchdog.fault_injected(injected_at)
        self.process.send_signal(sig)
        fault = Fault(kind, sig, injected_at)
        self.history.append(fault)
        return fault

    def kill(self) -> Fault:
        return self.inject('kill')

    def terminate(self) -> Fault:
        return self.inject('terminate')

    def crash(self) -> Fault:
        return self.inject('crash')

    def hang(self) -> Fault:
        return self.inject('hang')

    def resume(self) -> Fault:
        return self.inject('resume')
