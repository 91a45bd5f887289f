"""A PCI function as a hostile remote presents it when it behaves.

:class:`FunctionModel` answers the proxy's configuration space and BAR
accesses the way hw/remote/message.c answers for a real device: reads
return what the function holds, writes land where the function lets them
(read-only identity, BAR address bits masked by the BAR's size, the
command register and interrupt line writable), BAR accesses hit plain
memory behind each BAR.  That is enough for SeaBIOS to enumerate it and
assign its BARs, for the proxy's start-up probe to size them, and for the
agent to read back what it wrote.

The identity is QEMU's pci-testdev's (1b36:0005, class "other"), to which
neither SeaBIOS nor the agent binds a driver; the BARs are one I/O BAR and
one memory BAR.  A scenario may give other BAR answers (``bars``) to see
what the proxy's probe makes of them.
"""

import struct
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

from ...devices import pci

VENDOR_ID = 0x1b36              # PCI_VENDOR_ID_REDHAT
DEVICE_ID = 0x0005              # PCI_DEVICE_ID_REDHAT_TEST (pci-testdev)
CLASS_OTHERS = 0xff00           # PCI_CLASS_OTHERS << 8
REVISION = 0x01
SUBSYSTEM_VENDOR_ID = 0x1af4
SUBSYSTEM_ID = 0x1100
IO_BAR = 0
MMIO_BAR = 1
IO_BAR_SIZE = 0x100
MMIO_BAR_SIZE = 0x1000
CONFIG_SIZE = pci.CONFIG_SPACE_SIZE
UINT64_MAX = (1 << 64) - 1


@dataclass
class Bar:
    """One BAR: ``size`` bytes (a power of two) of I/O or memory space.

    ``probe_answer``, when set, is what a read of the BAR returns after
    the all-ones sizing write instead of the size mask: a hostile answer to
    the proxy's probe (hw/remote/proxy.c probe_pci_info).
    ``address_answer``, when set, is the address a read returns instead of
    the one the guest programmed: a lie about where the BAR is."""
    size: int
    io: bool
    probe_answer: Optional[int] = None
    address_answer: Optional[int] = None
    address: int = 0
    sizing: bool = False            # the last write was all-ones
    contents: bytearray = field(default_factory=bytearray)

    def __post_init__(self):
        self.contents = bytearray(self.size)

    @property
    def flags(self) -> int:
        return pci.BAR_SPACE_IO if self.io else 0

    def read(self) -> int:
        if self.sizing:
            if self.probe_answer is not None:
                return self.probe_answer
            return (~(self.size - 1) & 0xffffffff) | self.flags
        if self.address_answer is not None:
            return self.address_answer | self.flags
        return self.address | self.flags

    def write(self, value: int) -> None:
        self.sizing = value == 0xffffffff
        if not self.sizing:
            self.address = value & ~(self.size - 1) & ~0xf & 0xffffffff


def default_bars() -> Dict[int, Bar]:
    return {IO_BAR: Bar(IO_BAR_SIZE, io=True), MMIO_BAR: Bar(MMIO_BAR_SIZE, io=False)}


class FunctionModel:
    """Configuration space and BAR memory of one PCI function."""

    def __init__(self, bars: Optional[Dict[int, Bar]] = None,
                 identity: Sequence[int] = (VENDOR_ID, DEVICE_ID, CLASS_OTHERS)):
        self.bars = default_bars() if bars is None else bars
        self.config = bytearray(CONFIG_SIZE)
        vendor, device, class_device = identity
        struct.pack_into('<HH', self.config, pci.VENDOR_ID, vendor, device)
        self.config[pci.REVISION_ID] = REVISION
        struct.pack_into('<H', self.config, pci.CLASS_DEVICE, class_device)
        struct.pack_into('<HH', self.config, pci.SUBSYSTEM_VENDOR_ID, SUBSYSTEM_VENDOR_ID,
                         SUBSYSTEM_ID)
        self.config[pci.INTERRUPT_PIN] = 1
        self.resets = 0

    # -- configuration space

    def config_read(self, offset: int, size: int) -> int:
        """What the function returns for a config read (all-ones outside
        its 256 bytes, as a real remote refuses those)."""
        if size not in (1, 2, 4) or offset + size > CONFIG_SIZE:
            return UINT64_MAX
        raw = bytearray(self.config[offset:offset + size])
        for index, bar in self.bars.items():
            start = pci.BASE_ADDRESS_0 + 4 * index
            if start < offset + size and offset < start + 4:
                word = struct.pack('<I', bar.read())
                for i in range(4):
                    if offset <= start + i < offset + size:
                        raw[start + i - offset] = word[i]
        return int.from_bytes(raw, 'little')

    def config_write(self, offset: int, value: int, size: int) -> int:
        """Apply a config write; returns the RET value (0, or UINT64_MAX
        for one the function refuses)."""
        if size not in (1, 2, 4) or offset + size > CONFIG_SIZE:
            return UINT64_MAX
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, 'little')
        for index, bar in self.bars.items():
            start = pci.BASE_ADDRESS_0 + 4 * index
            if offset == start and size == 4:
                bar.write(value & 0xffffffff)
                return 0
        for i, byte in enumerate(data):
            if offset + i in _WRITABLE:
                self.config[offset + i] = byte
        return 0

    # -- BARs

    def bar_at(self, addr: int, size: int, memory: bool) -> Optional[Bar]:
        for bar in self.bars.values():
            if bar.io != memory and bar.address and bar.address <= addr \
                    and addr + size <= bar.address + bar.size:
                return bar
        return None

    def bar_read(self, addr: int, size: int, memory: bool) -> int:
        bar = self.bar_at(addr, size, memory)
        if bar is None or size not in (1, 2, 4, 8):
            return UINT64_MAX
        offset = addr - bar.address
        return int.from_bytes(bar.contents[offset:offset + size], 'little')

    def bar_write(self, addr: int, value: int, size: int, memory: bool) -> int:
        bar = self.bar_at(addr, size, memory)
        if bar is None or size not in (1, 2, 4, 8):
            return UINT64_MAX
        offset = addr - bar.address
        bar.contents[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(
            size, 'little')
        return 0

    def reset(self) -> None:
        """DEVICE_RESET: BAR contents and the command register clear; BAR
        addresses stay (the proxy keeps its own copy of them anyway)."""
        self.resets += 1
        for bar in self.bars.values():
            bar.contents[:] = bytes(bar.size)
        struct.pack_into('<H', self.config, pci.COMMAND, 0)


# Bytes of the header a guest may write (everything else is read-only):
# command, cache line size, latency timer, interrupt line.
_WRITABLE = frozenset([pci.COMMAND, pci.COMMAND + 1, 0x0c, 0x0d, pci.INTERRUPT_LINE])

