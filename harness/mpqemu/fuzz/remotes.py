"""The remote processes under fuzz: starting, setting up, restoring, retiring.

Remotes start without QMP (a fork and exec, no monitor to wait for), and
:class:`RemotePool` keeps a spare starting in the background (~40 ms), so
that a case that ends its remote costs little more than the next one's
setup.  :class:`FuzzRemote` holds a fake proxy on the remote's socket:
setup does what a proxy does at start (memory table, irqfd, BARs), and
restore redoes what a surviving case touched, so that cases do not depend
on each other.
"""

import os
import socket
from typing import Optional, Sequence

from ...base.waiting import wait_until
from ...devices import pci
from ...qemu.binary import Capabilities
from ...qemu.process import QEMUProcess
from .. import protocol as p
from ...qemu.guestmem import GuestMemory
from ..remote import Remote
from .cases import IO_BASE, MMIO_BASE, RAM_BYTES, RAM_GPA, Layout

STARTUP_TIMEOUT_S = 10.0        # a fresh remote's first answer (2 busy cores)
FOLLOWUP_TIMEOUT_S = 0.5        # the follow-up after a case that should be answered
LOG_TAIL_LINES = 8
# The remote serves its socket before its machine reset (qemu_system_reset
# at machine creation done); whatever it was told before that reset, such
# as BAR addresses, is undone.  Its trace of the LSI's reset says it is past
# that point.
RESET_TRACE_EVENT = 'lsi_reset'
STARTED_POLL_S = 0.001


def log_tail(process: QEMUProcess) -> str:
    """The last lines of a remote's log, without our reset trace lines."""
    lines = [line for line in process.log_tail(LOG_TAIL_LINES * 50).splitlines()
             if not line.startswith(RESET_TRACE_EVENT)]
    return '\n'.join(lines[-LOG_TAIL_LINES:])


class FuzzRemote:
    """One remote process under fuzz: its process, its socket, and a fake
    proxy on that socket for setup and restore."""

    def __init__(self, process: QEMUProcess, sock: socket.socket):
        self.process = process
        self.proxy = p.FakeProxy(sock, timeout_s=FOLLOWUP_TIMEOUT_S)
        self.link = self.proxy.link
        self.started = False
        self.ready = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_started(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Wait until the remote is past its machine reset (see
        RESET_TRACE_EVENT): messages before it would be undone."""
        if self.started:
            return
        def reset_traced():
            if self.process.count_log_lines(RESET_TRACE_EVENT):
                return True
            if not self.process.is_running():
                raise p.RemoteGone(f"the remote exited while starting (status "
                                   f"{self.process.exitcode}): {self.process.log_tail()}")
            return False
        wait_until(reset_traced, timeout_s, 'the remote to reach its machine reset',
                   STARTED_POLL_S,
                   error=lambda s: p.RemoteTimeout(
                       f"the remote did not reach its machine reset within {s} s; "
                       f"see {self.process.log_path}"))
        self.started = True

    def setup(self, memory: GuestMemory) -> None:
        """What a proxy does at start: memory table, irqfd, BARs."""
        self.wait_started()
        self.restore(memory, ('sysmem', 'irqfd', 'config'))
        self.ready = True

    def restore(self, memory: GuestMemory, touches: Sequence[str]) -> None:
        self.proxy.device_reset()
        memory.regions[0].fill(RAM_GPA, RAM_BYTES)
        if 'sysmem' in touches:
            self.proxy.sync_sysmem(memory.sysmem_table(), barrier=False)
        if 'irqfd' in touches:
            self.proxy.set_irqfd(barrier=False)
        if 'config' in touches:
            function = pci.PciFunction(self.proxy_access(memory))
            function.setup(IO_BASE, MMIO_BASE)

    def proxy_access(self, memory: GuestMemory) -> p.FakeProxyAccess:
        return p.FakeProxyAccess(self.proxy, memory)

    def layout(self, memory: GuestMemory) -> Layout:
        bars = pci.PciFunction(self.proxy_access(memory)).setup(IO_BASE, MMIO_BASE)
        return Layout(RAM_GPA, RAM_BYTES, tuple((bar.index, bar.io, bar.address, bar.size)
                                                for bar in bars))

    def close(self) -> None:
        try:
            self.proxy.close()
        finally:
            if self.process.is_running():
                self.process.kill()
            self.process.shutdown()


class RemotePool:
    """Starts remotes without QMP (a fork and exec) and keeps one spare
    starting in the background, so that replacing a dead remote costs
    little more than its setup."""

    def __init__(self, caps: Capabilities, logdir: str):
        self.caps = caps
        self.logdir = logdir
        self.launched = 0
        self._spare: Optional[FuzzRemote] = None
        os.makedirs(logdir, exist_ok=True)

    def _launch(self) -> FuzzRemote:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.launched += 1
        try:
            remote = Remote('lsi1', args=['-trace', RESET_TRACE_EVENT],
                            name=f'remote-{self.launched}')
            process = remote.start(self.caps, self.logdir, theirs, qmp=False)
        except BaseException:
            ours.close()
            raise
        return FuzzRemote(process, ours)

    def take(self) -> FuzzRemote:
        remote = self._spare or self._launch()
        self._spare = None
        try:
            self._spare = self._launch()
        except BaseException:
            self.retire(remote)
            raise
        return remote

    def retire(self, remote: FuzzRemote) -> str:
        """Stop ``remote``; returns its log tail and removes its files."""
        remote.close()
        tail = log_tail(remote.process)
        for path in (remote.process.log_path,
                     os.path.join(self.logdir, f'{remote.process.name}.cmdline')):
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        return tail

    def close(self) -> None:
        if self._spare:
            self.retire(self._spare)
            self._spare = None
