"""The message families, and generating a case from ``(seed, index)``.

Each case is generated from ``(seed, index)`` alone (``random.Random``
seeded with both), so any case can be rebuilt and replayed.  A case is a
few protocol messages, most of them well formed but odd (random config
and register accesses, unusual fd types, odd memory tables), often ending
in a malformed one: unknown commands, wrong sizes, truncated headers or
data, too many fds, fds of the wrong type (a pipe or /dev/null where a
memfd or eventfd belongs), out-of-range addresses and lengths, overlapping
or oversized memory regions, and sequences out of order (register access
on a fresh remote before any SYNC_SYSMEM).  Each ``fam_*`` function adds
one family's steps to the case being built.
"""

import struct
from typing import Optional, Sequence, Tuple

from ...devices.lsi import registers as lsi_regs
from ...fuzz import generator
from ...fuzz.cases import FD_KINDS, FD_WRONG_KINDS, MMIO_BASE
from ...fuzz.generator import Builder as _Builder
from .. import protocol as p
from ...qemu.guestmem import PAGE_SIZE


def _msg(cmd: int, data: bytes = b'', size: Optional[int] = None) -> bytes:
    return p.Message(cmd, data, size=size).encode()


def _cfg(cmd: int, addr: int, val: int, length: int) -> bytes:
    return _msg(cmd, struct.pack('<IIi', addr & 0xffffffff, val & 0xffffffff, length))


def _bar(cmd: int, addr: int, val: int, size: int, memory: bool) -> bytes:
    return _msg(cmd, struct.pack('<QQI?3x', addr & p.UINT64_MAX, val & p.UINT64_MAX,
                                 size & 0xffffffff, memory))


def _sysmem(regions: Sequence[Tuple[int, int, int]]) -> bytes:
    """(gpa, size, offset) triples; offsets are signed off_t."""
    n = p.REMOTE_MAX_FDS
    pad = [0] * (n - len(regions))
    gpas = [r[0] & p.UINT64_MAX for r in regions] + pad
    sizes = [r[1] & p.UINT64_MAX for r in regions] + pad
    offsets = [r[2] for r in regions] + pad
    return _msg(p.Cmd.SYNC_SYSMEM, struct.pack(f'<{n}Q{n}Q{n}q', *gpas, *sizes, *offsets))


# -- families that a healthy remote survives

def fam_cfg_read(b: _Builder) -> None:
    length = b.rng.choice([1, 2, 4])
    addr = b.rng.randrange(0, p.PCI_CONFIG_SPACE_SIZE - length + 1)
    b.step(_cfg(p.Cmd.PCI_CFGREAD, addr, 0, length), f'cfg read {length}@{addr:#x}', reply=True)


def fam_cfg_write(b: _Builder) -> None:
    length = b.rng.choice([1, 2, 4])
    if b.rng.random() < 0.9:        # mostly away from COMMAND and the BARs
        addr = b.rng.choice([0x0c, 0x0d, 0x0e, 0x0f]
                            + list(range(0x3c, p.PCI_CONFIG_SPACE_SIZE - 4)))
    else:
        addr = b.rng.randrange(0, p.PCI_CONFIG_SPACE_SIZE - length + 1)
    value = b.u32()
    b.step(_cfg(p.Cmd.PCI_CFGWRITE, addr, value, length),
           f'cfg write {length}@{addr:#x}={value:#x}', reply=True)
    b.touch('config')


def fam_register(b: _Builder) -> None:
    index, io, base, size = b.rng.choice(b.layout.bars)
    width = b.rng.choice([1, 2, 4, 8])
    offset = b.rng.randrange(0, size - width + 1)
    if b.rng.random() < 0.5:
        b.step(_bar(p.Cmd.BAR_READ, base + offset, 0, width, not io),
               f'BAR{index} read {width}@{offset:#x}', reply=True)
    else:
        value = b.u64()
        b.step(_bar(p.Cmd.BAR_WRITE, base + offset, value, width, not io),
               f'BAR{index} write {width}@{offset:#x}={value:#x}', reply=True)


def fam_bad_bar_size(b: _Builder) -> None:
    width = b.rng.choice([0, 3, 5, 6, 7, 9, 16, 64, 0xffff_ffff])
    cmd = b.rng.choice([p.Cmd.BAR_READ, p.Cmd.BAR_WRITE])
    addr = b.rng.choice([b.layout.ram_gpa, MMIO_BASE, 0xdead_0000, p.UINT64_MAX])
    b.step(_bar(cmd, addr, b.u64(), width, b.rng.random() < 0.8),
           f'{cmd.name} size {width} @{addr:#x}', reply=True)


