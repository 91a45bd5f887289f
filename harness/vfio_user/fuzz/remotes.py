"""The vfio-user transport's remotes under fuzz.

Each remote is a ``-machine x-remote,vfio-user=on`` QEMU serving an LSI
with ``x-vfio-user-server`` on a socket of its own; the pool (the proxy
transport's, with a spare always started) starts it without QMP and
returns once it listens.  :class:`VfuFuzzRemote` connects a
:class:`~harness.vfio_user.client.VfioUserClient`: set-up is what a
vfio-user client does at start (VERSION, region info, DMA_MAP of the
RAM, the INTx eventfd, BARs), restore redoes what a surviving case
touched, and the follow-up is two config-space REGION_READs with known
answers under ids no case uses.  A case marked ``fresh`` runs on a
connection before VERSION.
"""

import os
import shutil
import socket
import time
from typing import Dict, Optional, Sequence

from ...devices import pci
from ...fuzz.cases import IO_BASE, MMIO_BASE, RAM_BYTES, RAM_GPA, Layout
from ...fuzz.runner import FOLLOWUP_TIMEOUT_S
from ...base.fdstream import ProtocolError, close_fds
from ...mpqemu.fuzz.remotes import RESET_TRACE_EVENT, STARTUP_TIMEOUT_S, RemotePool
from ...mpqemu.remote import VFIO_USER, Remote
from ...mpqemu.topology import short_socket_dir
from ...qemu.guestmem import GuestMemory
from ...qemu.process import QEMUProcess
from .. import protocol as p
from ..access import VfioUserAccess
from ..client import ServerRejected, VfioUserClient
from .families import FOLLOWUP_ID_BASE

NUM_BARS = 6
# The follow-up: config reads with known answers (LSI 1000:0012).
MARKER = ((pci.VENDOR_ID, 2, 0x1000), (pci.DEVICE_ID, 2, 0x0012))
VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1


