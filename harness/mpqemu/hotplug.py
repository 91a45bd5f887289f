"""Memory hot-plug on the proxy, over its QMP: DIMMs in, DIMMs out.

A DIMM is a memory backend (``object-add``) plus a ``pc-dimm`` device
(``device_add``); QEMU picks its guest physical address in the machine's
device-memory window (above 4 GiB on pc and q35) and says where in
``query-memory-devices``.  Every change of the memory map makes the proxy
resend its whole RAM table to each remote (SYNC_SYSMEM, from the memory
listener's commit in hw/remote/proxy-memory-listener.c): one entry, and one
fd, per fd-backed RAM section; sections without an fd are left out.

Unplug is a request: on pc the guest's ACPI has to eject the DIMM before
QEMU deletes it (DEVICE_DELETED), so every wait here has a deadline.
"""

import dataclasses
import os
import time
from typing import Dict, List, Optional

from ..base.errors import HarnessError, QMPError
from ..qemu.process import QEMUProcess
from . import memview

UNPLUG_TIMEOUT_S = 20.0
BACKENDS = ('file', 'memfd', 'ram')


class HotplugError(HarnessError):
    pass


@dataclasses.dataclass
class Dimm:
    id: str
    memdev: str
    backend: str                 # 'file', 'memfd' or 'ram'
    size: int
    share: bool
    path: Optional[str] = None   # the backing file of a 'file' backend
    addr: Optional[int] = None   # guest physical address QEMU gave it
    slot: Optional[int] = None
    plug_s: Optional[float] = None

    @property
    def end(self) -> int:
        return self.addr + self.size


def backend_args(memdev: str, backend: str, size: int, share: bool,
                 path: Optional[str]) -> Dict:
    if backend not in BACKENDS:
        raise HotplugError(f"unknown memory backend {backend!r}; use one of {BACKENDS}")
    args = {'qom-type': f'memory-backend-{backend}', 'id': memdev, 'size': size,
            'share': share}
    if backend == 'file':
        args['mem-path'] = path
    return args


class MemoryHotplug:
    """DIMMs hot-plugged into one proxy; file backends live in ``workdir``
    (readable by the harness: what the guest and the remote DMA store there
    is in the file)."""

    def __init__(self, proxy: QEMUProcess, workdir: str):
        self.proxy = proxy
        self.workdir = workdir
        self.dimms: Dict[str, Dimm] = {}

    def plug(self, dimm_id: str, size: int, backend: str = 'file',
             share: bool = True, node: Optional[int] = None) -> Dimm:
        """Add a backend and a pc-dimm on it (in NUMA ``node`` if given);
        returns the DIMM with the address QEMU gave it."""
        memdev = f'{dimm_id}-mem'
        path = None
        if backend == 'file':
            path = os.path.join(self.workdir, f'{dimm_id}.ram')
            with open(path, 'wb') as f:
                f.truncate(size)
        dimm = Dimm(dimm_id, memdev, backend, size, share, path)
        started = time.monotonic()
        self.proxy.qmp('object-add', **backend_args(memdev, backend, size, share, path))
        try:
            extra = {} if node is None else {'node': node}
            self.proxy.qmp('device_add', driver='pc-dimm', id=dimm_id, memdev=memdev, **extra)
        except QMPError:
            self.proxy.qmp('object-del', id=memdev)
            raise
        dimm.plug_s = time.monotonic() - started
        info = self.query().get(dimm_id)
        if info is None:
            raise HotplugError(f"{dimm_id} was added but query-memory-devices does not list it")
        dimm.addr, dimm.slot = info['addr'], info['slot']
        self.dimms[dimm_id] = dimm
        return dimm

    def query(self) -> Dict[str, Dict]:
        """{DIMM id: its query-memory-devices data}."""
        return {d['data']['id']: d['data'] for d in self.proxy.qmp('query-memory-devices')
                if d.get('type') == 'dimm' and d['data'].get('id')}

    def unplug(self, dimm: Dimm, timeout_s: float = UNPLUG_TIMEOUT_S) -> float:
        """device_del, wait for its DEVICE_DELETED, object-del the backend.
        Returns the seconds the guest took to let it go."""
        started = time.monotonic()
        self.proxy.qmp('device_del', id=dimm.id)
        deadline = started + timeout_s
        while True:
            event = self.proxy.get_event('DEVICE_DELETED',
                                         max(0.01, deadline - time.monotonic()))
            if event.get('data', {}).get('device') == dimm.id:
                break
        elapsed = time.monotonic() - started
        self.proxy.qmp('object-del', id=dimm.memdev)
        del self.dimms[dimm.id]
        return elapsed


def maps_range(regions: List[memview.RamRegion], start: int, size: int) -> bool:
    """True if one remote RAM region covers exactly [start, start + size)."""
    return any(r.start == start and r.size == size for r in regions)


def maps_anything_in(regions: List[memview.RamRegion], start: int, size: int) -> bool:
    return any(r.start < start + size and start <= r.end for r in regions)
