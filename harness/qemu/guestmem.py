"""Harness-owned "guest RAM" for driving a remote process without a proxy.

A real proxy backs guest RAM with a memfd and sends its fd to the remote in
SYNC_SYSMEM (hw/remote/proxy-memory-listener.c); the remote maps it with
RAM_SHARED at the guest physical address it is told (hw/remote/memory.c).
Here the harness plays the proxy: each :class:`RamRegion` is one memfd,
mapped shared in this process too, so what the device DMAs is visible to
the test at once and vice versa, with no copy and no guest.

:class:`GuestMemory` is a set of regions plus a first-fit allocator for DMA
buffers, so that device drivers in the harness (``harness.devices``) can ask
for "a buffer and its physical address" the way a guest driver would.
"""

import mmap
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..base.errors import HarnessError

PAGE_SIZE = mmap.PAGESIZE
DEFAULT_DMA_ALIGN = 64


class GuestMemoryError(HarnessError):
    """An access or allocation outside the harness-owned guest RAM."""


@dataclass(frozen=True)
class SysmemRegion:
    """One entry of a SYNC_SYSMEM table: ``size`` bytes of ``fd`` starting
    at ``offset`` appear at guest physical address ``gpa``."""
    fd: int
    gpa: int
    size: int
    offset: int = 0


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


class FirstFit:
    """A first-fit allocator over ``[base, base + size)``."""

    def __init__(self, base: int, size: int):
        self._free: List[Tuple[int, int]] = [(base, size)]   # (start, length), sorted
        self._used: Dict[int, Tuple[int, int]] = {}           # returned addr -> block

    def alloc(self, size: int, align: int) -> Optional[int]:
        for i, (start, length) in enumerate(self._free):
            addr = _round_up(start, align)
            end = addr + size
            if end > start + length:
                continue
            del self._free[i]
            if end < start + length:
                self._free.insert(i, (end, start + length - end))
            # The alignment gap stays with the block and comes back on free.
            self._used[addr] = (start, end - start)
            return addr
        return None

    def free(self, addr: int) -> None:
        try:
            block = self._used.pop(addr)
        except KeyError:
            raise GuestMemoryError(f"free of {addr:#x}, which is not an allocated buffer") from None
        self._free.append(block)
        self._free.sort()
        merged: List[Tuple[int, int]] = []
        for start, length in self._free:
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1] = (merged[-1][0], merged[-1][1] + length)
            else:
                merged.append((start, length))
        self._free = merged

    @property
    def used_bytes(self) -> int:
        return sum(length for _, length in self._used.values())

    def take(self, size: int, align: int) -> int:
        """``alloc`` for a DMA buffer of a guest's RAM, or a GuestMemoryError
        that says what to do."""
        addr = self.alloc(size, align)
        if addr is None:
            raise GuestMemoryError(f"no room for a {size}-byte DMA buffer in guest RAM "
                                   f"({self.used_bytes} bytes in use): give the VM more memory")
        return addr