def fam_ram_access(b: _Builder) -> None:
    width = b.rng.choice([1, 2, 4, 8])
    addr = b.layout.ram_gpa + b.rng.randrange(0, b.layout.ram_bytes - width + 1)
    if b.rng.random() < 0.5:
        b.step(_bar(p.Cmd.BAR_READ, addr, 0, width, True), f'RAM read {width}@{addr:#x}',
               reply=True)
    else:
        b.step(_bar(p.Cmd.BAR_WRITE, addr, b.u64(), width, True),
               f'RAM write {width}@{addr:#x}', reply=True)


def fam_device_reset(b: _Builder) -> None:
    extra = b.rng.choice([0, 0, 8, 12, 24, p.DATA_UNION_SIZE])
    fds = [b.fd(b.rng.choice(FD_KINDS)) for _ in range(b.rng.choice([0, 0, 1, 3]))]
    b.step(_msg(p.Cmd.DEVICE_RESET, b.rng.randbytes(extra)),
           f'DEVICE_RESET +{extra} data bytes, {len(fds)} fds', fds, reply=True)


def fam_fds_on_request(b: _Builder) -> None:
    """Fds on a message that takes none: the remote neither uses nor
    closes them (a leak, not a failure)."""
    fds = [b.fd(b.rng.choice(FD_KINDS)) for _ in range(b.rng.randint(1, 7))]
    b.step(_cfg(p.Cmd.PCI_CFGREAD, 0, 0, 4), f'cfg read with {len(fds)} fds', fds, reply=True)


def fam_irqfd(b: _Builder) -> None:
    kinds = [b.rng.choice(FD_WRONG_KINDS) if b.rng.random() < 0.3 else 'eventfd'
             for _ in range(2)]
    fds = [b.fd(k) for k in kinds]
    b.step(_msg(p.Cmd.SET_IRQFD), f'SET_IRQFD irqfd={kinds[0]} resamplefd={kinds[1]}', fds)
    b.touch('irqfd')


