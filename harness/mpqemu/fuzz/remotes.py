"""The proxy transport's remotes under fuzz: starting, setting up,
restoring, asking the follow-up, retiring.

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
import time
from typing import List, Optional, Sequence

from ...base.waiting import wait_until
from ...devices import pci
from ...fuzz.cases import IO_BASE, MMIO_BASE, RAM_BYTES, RAM_GPA, Layout
from ...fuzz.runner import FOLLOWUP_TIMEOUT_S, log_tail
from ...qemu.binary import Capabilities
from ...qemu.process import QEMUProcess
from .. import protocol as p
from ...qemu.guestmem import GuestMemory
from ..remote import Remote

STARTUP_TIMEOUT_S = 10.0        # a fresh remote's first answer (2 busy cores)
# The remote serves its socket before its machine reset (qemu_system_reset
# at machine creation done); whatever it was told before that reset, such
# as BAR addresses, is undone.  Its trace of the LSI's reset says it is past
# that point.
RESET_TRACE_EVENT = 'lsi_reset'
STARTED_POLL_S = 0.001
# The follow-up: two config reads with known answers.
MARKER = ((pci.VENDOR_ID, 2, 0x1000), (pci.DEVICE_ID, 2, 0x0012))


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

    @property
    def requests(self) -> int:
        return self.proxy.requests

    def send_raw(self, data: bytes, fds: Sequence[int], timeout_s: float) -> None:
        self.link.send_raw(data, fds, timeout_s)

    def recv_any(self, timeout_s: float) -> None:
        self.link.recv(timeout_s)

    def hangup(self) -> None:
        self.link.sock.shutdown(socket.SHUT_WR)

    def send_followup(self, timeout_s: float) -> int:
        for offset, size, _ in MARKER:
            self.link.send(p.pci_cfg_read(offset, size), timeout_s)
        return len(MARKER)

    def await_followup(self, timeout_s: float) -> int:
        """RET replies until the last ones are the marker's values (the
        remote only ever sends RET: anything else is a ProtocolError)."""
        deadline = time.monotonic() + timeout_s
        values: List[Optional[int]] = []
        want = [v for _, _, v in MARKER]
        while values[-len(want):] != want:
            reply = self.link.recv(max(0.0, deadline - time.monotonic()))
            values.append(p.decode_ret(reply))
        return len(values)

    def wait_started(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Wait until the remote is past its machine reset (see
        RESET_TRACE_EVENT): messages before it would be undone."""
        if self.started:
            return
        def reset_traced():
            if self.process.count_trace_events(RESET_TRACE_EVENT):
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
        # SYNC_SYSMEM and SET_IRQFD have no reply: without this round trip
        # a remote that a case left ready to loop (a /dev/zero resamplefd)
        # could start looping before reading them, and the next case would
        # take the blame for its hang.
        self.proxy.barrier()

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
