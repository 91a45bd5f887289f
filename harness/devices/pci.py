"""PCI configuration space, BAR sizing and programming, and the small
"device access" interface that harness device drivers run over.

A driver in ``harness.devices`` never knows how it reaches the device: the
fake proxy (``harness.mpqemu.protocol.FakeProxyAccess``) speaks the mpqemu
protocol to a remote process, a qtest backend would use port and memory
commands on a real proxy.  Both offer :class:`DeviceAccess`.

Constants are those of QEMU's include/standard-headers/linux/pci_regs.h.
"""

from dataclasses import dataclass
from typing import List, Optional, Protocol

from ..base.errors import HarnessError

# Configuration space header (type 0)
VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
REVISION_ID = 0x08
CLASS_PROG = 0x09
CLASS_DEVICE = 0x0a          # 16 bits: base class << 8 | subclass
HEADER_TYPE = 0x0e
BASE_ADDRESS_0 = 0x10
SUBSYSTEM_VENDOR_ID = 0x2c
SUBSYSTEM_ID = 0x2e
ROM_ADDRESS = 0x30
INTERRUPT_LINE = 0x3c
INTERRUPT_PIN = 0x3d
CONFIG_SPACE_SIZE = 256
NUM_BARS = 6

COMMAND_IO = 0x0001
COMMAND_MEMORY = 0x0002
COMMAND_MASTER = 0x0004
COMMAND_INTX_DISABLE = 0x0400

STATUS_INTERRUPT = 0x0008

BAR_SPACE_IO = 0x01
BAR_MEM_TYPE_MASK = 0x06
BAR_MEM_TYPE_64 = 0x04
BAR_MEM_PREFETCH = 0x08
BAR_IO_MASK = ~0x03 & 0xffffffff
BAR_MEM_MASK = ~0x0f & 0xffffffff

# Where setup() puts BARs by default: above any RAM the harness maps below
# 3 GiB, and inside the 64 KiB I/O space.  Each BAR is aligned to its size.
DEFAULT_IO_BASE = 0xc000
DEFAULT_MMIO_BASE = 0xe000_0000


class PciError(HarnessError):
    """The device's configuration space is not what the driver expects."""


class IrqLine(Protocol):
    """An INTx line the harness can observe."""

    def wait(self, timeout_s: float) -> bool:
        """True once the line was raised (consumes the edge)."""

    def pending(self) -> bool:
        """Consume a raised edge without waiting."""

    def ack(self) -> None:
        """End of interrupt (resample a still-high level)."""


class DeviceAccess(Protocol):
    """How a harness driver reaches one PCI function and guest memory.

    ``bar_read``/``bar_write`` take an absolute address in the memory
    (``memory=True``) or I/O address space, as a CPU would use once the
    BARs are programmed.  ``irq`` is None where no interrupt is observable
    (e.g. a real proxy under TCG, see docs/multiprocess-qemu.md,
    "INTx needs KVM").
    """
    irq: Optional[IrqLine]

    def config_read(self, offset: int, size: int) -> int: ...
    def config_write(self, offset: int, value: int, size: int) -> None: ...
    def bar_read(self, addr: int, size: int, memory: bool) -> int: ...
    def bar_write(self, addr: int, value: int, size: int, memory: bool) -> None: ...
    def mem_read(self, gpa: int, length: int) -> bytes: ...
    def mem_write(self, gpa: int, data: bytes) -> None: ...
    def dma_alloc(self, size: int, align: int = 64) -> int: ...
    def dma_free(self, gpa: int) -> None: ...


@dataclass
class Bar:
    index: int
    io: bool
    size: int
    is_64bit: bool = False
    prefetchable: bool = False
    address: Optional[int] = None

    @property
    def memory(self) -> bool:
        return not self.io

    def __str__(self) -> str:
        where = f'@{self.address:#x}' if self.address is not None else 'unassigned'
        kind = 'io' if self.io else ('mem64' if self.is_64bit else 'mem32')
        return f'BAR{self.index} {kind} {self.size:#x} {where}'