def fam_sysmem_shapes(b: _Builder) -> None:
    """A well-formed table with odd but legal geometry: several regions,
    overlapping, sharing an fd, at the top of the address space, on an
    empty memfd (the remote grows it).  The harness's RAM stays in it, as
    a proxy's main RAM would, so later accesses to it still work."""
    regions = [(b.layout.ram_gpa, b.layout.ram_bytes, 0)]
    fds = [(b.fd('guest-ram'), b.layout.ram_bytes // PAGE_SIZE)]
    shapes = ['guest-ram']
    for _ in range(b.rng.randint(0, p.REMOTE_MAX_USABLE_FDS - 1)):
        if fds and b.rng.random() < 0.2:
            fd, file_pages = fds[-1]
        elif b.rng.random() < 0.15:
            fd, file_pages = b.fd('memfd-empty'), 0
        else:
            file_pages = b.rng.randint(1, 4)
            fd = b.fd(f'memfd:{file_pages * PAGE_SIZE}')
        pages = b.rng.randint(1, max(file_pages, 1))
        offset_pages = b.rng.randint(0, file_pages - pages) if file_pages else 0
        where = b.rng.random()
        if where < 0.3 and regions:
            gpa = regions[-1][0] + b.rng.randint(0, 2) * PAGE_SIZE        # overlap
        elif where < 0.4:
            gpa = (1 << 64) - b.rng.randint(1, 4) * PAGE_SIZE             # top, may wrap
        else:
            gpa = b.rng.randrange(0, 1 << 32, PAGE_SIZE)
        fds.append((fd, file_pages))
        regions.append((gpa, pages * PAGE_SIZE, offset_pages * PAGE_SIZE))
        shapes.append(f'{gpa:#x}+{pages}p@{offset_pages}p')
    b.step(_sysmem(regions), f'SYNC_SYSMEM {len(regions)} regions {" ".join(shapes)}',
           [fd for fd, _ in fds])
    b.touch('sysmem')
    for gpa, size, _ in regions[1:b.rng.randint(1, 3)]:
        addr = (gpa + b.rng.randrange(0, size - 8, 8)) & p.UINT64_MAX
        b.step(_bar(p.Cmd.BAR_READ, addr, 0, 8, True), f'RAM read 8@{addr:#x}', reply=True)


# -- families that end the remote (or should)

def fam_unknown_cmd(b: _Builder) -> None:
    cmd = b.rng.choice([p.Cmd.RET, p.Cmd.MAX, 9, 100, -1, 0x7fff_ffff, -0x8000_0000])
    size = b.rng.choice([0, 8, 12, 24])
    b.step(_msg(cmd, b.rng.randbytes(size)), f'unknown command {cmd} size {size}')


def fam_wrong_size(b: _Builder) -> None:
    right = {p.Cmd.PCI_CFGREAD: 12, p.Cmd.PCI_CFGWRITE: 12, p.Cmd.BAR_READ: 24,
             p.Cmd.BAR_WRITE: 24, p.Cmd.SET_IRQFD: 0, p.Cmd.SYNC_SYSMEM: 192}
    cmd = b.rng.choice(sorted(right))
    size = b.rng.choice([s for s in (0, 4, 8, 11, 13, 16, 23, 25, 100, 191, 192)
                         if s != right[cmd]])
    fds = []
    if cmd == p.Cmd.SET_IRQFD:
        fds = [b.fd('eventfd'), b.fd('eventfd')]
    elif cmd == p.Cmd.SYNC_SYSMEM:
        fds = [b.fd('memfd:8192')]
    b.step(_msg(cmd, b.rng.randbytes(size)), f'{cmd.name} with size {size} (needs {right[cmd]})',
           fds)


def fam_oversize(b: _Builder) -> None:
    size = b.rng.choice([p.DATA_UNION_SIZE + 1, 256, 4096, 1 << 32, 1 << 63, p.UINT64_MAX])
    sent = b.rng.choice([0, 16, 64])
    b.step(_msg(b.rng.choice(list(p.Cmd)[:-1]), b.rng.randbytes(sent), size=size),
           f'header size {size:#x} (max {p.DATA_UNION_SIZE}), {sent} data bytes sent')


def fam_truncated_header(b: _Builder) -> None:
    full = _cfg(p.Cmd.PCI_CFGREAD, 0, 0, 4)
    cut = b.rng.randint(1, p.HEADER_SIZE - 1)
    b.step(full[:cut], f'header cut after {cut} bytes, then hang-up')
    b.case.hangup = True


def fam_truncated_data(b: _Builder) -> None:
    full = b.rng.choice([_cfg(p.Cmd.PCI_CFGWRITE, 0x3c, 0, 1),
                         _bar(p.Cmd.BAR_READ, MMIO_BASE, 0, 4, True),
                         _sysmem([(0, PAGE_SIZE, 0)])])
    cut = b.rng.randint(p.HEADER_SIZE, len(full) - 1)
    b.step(full[:cut], f'{len(full) - cut} data bytes missing, then hang-up')
    b.case.hangup = True


def fam_lying_size(b: _Builder) -> None:
    """A header whose size disagrees with the data that follows: the rest
    of the stream is misframed, so silence can be right."""
    data = struct.pack('<IIi', 0, 0, 4)
    size = b.rng.choice([0, 4, 8, 24, 40])
    b.step(_msg(p.Cmd.PCI_CFGREAD, data, size=size), f'cfg read header size {size}, 12 sent')
    b.case.may_stall = True


def fam_too_many_fds(b: _Builder) -> None:
    count = b.rng.choice([p.REMOTE_MAX_FDS, p.REMOTE_MAX_FDS + 1, 16, 17, 64, 253])
    fd = b.fd('eventfd')
    if b.rng.random() < 0.5:
        data, what = _cfg(p.Cmd.PCI_CFGREAD, 0, 0, 4), 'cfg read'
    else:
        data, what = _sysmem([(0, PAGE_SIZE, 0)] * min(count, p.REMOTE_MAX_FDS)), 'SYNC_SYSMEM'
        fd = b.fd('memfd:8192')
    b.step(data, f'{what} with {count} fds', [fd] * count)


def fam_sysmem_bad_fd(b: _Builder) -> None:
    kinds = [b.rng.choice(FD_WRONG_KINDS) for _ in range(b.rng.randint(1, 3))]
    fds = [b.fd(k) for k in kinds]
    regions = [(i * 0x10_0000, PAGE_SIZE, 0) for i in range(len(fds))]
    b.step(_sysmem(regions), f'SYNC_SYSMEM on {",".join(kinds)}', fds)
    b.step(_bar(p.Cmd.BAR_READ, 0, 0, 4, True), 'RAM read 4@0x0', reply=True)
    b.touch('sysmem')


def fam_sysmem_bad_geometry(b: _Builder) -> None:
    file_bytes = 2 * PAGE_SIZE
    fd = b.fd(f'memfd:{file_bytes}')
    size, offset, what = b.rng.choice([
        (4 * PAGE_SIZE, 0, 'size past EOF'),
        (2 * PAGE_SIZE, PAGE_SIZE, 'offset+size past EOF'),
        (PAGE_SIZE, 2 * PAGE_SIZE, 'offset at EOF'),
        (PAGE_SIZE, -PAGE_SIZE, 'negative offset'),
        (0, 0, 'size 0'),
        (1 << 63, 0, 'size 2^63'),
        (100, 0, 'size not page aligned'),
        (PAGE_SIZE, 123, 'offset not page aligned')])
    gpa = b.rng.choice([0, 0x10_0000])
    b.step(_sysmem([(gpa, size, offset)]), f'SYNC_SYSMEM {what}: size {size:#x} offset '
           f'{offset:#x} of a {file_bytes:#x}-byte memfd at {gpa:#x}', [fd])
    probe = gpa + max(0, min(size, 2 * PAGE_SIZE) - 8)
    b.step(_bar(p.Cmd.BAR_READ, probe, 0, 8, True), f'RAM read 8@{probe:#x}', reply=True)
    b.touch('sysmem')


def fam_shrink_after_sync(b: _Builder) -> None:
    """The proxy shrinks shared RAM the remote has mapped (a memfd without
    seals, unlike QEMU's memory-backend-memfd default)."""
    fd = b.fd(f'memfd:{2 * PAGE_SIZE}')
    b.step(_sysmem([(0, 2 * PAGE_SIZE, 0)]), 'SYNC_SYSMEM 2 pages of an unsealed memfd', [fd])
    b.step(_cfg(p.Cmd.PCI_CFGREAD, 0, 0, 2), 'cfg read (barrier)', reply=True)
    b.step(_bar(p.Cmd.BAR_READ, PAGE_SIZE, 0, 4, True),
           'memfd truncated to 0 by the proxy, then RAM read 4@0x1000', reply=True,
           barrier=True, truncate=(fd, 0))
    b.touch('sysmem')


def fam_cfg_bad_len(b: _Builder) -> None:
    cmd = b.rng.choice([p.Cmd.PCI_CFGREAD, p.Cmd.PCI_CFGWRITE])
    if b.rng.random() < 0.7:
        length = b.rng.choice([0, 3, 5, 8, 16, 100, 0x7fff_ffff, -1, -4])
        addr = b.rng.choice([0, 0x40, 0xf8, 0xfc])
    else:
        length = b.rng.choice([1, 2, 4])
        addr = b.rng.choice([0xfd, 0xff, 0x100, 0x1000, 0xffff_fffc])
    b.step(_cfg(cmd, addr, b.u32(), length), f'{cmd.name} len {length} @{addr:#x}', reply=True)
    b.touch('config')


def fam_unmapped(b: _Builder) -> None:
    memory = b.rng.random() < 0.7
    addr = b.rng.choice([0x1000_0000, 0xfee0_0000, 1 << 40]) if memory else 0x1000
    cmd = b.rng.choice([p.Cmd.BAR_READ, p.Cmd.BAR_WRITE])
    b.step(_bar(cmd, addr, 0, 4, memory),
           f'{cmd.name} 4 @{addr:#x} ({"memory" if memory else "I/O"}, nothing mapped)',
           reply=True)


def fam_random_bytes(b: _Builder) -> None:
    data = b.rng.randbytes(b.rng.randint(1, 300))
    fds = [b.fd(b.rng.choice(FD_KINDS)) for _ in range(b.rng.choice([0, 0, 1, 2]))]
    b.step(data, f'{len(data)} random bytes, {len(fds)} fds', fds)
    b.case.may_stall = True


def fam_out_of_order(b: _Builder) -> None:
    """On a fresh remote: no memory table, BARs unprogrammed, no irqfd."""
    b.case.fresh = True
    for _ in range(b.rng.randint(1, 3)):
        choice = b.rng.random()
        if choice < 0.3:
            b.step(_bar(p.Cmd.BAR_READ, b.layout.ram_gpa, 0, 4, True),
                   'RAM read before any SYNC_SYSMEM', reply=True)
        elif choice < 0.5:
            b.step(_bar(p.Cmd.BAR_WRITE, MMIO_BASE + lsi_regs.SCRATCHA, 1, 4, True),
                   'register write before the BARs are programmed', reply=True)
        elif choice < 0.7:
            b.step(_msg(p.Cmd.SET_IRQFD), 'SET_IRQFD first', [b.fd('eventfd'), b.fd('eventfd')])
        elif choice < 0.85:
            b.step(_msg(p.Cmd.DEVICE_RESET), 'DEVICE_RESET first', reply=True)
        else:
            fam_cfg_read(b)


SURVIVABLE = [(fam_cfg_read, 10), (fam_cfg_write, 6), (fam_register, 14), (fam_bad_bar_size, 3),
              (fam_ram_access, 6), (fam_device_reset, 3), (fam_fds_on_request, 3),
              (fam_irqfd, 2), (fam_sysmem_shapes, 3)]
ENDING = [(fam_unknown_cmd, 4), (fam_wrong_size, 5), (fam_oversize, 3),
          (fam_truncated_header, 2), (fam_truncated_data, 2), (fam_lying_size, 1),
          (fam_too_many_fds, 3), (fam_sysmem_bad_fd, 3), (fam_sysmem_bad_geometry, 3),
          (fam_shrink_after_sync, 1), (fam_cfg_bad_len, 4), (fam_unmapped, 3),
          (fam_random_bytes, 1)]

FAMILIES = generator.Families('mpqemu-fuzz', SURVIVABLE, ENDING, fam_out_of_order)
