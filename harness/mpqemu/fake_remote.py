"""A remote device process driven by the fake proxy, in one call.

    with fake_remote.launch(caps, log_dir=out, drive=disk) as remote:
        lsi = Lsi53c895a(remote.access)
        lsi.setup()

gives a real ``-machine x-remote`` QEMU serving an LSI 53C895A, its socket
spoken to by :class:`~harness.mpqemu.protocol.FakeProxy`, guest RAM synced
from a harness-owned memfd and INTx wired to eventfds the test can wait on.
No proxy QEMU is involved, so this works with any accelerator and on QEMU
versions whose proxy cannot run without KVM (10.0, see
docs/multiprocess-qemu.md, "Proxy crash without KVM").
"""

import contextlib
import socket
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from ..base.units import MIB
from ..qemu.binary import Capabilities
from ..qemu.guestmem import GuestMemory
from .confinement import Confinement
from .protocol import (DEFAULT_REPLY_TIMEOUT_S, FakeProxy, FakeProxyAccess, IntxEventFds,
                       dialect_of)
from .remote import Remote

DEFAULT_RAM_SIZE = 32 * MIB
DEFAULT_RAM_GPA = 0
# How the remote names each synced RAM region in its memory tree
# (hw/remote/memory.c, remote_sysmem_reconfig: "remote-mem-N").
MAPPED_RAM_PREFIX = 'remote-mem-'


@dataclass
class FakeProxiedRemote:
    remote: Remote
    proxy: FakeProxy
    memory: GuestMemory
    access: FakeProxyAccess

    mapped_ram_marker = MAPPED_RAM_PREFIX

    def __enter__(self) -> 'FakeProxiedRemote':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def irq(self) -> Optional[IntxEventFds]:
        return self.proxy.irq

    def device_reset(self) -> None:
        self.proxy.device_reset()

    def map_new_regions(self) -> None:
        """Send the whole memory table again (SYNC_SYSMEM replaces it),
        as the proxy does when guest memory is plugged."""
        self.proxy.sync_sysmem(self.memory.sysmem_table())

    @contextlib.contextmanager
    def reply_timeout(self, timeout_s: float) -> Iterator[None]:
        """Requests in the block wait ``timeout_s`` for their reply."""
        saved, self.proxy.timeout_s = self.proxy.timeout_s, timeout_s
        try:
            yield
        finally:
            self.proxy.timeout_s = saved

    def close(self) -> None:
        """Close our socket end (the remote then exits by itself), make
        sure the process is gone, and release guest RAM."""
        try:
            self.proxy.close()
            self.remote.stop()
        finally:
            self.memory.close()


def launch(caps: Capabilities, *, log_dir: str, drive: Optional[str] = None,
           fmt: str = 'raw', devid: str = 'lsi1', ram_size: int = DEFAULT_RAM_SIZE,
           ram_gpa: int = DEFAULT_RAM_GPA, irq: bool = True,
           extra_args: Sequence[str] = (),
           timeout_s: float = DEFAULT_REPLY_TIMEOUT_S,
           confinement: Optional[Confinement] = None) -> FakeProxiedRemote:
    """Start a remote LSI (with ``drive`` as its scsi-hd, confined as
    ``confinement`` says), sync ``ram_size`` bytes of guest RAM at
    ``ram_gpa`` and, with ``irq``, send SET_IRQFD."""
    remote = Remote(devid, drive, fmt, extra_args, confinement=confinement)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        remote.start(caps, log_dir, theirs)
    except BaseException:
        ours.close()
        raise
    memory = GuestMemory()
    proxy = FakeProxy(ours, timeout_s=timeout_s, dialect=dialect_of(caps))
    launched = FakeProxiedRemote(remote, proxy, memory, FakeProxyAccess(proxy, memory))
    try:
        memory.add_region(ram_gpa, ram_size, 'guest-ram')
        proxy.sync_sysmem(memory.sysmem_table())
        if irq:
            proxy.set_irqfd()
    except BaseException:
        launched.close()
        raise
    return launched
