"""What guest memory a remote process has mapped.

Over the proxy the remote maps the guest's RAM from the fds that
SYNC_SYSMEM carries and names the regions ``remote-mem-N``
(hw/remote/memory.c); over vfio-user it maps each DMA region the client
announces into the device's DMA address space as ``mem-DEVID-IOVA``
(hw/remote/vfio-user-obj.c dma_register).  Its flat memory tree (HMP
``info mtree -f``) is the remote's own account of that map.
"""

import dataclasses
import re
from typing import Callable, List

from ..base.errors import Timeout
from ..base.waiting import wait_until
from ..qemu.process import QEMUProcess

_REGION_RE = re.compile(r'^\s*([0-9a-f]+)-([0-9a-f]+) \(prio \d+, ram\): '
                        r'(remote-mem-\d+|mem-[\w-]+-[0-9a-f]+)\b',
                        re.MULTILINE)
POLL_INTERVAL_S = 0.02
VIEW_TIMEOUT_S = 5.0


@dataclasses.dataclass(frozen=True)
class RamRegion:
    start: int
    end: int          # inclusive, as QEMU prints it
    name: str

    @property
    def size(self) -> int:
        return self.end - self.start + 1


def remote_ram_regions(remote: QEMUProcess) -> List[RamRegion]:
    """The guest RAM regions in the remote's flat view, sorted by
    address (each appears once even if several address spaces show it)."""
    text = remote.hmp('info mtree -f')
    regions = {RamRegion(int(s, 16), int(e, 16), n) for s, e, n in _REGION_RE.findall(text)}
    return sorted(regions, key=lambda r: r.start)


def wait_remote_view(remote: QEMUProcess, predicate: Callable[[List[RamRegion]], bool],
                     timeout_s: float = VIEW_TIMEOUT_S,
                     what: str = 'the expected RAM') -> List[RamRegion]:
    """Poll the remote's flat view until ``predicate(regions)`` holds."""
    regions: List[RamRegion] = []

    def shown() -> bool:
        regions[:] = remote_ram_regions(remote)
        return predicate(regions)
    wait_until(shown, timeout_s, f'{remote.name} to show {what}', POLL_INTERVAL_S,
               error=lambda s: Timeout(f"{remote.name} did not show {what} within {s} s; "
                                       f"its RAM regions: "
                                       f"{[(hex(r.start), hex(r.size)) for r in regions]}"))
    return regions


def wait_for_ram(remote: QEMUProcess, total_bytes: int, timeout_s: float) -> List[RamRegion]:
    """Poll until the remote maps at least ``total_bytes`` of guest RAM."""
    return wait_remote_view(remote, lambda regions: sum(r.size for r in regions) >= total_bytes,
                            timeout_s, what=f'at least {total_bytes} bytes of guest RAM')