def probe_bars(access: DeviceAccess) -> List[Bar]:
    """Size every implemented BAR the standard way (write all-ones, read
    back the mask, restore), as hw/remote/proxy.c's probe_pci_info does.
    Call with decoding disabled in COMMAND, or the device briefly moves."""
    bars: List[Bar] = []
    index = 0
    while index < NUM_BARS:
        offset = BASE_ADDRESS_0 + 4 * index
        original = access.config_read(offset, 4)
        access.config_write(offset, 0xffffffff, 4)
        mask = access.config_read(offset, 4)
        access.config_write(offset, original, 4)
        if mask in (0, 0xffffffff):
            index += 1
            continue
        if mask & BAR_SPACE_IO:
            size = (~(mask & BAR_IO_MASK) & 0xffff) + 1
            bars.append(Bar(index, io=True, size=size))
            index += 1
            continue
        is_64bit = (mask & BAR_MEM_TYPE_MASK) == BAR_MEM_TYPE_64
        full_mask = mask & BAR_MEM_MASK
        if is_64bit:
            high_offset = offset + 4
            high_original = access.config_read(high_offset, 4)
            access.config_write(high_offset, 0xffffffff, 4)
            full_mask |= access.config_read(high_offset, 4) << 32
            access.config_write(high_offset, high_original, 4)
            size = (~full_mask & 0xffff_ffff_ffff_ffff) + 1
        else:
            size = (~full_mask & 0xffffffff) + 1
        bars.append(Bar(index, io=False, size=size, is_64bit=is_64bit,
                        prefetchable=bool(mask & BAR_MEM_PREFETCH)))
        index += 2 if is_64bit else 1
    return bars


class PciFunction:
    """One PCI function reached through a :class:`DeviceAccess`."""

    def __init__(self, access: DeviceAccess):
        self.access = access
        self.bars: List[Bar] = []

    @property
    def vendor_id(self) -> int:
        return self.access.config_read(VENDOR_ID, 2)

    @property
    def device_id(self) -> int:
        return self.access.config_read(DEVICE_ID, 2)

    def expect_identity(self, vendor_id: int, device_id: int) -> None:
        found = (self.vendor_id, self.device_id)
        if found != (vendor_id, device_id):
            raise PciError(f"expected PCI device {vendor_id:04x}:{device_id:04x}, config "
                           f"space says {found[0]:04x}:{found[1]:04x}: wrong device or "
                           f"wrong remote (check -device and x-remote-object,devid=)")

    def setup(self, io_base: int = DEFAULT_IO_BASE, mmio_base: int = DEFAULT_MMIO_BASE,
              bus_master: bool = True) -> List[Bar]:
        """Size the BARs, give each an address (naturally aligned, from
        ``io_base``/``mmio_base`` up), then enable decoding and DMA."""
        self.set_command(0)
        self.bars = probe_bars(self.access)
        next_io, next_mmio = io_base, mmio_base
        for bar in self.bars:
            if bar.io:
                bar.address = _align(next_io, bar.size)
                next_io = bar.address + bar.size
            else:
                bar.address = _align(next_mmio, bar.size)
                next_mmio = bar.address + bar.size
            self.program_bar(bar)
        command = COMMAND_MEMORY | COMMAND_IO | (COMMAND_MASTER if bus_master else 0)
        self.set_command(command)
        return self.bars

    def program_bar(self, bar: Bar) -> None:
        offset = BASE_ADDRESS_0 + 4 * bar.index
        self.access.config_write(offset, bar.address & 0xffffffff, 4)
        if bar.is_64bit:
            self.access.config_write(offset + 4, bar.address >> 32, 4)
        readback = self.access.config_read(offset, 4) & (BAR_IO_MASK if bar.io else BAR_MEM_MASK)
        if readback != bar.address & 0xffffffff:
            raise PciError(f"{bar}: BAR reads back {readback:#x} after programming")

    def set_command(self, value: int) -> None:
        self.access.config_write(COMMAND, value, 2)

    def command(self) -> int:
        return self.access.config_read(COMMAND, 2)

    def bar(self, index: int) -> Bar:
        for bar in self.bars:
            if bar.index == index:
                if bar.address is None:
                    break
                return bar
        raise PciError(f"BAR{index} is not programmed (have {', '.join(map(str, self.bars))}):"
                       f" call setup() first")

    def read(self, index: int, offset: int, size: int) -> int:
        bar = self._checked(index, offset, size)
        return self.access.bar_read(bar.address + offset, size, bar.memory)

    def write(self, index: int, offset: int, value: int, size: int) -> None:
        bar = self._checked(index, offset, size)
        self.access.bar_write(bar.address + offset, value, size, bar.memory)

    def _checked(self, index: int, offset: int, size: int) -> Bar:
        bar = self.bar(index)
        if offset < 0 or offset + size > bar.size:
            raise PciError(f"access of {size} bytes at {offset:#x} is outside {bar}")
        return bar


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def qmp_pci_device(query_pci: list, qdev_id: str) -> Optional[dict]:
    """The device called ``qdev_id`` in a QMP ``query-pci`` reply."""
    for bus in query_pci:
        for device in bus['devices']:
            if device.get('qdev_id') == qdev_id:
                return device
    return None