class VfuFuzzRemote:
    """One served remote under fuzz and the harness's client of it."""

    def __init__(self, remote: Remote, process: QEMUProcess):
        self.remote = remote
        self.process = process
        self.socket_path = remote.socket_path
        self.client: Optional[VfioUserClient] = None
        self.access: Optional[VfioUserAccess] = None
        self.num_irqs = p.INTX_IRQ_INDEX + 1
        self.ready = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def requests(self) -> int:
        return self.client.requests if self.client else 0

    def wait_started(self) -> None:
        """Listening and connected (the pool starts remotes without
        waiting: the spare comes up while the current one is fuzzed)."""
        if self.client is None:
            self.remote.wait_listening(self.process, STARTUP_TIMEOUT_S)
            self.client = VfioUserClient.connect(self.socket_path, FOLLOWUP_TIMEOUT_S)

    def setup(self, memory: GuestMemory) -> None:
        self.wait_started()
        try:
            self.client.negotiate()
        except ServerRejected:
            pass            # a fresh case negotiated already: a second VERSION is refused
        self.num_irqs = self.client.device_info().num_irqs
        sizes: Dict[int, int] = {}
        for index in range(NUM_BARS):
            size = self.client.region_info(index).size
            if size:
                sizes[index] = size
        self.access = VfioUserAccess(self.client, memory, sizes)
        self.restore(memory, ('dma', 'irq', 'config'))
        self.ready = True

    def restore(self, memory: GuestMemory, touches: Sequence[str]) -> None:
        self.access.device_reset()
        memory.regions[0].fill(RAM_GPA, RAM_BYTES)
        if 'dma' in touches:
            self.client.request(p.dma_unmap(0, 0, VFIO_DMA_UNMAP_FLAG_ALL))
            self.client.dma_map(memory.regions[0])
        if 'irq' in touches:
            # A case may have given eventfds to other indices (MSI, ERR,
            # REQ): take them back (count 0, DATA_NONE: lib/irq.c,
            # irqs_disable), or the server rightly keeps them open.
            for index in range(p.MSI_IRQ_INDEX, self.num_irqs):
                try:
                    self.client.set_irqs(index, p.IRQ_SET_DATA_NONE | p.IRQ_SET_ACTION_TRIGGER,
                                         0, 0)
                except ServerRejected:
                    pass        # an index with no vectors (MSI-X on the LSI)
            self.client.set_intx_eventfd()
        if 'config' in touches:
            pci.PciFunction(self.access).setup(IO_BASE, MMIO_BASE)

    def layout(self, memory: GuestMemory) -> Layout:
        bars = pci.PciFunction(self.access).setup(IO_BASE, MMIO_BASE)
        return Layout(RAM_GPA, RAM_BYTES, tuple((bar.index, bar.io, bar.address, bar.size)
                                                for bar in bars))

    def send_raw(self, data: bytes, fds: Sequence[int], timeout_s: float) -> None:
        self.client.link.send_raw(data, fds, timeout_s)

    def recv_any(self, timeout_s: float) -> None:
        close_fds(self.client.link.recv(timeout_s).fds)

    def hangup(self) -> None:
        self.client.link.sock.shutdown(socket.SHUT_WR)

    def send_followup(self, timeout_s: float) -> int:
        for i, (offset, size, _) in enumerate(MARKER):
            message = p.region_read(p.CONFIG_REGION_INDEX, offset, size)
            self.client.link.send(message.with_id(FOLLOWUP_ID_BASE + i), timeout_s)
        return len(MARKER)

    def await_followup(self, timeout_s: float) -> int:
        """Messages until the follow-up's replies came with the LSI's ids;
        replies to the case's messages (errors included) are skipped."""
        deadline = time.monotonic() + timeout_s
        want = {FOLLOWUP_ID_BASE + i: value for i, (_, _, value) in enumerate(MARKER)}
        got = 0
        while want:
            reply = self.client.link.recv(max(0.0, deadline - time.monotonic()))
            got += 1
            close_fds(reply.fds)
            if reply.fds:
                raise ProtocolError(f"the server sent {len(reply.fds)} fds with "
                                    f"{reply.name()} (id {reply.msg_id})")
            if not reply.is_reply:
                raise ProtocolError(f"the server sent a {reply.name()} command "
                                    f"(id {reply.msg_id})")
            if reply.msg_id not in want:
                continue
            if reply.is_error or reply.cmd != p.Cmd.REGION_READ:
                raise ProtocolError(f"the follow-up (id {reply.msg_id}) was answered by "
                                    f"{reply.name()} error {reply.error_no}")
            _, _, count, data = p.decode_region_access(reply.data)
            value = int.from_bytes(data, 'little')
            if value != want[reply.msg_id]:
                raise ProtocolError(f"the follow-up config read (id {reply.msg_id}) gave "
                                    f"{value:#x}, not {want[reply.msg_id]:#x}")
            del want[reply.msg_id]
        return got

    def close(self) -> None:
        try:
            if self.client:
                self.client.close()
        finally:
            if self.process.is_running():
                self.process.kill()
            self.process.shutdown()
            shutil.rmtree(os.path.dirname(self.socket_path), ignore_errors=True)


class VfuRemotePool(RemotePool):
    """The proxy transport's pool, starting served remotes instead."""

    def _launch(self) -> VfuFuzzRemote:
        socket_dir = short_socket_dir()
        path = os.path.join(socket_dir, 'lsi1.sock')
        self.launched += 1
        try:
            remote = Remote('lsi1', args=['-trace', RESET_TRACE_EVENT],
                            name=f'remote-{self.launched}', transport=VFIO_USER,
                            socket_path=path)
            process = remote.start(self.caps, self.logdir, qmp=False)
        except BaseException:
            shutil.rmtree(socket_dir, ignore_errors=True)
            raise
        return VfuFuzzRemote(remote, process)
