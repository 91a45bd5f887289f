"""A remote LSI served over vfio-user and driven by the harness, in one call.

    with server.launch(caps, log_dir=out, drive=disk) as served:
        lsi = Lsi53c895a(served.access)
        lsi.setup()

gives a real ``-machine x-remote,vfio-user=on`` QEMU whose
``x-vfio-user-server`` serves an LSI 53C895A, connected to by
:class:`~harness.vfio_user.client.VfioUserClient`: versions negotiated,
the BAR regions' sizes read, guest RAM (a harness-owned memfd)
DMA-mapped, and INTx wired to an eventfd the test can wait on.  No
vfio-user-pci QEMU and no guest are involved, so this works under any
accelerator.  It is harness/mpqemu/fake_remote.py's counterpart, and
offers the same few operations for the scenarios that run over both
(tests/functional/test_protocol.py).

The remote is started by :class:`~harness.mpqemu.remote.Remote`, which
returns once the server listens (it accepts its one client later, from
the main loop: hw/remote/vfio-user-obj.c, vfu_object_attach_ctx).  The
socket lives in a short directory of its own (a unix socket path is at
most 107 bytes).
"""

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Sequence

from ..base.units import MIB
from ..mpqemu.confinement import Confinement
from ..mpqemu.remote import VFIO_USER, Remote
from ..mpqemu.topology import short_socket_dir
from ..qemu.binary import Capabilities
from ..qemu.guestmem import GuestMemory
from . import protocol as p
from .access import VfioUserAccess
from .client import DEFAULT_REPLY_TIMEOUT_S, IntxLine, VfioUserClient

DEFAULT_RAM_SIZE = 32 * MIB
DEFAULT_RAM_GPA = 0
NUM_BARS = 6
# How the server names each DMA mapping in its memory tree
# (hw/remote/vfio-user-obj.c, dma_register: "mem-DEVID-VADDR").
MAPPED_RAM_PREFIX = 'mem-'


@dataclass
class ServedRemote:
    """A remote and the harness's vfio-user connection to it."""
    remote: Remote
    memory: GuestMemory
    socket_dir: str
    client: Optional[VfioUserClient] = None
    access: Optional[VfioUserAccess] = None
    version: Optional[p.ServerVersion] = None
    device: Optional[p.DeviceInfo] = None
    regions: Dict[int, p.RegionInfo] = field(default_factory=dict)

    mapped_ram_marker = MAPPED_RAM_PREFIX

    def __enter__(self) -> 'ServedRemote':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def irq(self) -> Optional[IntxLine]:
        return self.client.irq if self.client else None

    def device_reset(self) -> None:
        self.access.device_reset()

    def map_new_regions(self) -> None:
        """DMA_MAP every RAM region added since the last call (a client
        does it when guest memory is plugged)."""
        for region in self.memory.regions:
            if region.gpa not in self.client.mapped:
                self.client.dma_map(region)

    @contextlib.contextmanager
    def reply_timeout(self, timeout_s: float) -> Iterator[None]:
        with self.client.reply_timeout(timeout_s):
            yield

    def close(self) -> None:
        """Hang up (the server's remote then exits by itself, as its
        auto-shutdown says), make sure the process is gone, release RAM."""
        try:
            if self.client:
                self.client.close()
            self.remote.stop()
        finally:
            self.memory.close()
            shutil.rmtree(self.socket_dir, ignore_errors=True)


def launch(caps: Capabilities, *, log_dir: str, drive: Optional[str] = None,
           fmt: str = 'raw', devid: str = 'lsi1', ram_size: int = DEFAULT_RAM_SIZE,
           ram_gpa: int = DEFAULT_RAM_GPA, irq: bool = True,
           extra_args: Sequence[str] = (),
           timeout_s: float = DEFAULT_REPLY_TIMEOUT_S,
           confinement: Optional[Confinement] = None) -> ServedRemote:
    """Start a remote LSI (with ``drive`` as its scsi-hd, confined as
    ``confinement`` says) behind an
    x-vfio-user-server, connect and negotiate, DMA-map ``ram_size`` bytes
    of RAM at ``ram_gpa`` and, with ``irq``, give it an INTx eventfd."""
    socket_dir = short_socket_dir()
    path = os.path.join(socket_dir, f'{devid}.sock')
    try:
        remote = Remote(devid, drive, fmt, extra_args, transport=VFIO_USER, socket_path=path,
                        confinement=confinement)
        remote.start(caps, log_dir)
    except BaseException:
        shutil.rmtree(socket_dir, ignore_errors=True)
        raise
    served = ServedRemote(remote, GuestMemory(), socket_dir)
    try:
        served.client = client = VfioUserClient.connect(path, timeout_s)
        served.version = client.negotiate()
        served.device = client.device_info()
        served.regions = {i: client.region_info(i) for i in range(NUM_BARS)}
        sizes = {i: r.size for i, r in served.regions.items() if r.size}
        served.access = VfioUserAccess(client, served.memory, sizes)
        served.memory.add_region(ram_gpa, ram_size, 'guest-ram')
        served.map_new_regions()
        if irq:
            client.set_intx_eventfd()
    except BaseException:
        served.close()
        raise
    return served