class RamRegion:
    """``size`` bytes of memfd-backed RAM that the device sees at ``gpa``."""

    def __init__(self, gpa: int, size: int, name: str = 'guest-ram'):
        if size <= 0 or size % PAGE_SIZE:
            raise GuestMemoryError(f"RAM region size {size:#x} must be a positive multiple "
                                   f"of the page size ({PAGE_SIZE:#x}): QEMU maps it with mmap")
        if gpa % PAGE_SIZE:
            raise GuestMemoryError(f"RAM region address {gpa:#x} must be page aligned")
        self.gpa = gpa
        self.size = size
        self.name = name
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)
            self._map = mmap.mmap(self.fd, size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(self.fd)
            raise
        self._allocator = FirstFit(gpa, size)

    def __repr__(self) -> str:
        return f'RamRegion({self.name!r}, gpa={self.gpa:#x}, size={self.size:#x})'

    @property
    def end(self) -> int:
        return self.gpa + self.size

    def contains(self, gpa: int, length: int = 1) -> bool:
        return self.gpa <= gpa and gpa + length <= self.end

    def sysmem(self) -> SysmemRegion:
        return SysmemRegion(self.fd, self.gpa, self.size, 0)

    def view(self, gpa: int, length: int) -> memoryview:
        """Zero-copy view of guest RAM (valid until :meth:`close`)."""
        self._check(gpa, length)
        start = gpa - self.gpa
        return memoryview(self._map)[start:start + length]

    def read(self, gpa: int, length: int) -> bytes:
        self._check(gpa, length)
        start = gpa - self.gpa
        return self._map[start:start + length]

    def write(self, gpa: int, data: bytes) -> None:
        self._check(gpa, len(data))
        start = gpa - self.gpa
        self._map[start:start + len(data)] = data

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        self.write(gpa, bytes([byte]) * length)

    def alloc(self, size: int, align: int = DEFAULT_DMA_ALIGN) -> Optional[int]:
        return self._allocator.alloc(size, align)

    def free(self, gpa: int) -> None:
        self._allocator.free(gpa)

    def _check(self, gpa: int, length: int) -> None:
        if length < 0 or not self.contains(gpa, length):
            raise GuestMemoryError(f"guest access [{gpa:#x}, {gpa + length:#x}) is outside "
                                   f"{self!r}")

    def close(self) -> None:
        if self.fd >= 0:
            self._map.close()
            os.close(self.fd)
            self.fd = -1


class GuestMemory:
    """The guest physical address space the harness offers a remote: a
    few RAM regions (each its own memfd) and DMA buffer allocation."""

    def __init__(self) -> None:
        self.regions: List[RamRegion] = []

    def __enter__(self) -> 'GuestMemory':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add_region(self, gpa: int, size: int, name: Optional[str] = None) -> RamRegion:
        for region in self.regions:
            if gpa < region.end and region.gpa < gpa + size:
                raise GuestMemoryError(f"new RAM [{gpa:#x}, {gpa + size:#x}) overlaps {region!r}")
        region = RamRegion(gpa, size, name or f'guest-ram-{len(self.regions)}')
        self.regions.append(region)
        return region

    def sysmem_table(self) -> List[SysmemRegion]:
        """What SYNC_SYSMEM must carry for the remote to see every region."""
        return [r.sysmem() for r in self.regions]

    def region_at(self, gpa: int, length: int = 1) -> RamRegion:
        for region in self.regions:
            if region.contains(gpa, length):
                return region
        raise GuestMemoryError(f"guest access [{gpa:#x}, {gpa + length:#x}) is not inside one "
                               f"RAM region (have {self.regions})")

    def read(self, gpa: int, length: int) -> bytes:
        return self.region_at(gpa, length).read(gpa, length)

    def write(self, gpa: int, data: bytes) -> None:
        self.region_at(gpa, len(data)).write(gpa, data)

    def view(self, gpa: int, length: int) -> memoryview:
        return self.region_at(gpa, length).view(gpa, length)

    def alloc(self, size: int, align: int = DEFAULT_DMA_ALIGN,
              region: Optional[RamRegion] = None) -> int:
        """Allocate a DMA buffer; returns its guest physical address."""
        if size <= 0:
            raise GuestMemoryError(f"cannot allocate {size} bytes")
        for candidate in ([region] if region else self.regions):
            addr = candidate.alloc(size, align)
            if addr is not None:
                return addr
        raise GuestMemoryError(f"no room for a {size}-byte buffer in {self.regions}: "
                               f"add a larger region or free buffers")

    def free(self, gpa: int) -> None:
        self.region_at(gpa).free(gpa)

    def close(self) -> None:
        for region in self.regions:
            region.close()
        self.regions = []


class HarnessRamAccess:
    """The guest-memory half of a :class:`harness.devices.pci.DeviceAccess`
    whose "guest RAM" is a harness-owned :class:`GuestMemory`: the fake
    proxy's (harness/mpqemu/protocol.py) and the vfio-user client's
    (harness/vfio_user/access.py).  Subclasses add config and BAR access."""

    def __init__(self, memory: GuestMemory):
        self.memory = memory

    def mem_read(self, gpa: int, length: int) -> bytes:
        return self.memory.read(gpa, length)

    def mem_write(self, gpa: int, data: bytes) -> None:
        self.memory.write(gpa, data)

    def dma_alloc(self, size: int, align: int = DEFAULT_DMA_ALIGN) -> int:
        return self.memory.alloc(size, align)

    def dma_free(self, gpa: int) -> None:
        self.memory.free(gpa)
