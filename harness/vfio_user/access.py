"""A :class:`harness.devices.pci.DeviceAccess` over a vfio-user client.

vfio-user has no bus addresses: config space is region 7
(VFIO_PCI_CONFIG_REGION_INDEX) and each BAR is a region of its own,
reached by offset (hw/remote/vfio-user-obj.c, vfu_object_bar_rw: an
offset into the BAR's MemoryRegion, wherever config space says the BAR
is).  The harness's drivers, like a CPU, use the absolute addresses they
programmed into the BARs, so this access decodes them as a PCI bus
would: it reads the BAR registers and COMMAND from config space (cached
until a config write that may move them, or a reset) and turns an
address inside an enabled BAR into (region, offset).  Guest RAM is the
harness's memfd RAM, DMA-mapped by the client at its guest addresses.
"""

from typing import Dict, List, Optional, Tuple

from ..base.fdstream import RemoteError
from ..devices import pci
from ..qemu.guestmem import GuestMemory, HarnessRamAccess
from . import protocol as p
from .client import IntxLine, VfioUserClient

_DECODE_REGISTERS = range(pci.COMMAND, pci.BASE_ADDRESS_0 + 4 * pci.NUM_BARS)


class NoBarThere(RemoteError):
    """No enabled BAR of the device decodes the address: on a bus the
    access would go nowhere, so it is not sent."""


class VfioUserAccess(HarnessRamAccess):
    """Config space, BARs and DMA of one device served over vfio-user."""

    def __init__(self, client: VfioUserClient, memory: GuestMemory,
                 region_sizes: Dict[int, int]):
        super().__init__(memory)
        self.client = client
        self.region_sizes = region_sizes      # BAR index -> size (GET_REGION_INFO)
        self._decode: Optional[List[Tuple[int, bool, int, int]]] = None

    @property
    def irq(self) -> Optional[IntxLine]:
        return self.client.irq

    def config_read(self, offset: int, size: int) -> int:
        data = self.client.region_read(p.CONFIG_REGION_INDEX, offset, size)
        return int.from_bytes(data, 'little')

    def config_write(self, offset: int, value: int, size: int) -> None:
        self.client.region_write(p.CONFIG_REGION_INDEX, offset,
                                 (value & ((1 << (8 * size)) - 1)).to_bytes(size, 'little'))
        if offset < _DECODE_REGISTERS.stop and offset + size > _DECODE_REGISTERS.start:
            self._decode = None

    def bar_read(self, addr: int, size: int, memory: bool) -> int:
        index, offset = self.locate(addr, size, memory)
        return int.from_bytes(self.client.region_read(index, offset, size), 'little')

    def bar_write(self, addr: int, value: int, size: int, memory: bool) -> None:
        index, offset = self.locate(addr, size, memory)
        self.client.region_write(index, offset,
                                 (value & ((1 << (8 * size)) - 1)).to_bytes(size, 'little'))

    def device_reset(self) -> None:
        self.client.device_reset()
        self._decode = None

    def locate(self, addr: int, size: int, memory: bool) -> Tuple[int, int]:
        """(region index, offset) of an absolute BAR address."""
        for index, io, base, length in self._windows():
            if io != (not memory):
                continue
            if base <= addr and addr + size <= base + length:
                return index, addr - base
        space = 'memory' if memory else 'I/O'
        raise NoBarThere(f"no enabled BAR decodes the {size}-byte {space} access at {addr:#x} "
                         f"(windows: {self._describe()}): program the BARs and enable "
                         f"decoding in COMMAND first")

    def _windows(self) -> List[Tuple[int, bool, int, int]]:
        """(index, io, address, size) of each BAR whose space is enabled."""
        if self._decode is None:
            command = self.config_read(pci.COMMAND, 2)
            windows = []
            for index, length in sorted(self.region_sizes.items()):
                raw = self.config_read(pci.BASE_ADDRESS_0 + 4 * index, 4)
                io = bool(raw & pci.BAR_SPACE_IO)
                base = raw & (pci.BAR_IO_MASK if io else pci.BAR_MEM_MASK)
                if not io and raw & pci.BAR_MEM_TYPE_MASK == pci.BAR_MEM_TYPE_64:
                    base |= self.config_read(pci.BASE_ADDRESS_0 + 4 * index + 4, 4) << 32
                enabled = command & (pci.COMMAND_IO if io else pci.COMMAND_MEMORY)
                if enabled and base:
                    windows.append((index, io, base, length))
            self._decode = windows
        return self._decode

    def _describe(self) -> str:
        return ', '.join(f"BAR{i} {'io' if io else 'mem'} {base:#x}+{length:#x}"
                         for i, io, base, length in self._decode or []) or 'none'
