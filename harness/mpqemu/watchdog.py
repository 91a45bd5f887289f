"""Notice a remote device process that died or hangs, and say how fast.

Upstream QEMU has no heartbeat between proxy and remote (the v8 series
pinged every second and exited with "Lost contact with device"; that was
dropped), and the proxy waits for a remote's reply for ever.  This
watchdog gives the tests what QEMU does not:

- *dead*: the kernel tells us at once through a pidfd (poll() wakes when
  the process exits), so there is no polling delay;
- *hung*: either the process is stopped (``T`` in /proc/PID/stat, seen at
  the next tick), or its main loop, which also serves the proxy's socket
  (hw/remote/mpqemu-link.c runs in a main-loop coroutine), misses a QMP
  ping deadline on a monitor of its own;
- *resumed*: a hung remote answers again.

Every event carries its latency from the last fault the harness injected
(see faults.py).  The watchdog runs in one thread that ``stop()`` ends
within a bounded time; it never blocks teardown.
"""

import dataclasses
import os
import select
import socket
import threading
import time
from typing import List, Optional

from ..base import deadlines, procfs
from ..base.errors import HarnessError, QMPError, Timeout
from ..qemu.process import QEMUProcess
from ..qemu.qmp import QMPChannel

INTERVAL_S = 0.05          # between liveness checks
PING_DEADLINE_S = 0.15     # a QMP ping slower than this means "hung"
STOP_JOIN_S = 2.0
READY_TIMEOUT_S = 15.0     # QMP connect (10 s) plus margin
WATCHDOG_CHARDEV = 'watchdog'


@dataclasses.dataclass(frozen=True)
class WatchdogEvent:
    kind: str                  # 'dead', 'hung' or 'resumed'
    detected_at: float         # time.monotonic()
    detail: str
    latency_s: Optional[float]  # from the last injected fault, if any


class RemoteWatchdog:
    """Watch one remote.  Create it before the remote launches (it needs a
    monitor of its own), ``start()`` it after."""

    def __init__(self, process: QEMUProcess, interval_s: float = INTERVAL_S,
                 ping_deadline_s: float = PING_DEADLINE_S):
        if interval_s <= 0 or ping_deadline_s <= 0:
            raise HarnessError("watchdog interval and ping deadline must be positive")
        self.process = process
        self.interval_s = interval_s
        self.ping_deadline_s = ping_deadline_s
        self._monitor_sock: Optional[socket.socket] = process.add_monitor(WATCHDOG_CHARDEV)
        self._events: List[WatchdogEvent] = []
        self._cond = threading.Condition()
        self._fault_at: Optional[float] = None
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self.pings = 0
        # Seeing SIGSTOP in /proc is faster than a missed ping; turn it off
        # to test the ping alone.
        self.use_proc_state = True

    # ------------------------------------------------------------ control

    def start(self) -> None:
        if not self.process.pid:
            raise HarnessError(f"{self.process.name} must be launched before its watchdog starts")
        self._thread = threading.Thread(target=self._run, name=f'watchdog-{self.process.name}',
                                        daemon=True)
        self._thread.start()
        # Return once the monitor is negotiated: a fault injected right
        # after start() must find the watchdog watching, not still waiting
        # for the capabilities reply of a process that was just stopped.
        if not self._ready.wait(READY_TIMEOUT_S):
            raise HarnessError(f"watchdog of {self.process.name} did not connect to its "
                               f"monitor within {READY_TIMEOUT_S} s")

    def stop(self) -> None:
        """End the thread (bounded: a ping in flight ends at its deadline)."""
        self._stopping = True
        if self._wake_w is not None:
            os.write(self._wake_w, b'x')
        if self._thread:
            self._thread.join(STOP_JOIN_S + self.ping_deadline_s)
            if self._thread.is_alive():
                raise HarnessError(f"watchdog of {self.process.name} did not stop")
            self._thread = None
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                os.close(fd)
        self._wake_r = self._wake_w = None
        if self._monitor_sock:
            self._monitor_sock.close()
            self._monitor_sock = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def fault_injected(self, at: float) -> None:
        """Latencies of later events count from ``at`` (time.monotonic())."""
        with self._cond:
            self._fault_at = at

    # ------------------------------------------------------------- events

    def events(self) -> List[WatchdogEvent]:
        with self._cond:
            return list(self._events)

    def wait_for(self, kind: str, timeout_s: float) -> WatchdogEvent:
        """The first ``kind`` event after the last injected fault."""
        def seen() -> Optional[WatchdogEvent]:
            since = self._fault_at or 0.0
            return next((event for event in self._events
                         if event.kind == kind and event.detected_at >= since), None)
        timeout_s = deadlines.cap(timeout_s, f'watchdog wait for {kind!r}')
        with self._cond:
            event = self._cond.wait_for(seen, timeout_s)
            if event is None:
                raise Timeout(f"watchdog saw no {kind!r} event for {self.process.name} "
                              f"within {timeout_s} s (events: {self._events})")
            return event

    def _emit(self, kind: str, detail: str) -> None:
        now = time.monotonic()
        with self._cond:
            latency = now - self._fault_at if self._fault_at is not None else None
            self._events.append(WatchdogEvent(kind, now, detail, latency))
            self._cond.notify_all()

    # --------------------------------------------------------------- loop

    def _proc_state(self) -> Optional[str]:
        return procfs.state(self.process.pid)

    def _ping(self, qmp: QMPChannel) -> Optional[str]:
        """None if the remote's main loop answered in time, else why not."""
        self.pings += 1
        try:
            qmp.cmd('query-status', timeout_s=self.ping_deadline_s)
            return None
        except QMPError as err:
            return str(err)

    def _run(self) -> None:
        try:
            pidfd = os.pidfd_open(self.process.pid)
        except OSError as err:               # already gone and reaped
            self._emit('dead', f'{self.process.name} exited before its watchdog ran ({err})')
            self._ready.set()
            return
        qmp = None
        try:
            qmp = QMPChannel(self._monitor_sock, f'{self.process.name}-watchdog')
            self._monitor_sock = None        # the channel owns and closes it
            qmp.connect()
            self._ready.set()
            self._loop(pidfd, qmp)
        except QMPError as err:
            self._ready.set()
            if not self._wait_dead(pidfd, 0):
                self._emit('hung', f'watchdog monitor unusable: {err}')
                self._loop(pidfd, None)
        finally:
            self._ready.set()
            os.close(pidfd)
            if qmp:
                qmp.close()

    def _wait_dead(self, pidfd: int, timeout_s: float) -> bool:
        """Wait on the pidfd and the stop pipe; True (and 'dead' emitted)
        if the process exited."""
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        for fd, _ in poller.poll(timeout_s * 1000):
            if fd == pidfd:
                self._emit('dead', f'{self.process.name} exited')
                return True
        return False

    def _loop(self, pidfd: int, qmp: Optional[QMPChannel]) -> None:
        hung = False
        while not self._stopping:
            if self._wait_dead(pidfd, self.interval_s):
                return
            if self._stopping:
                return
            state = self._proc_state()
            if state is None:
                continue                     # exiting: the pidfd will say so
            if self.use_proc_state and state in ('T', 't'):
                problem = f'process stopped (state {state})'
            elif qmp is not None:
                problem = self._ping(qmp)
                if problem and self._wait_dead(pidfd, 0):
                    return
                # Stopped while the ping was in flight: say why it is silent.
                state = self._proc_state() if problem else None
                if self.use_proc_state and state in ('T', 't'):
                    problem = f'process stopped (state {state})'
            else:
                problem = None
            if problem and not hung:
                hung = True
                self._emit('hung', problem)
            elif not problem and hung:
                hung = False
                self._emit('resumed', f'{self.process.name} answers again')
