"""The vfio-user message families, and generating case ``index`` of a seed.

Each ``fam_*`` adds one family's steps to the case being built
(harness/fuzz/generator.py).  The families that a healthy server answers
(with a reply or an error reply) aim at what libvfio-user validates
(lib/libvfio-user.c, lib/dma.c, lib/irq.c) and at what QEMU's server does
with what passes (hw/remote/vfio-user-obj.c): region accesses at and past
the edges, huge counts, bad region indices; DMA_MAP with bogus
addresses, sizes, offsets, overlaps, flags, no fd, two fds and fds of the
wrong kind (a pipe, a socket, /dev/zero, a directory); DMA_UNMAP of what
was never mapped; SET_IRQS with bad index, start, count (wrapping),
flags and fds; info requests with short or odd argsz; fds attached to
messages that take none; replies and error replies sent to the server;
unknown and client-side-only commands; a second VERSION.  The families
that end the connection (or should): truncated headers, a header then
EOF, a msg_size that lies about the payload, random bytes, and, on a
fresh connection, anything before VERSION or a VERSION with garbage JSON.
"""

import json
import struct
from ...fuzz import generator
from ...fuzz.cases import FD_KINDS, FD_WRONG_KINDS
from ...fuzz.generator import UINT64_MAX, Builder
from ...qemu.guestmem import PAGE_SIZE
from .. import protocol as p

# Fuzz messages use ids from here to FOLLOWUP_ID_BASE - 1: neither the
# client's (harness/vfio_user/client.py) nor the follow-up's.
FUZZ_ID_BASE = 0x8000
FOLLOWUP_ID_BASE = 0xfff0
CONFIG_SIZE = 256


def _msg(b: Builder, cmd: int, data: bytes = b'', flags: int = p.TYPE_COMMAND,
         size=None, error_no: int = 0) -> bytes:
    msg_id = b.rng.randrange(FUZZ_ID_BASE, FOLLOWUP_ID_BASE)
    return p.Message(cmd, data, msg_id, flags, error_no, size=size).encode()


def _region_read(b: Builder, region: int, offset: int, count: int) -> bytes:
    return _msg(b, p.Cmd.REGION_READ, p.REGION_ACCESS.pack(offset & UINT64_MAX,
                                                           region & 0xffffffff,
                                                           count & 0xffffffff))


def _region_write(b: Builder, region: int, offset: int, data: bytes, count=None) -> bytes:
    count = len(data) if count is None else count
    return _msg(b, p.Cmd.REGION_WRITE, p.REGION_ACCESS.pack(offset & UINT64_MAX,
                                                            region & 0xffffffff,
                                                            count & 0xffffffff) + data)


def _dma_map(b: Builder, addr: int, size: int, offset: int = 0,
             flags: int = p.DMA_FLAG_READ | p.DMA_FLAG_WRITE, argsz: int = p.DMA_MAP.size) -> bytes:
    return _msg(b, p.Cmd.DMA_MAP, p.DMA_MAP.pack(argsz & 0xffffffff, flags & 0xffffffff,
                                                 offset & UINT64_MAX, addr & UINT64_MAX,
                                                 size & UINT64_MAX))


def _dma_unmap(b: Builder, addr: int, size: int, flags: int = 0) -> bytes:
    return _msg(b, p.Cmd.DMA_UNMAP, p.DMA_UNMAP.pack(p.DMA_UNMAP.size, flags & 0xffffffff,
                                                     addr & UINT64_MAX, size & UINT64_MAX))


# -- families that a healthy server answers

def fam_cfg_read(b: Builder) -> None:
    length = b.rng.choice([1, 2, 4])
    offset = b.rng.randrange(0, CONFIG_SIZE - length + 1)
    b.step(_region_read(b, p.CONFIG_REGION_INDEX, offset, length),
           f'cfg read {length}@{offset:#x}', reply=True)


def fam_cfg_write(b: Builder) -> None:
    length = b.rng.choice([1, 2, 4, 8, 16])
    if b.rng.random() < 0.9:        # mostly away from COMMAND and the BARs
        offset = b.rng.choice([0x0c, 0x0d, 0x0e, 0x0f] + list(range(0x3c, CONFIG_SIZE - 16)))
    else:
        offset = b.rng.randrange(0, CONFIG_SIZE - length + 1)
    data = b.rng.randbytes(length)
    b.step(_region_write(b, p.CONFIG_REGION_INDEX, offset, data),
           f'cfg write {length}@{offset:#x}={data.hex()}', reply=True)
    b.touch('config')


def fam_cfg_odd_length(b: Builder) -> None:
    """Config accesses whose length is not 1, 2, 4 or a multiple of 4:
    QEMU's server cuts them into 4-byte pieces and hands the remainder to
    ldn_le_p/stn_le_p (hw/remote/vfio-user-obj.c, vfu_object_cfg_access)."""
    length = b.rng.choice([3, 5, 6, 7, 11])
    offset = b.rng.choice([0x40, 0x80, 0xc0, CONFIG_SIZE - length])
    if b.rng.random() < 0.5:
        b.step(_region_read(b, p.CONFIG_REGION_INDEX, offset, length),
               f'cfg read {length}@{offset:#x}', reply=True)
    else:
        data = b.rng.randbytes(length)
        b.step(_region_write(b, p.CONFIG_REGION_INDEX, offset, data),
               f'cfg write {length}@{offset:#x}={data.hex()}', reply=True)
    b.touch('config')


def fam_register(b: Builder) -> None:
    index, _, _, size = b.rng.choice(b.layout.bars)
    width = b.rng.choice([1, 2, 4, 8])
    offset = b.rng.randrange(0, size - width + 1)
    if b.rng.random() < 0.5:
        b.step(_region_read(b, index, offset, width), f'BAR{index} read {width}@{offset:#x}',
               reply=True)
    else:
        data = b.rng.randbytes(width)
        b.step(_region_write(b, index, offset, data),
               f'BAR{index} write {width}@{offset:#x}={data.hex()}', reply=True)


def fam_region_oob(b: Builder) -> None:
    """Accesses at and past a region's end, with offsets that wrap."""
    index, size = b.rng.choice([(p.CONFIG_REGION_INDEX, CONFIG_SIZE)]
                               + [(i, s) for i, _, _, s in b.layout.bars])
    offset, count = b.rng.choice([(size, 1), (size - 2, 4), (size - 1, 8), (0, size + 1),
                                  (UINT64_MAX, 2), (UINT64_MAX - 1, 4), (1 << 63, 4),
                                  (size, 0), (0, 0)])
    if b.rng.random() < 0.5:
        b.step(_region_read(b, index, offset, count),
               f'region {index} read {count}@{offset:#x} (size {size:#x})', reply=True)
    else:
        b.step(_region_write(b, index, offset, b.rng.randbytes(count)),
               f'region {index} write {count}@{offset:#x} (size {size:#x})', reply=True)


def fam_region_huge_count(b: Builder) -> None:
    """Counts up to and past max_data_xfer_size, and writes whose count
    disagrees with the data sent."""
    index = b.rng.choice([p.CONFIG_REGION_INDEX, 0, 1, 2])
    count = b.rng.choice([1 << 20, (1 << 20) + 1, 0x7fff_ffff, 0xffff_ffff, 0x2000, 0x2001])
    if b.rng.random() < 0.5:
        b.step(_region_read(b, index, 0, count), f'region {index} read count {count:#x}',
               reply=True)
    else:
        sent = b.rng.choice([0, 4, 64])
        b.step(_region_write(b, index, 0, b.rng.randbytes(sent), count),
               f'region {index} write count {count:#x}, {sent} bytes sent', reply=True)


def fam_bad_region_index(b: Builder) -> None:
    index = b.rng.choice([3, 4, 5, p.ROM_REGION_INDEX, p.VGA_REGION_INDEX, 9, 10, 100,
                          0xffff_ffff])
    b.step(_region_read(b, index, 0, 4), f'region {index} read 4@0', reply=True)


def fam_device_reset(b: Builder) -> None:
    extra = b.rng.choice([0, 0, 8, 24])
    fds = [b.fd(b.rng.choice(FD_KINDS)) for _ in range(b.rng.choice([0, 0, 1, 3]))]
    b.step(_msg(b, p.Cmd.DEVICE_RESET, b.rng.randbytes(extra)),
           f'DEVICE_RESET +{extra} data bytes, {len(fds)} fds', fds, reply=True)


def fam_fds_on_request(b: Builder) -> None:
    """Fds on a message that takes none: libvfio-user must close them."""
    fds = [b.fd(b.rng.choice(FD_KINDS)) for _ in range(b.rng.randint(1, 8))]
    b.step(_region_read(b, p.CONFIG_REGION_INDEX, 0, 4), f'cfg read with {len(fds)} fds', fds,
           reply=True)


def fam_too_many_fds(b: Builder) -> None:
    count = b.rng.choice([9, 16, 64, 253])
    fd = b.fd(b.rng.choice(['eventfd', 'memfd:8192']))
    b.step(_region_read(b, p.CONFIG_REGION_INDEX, 0, 4), f'cfg read with {count} fds',
           [fd] * count, reply=True)


def fam_info_shapes(b: Builder) -> None:
    cmd = b.rng.choice([p.Cmd.DEVICE_GET_INFO, p.Cmd.DEVICE_GET_REGION_INFO,
                        p.Cmd.DEVICE_GET_IRQ_INFO, p.Cmd.DEVICE_GET_REGION_IO_FDS])
    argsz = b.rng.choice([0, 4, 15, 16, 24, 31, 32, 64, 0xffff_ffff])
    index = b.rng.choice([0, 1, 2, 7, 8, 9, 10, 100, 0xffff_ffff])
    sent = b.rng.choice([0, 8, 16, 32])
    data = struct.pack('<III', argsz, 0, index) + b'\0' * 20
    b.step(_msg(b, cmd, data[:sent]), f'{cmd.name} argsz {argsz} index {index}, {sent} bytes',
           reply=True)


def fam_set_irqs_bad(b: Builder) -> None:
    index = b.rng.choice([p.INTX_IRQ_INDEX, p.MSI_IRQ_INDEX, p.MSIX_IRQ_INDEX, p.ERR_IRQ_INDEX,
                          p.REQ_IRQ_INDEX, 5, 0xffff_ffff])
    action = b.rng.choice([p.IRQ_SET_ACTION_MASK, p.IRQ_SET_ACTION_UNMASK,
                           p.IRQ_SET_ACTION_TRIGGER, 0,
                           p.IRQ_SET_ACTION_MASK | p.IRQ_SET_ACTION_TRIGGER])
    data_type = b.rng.choice([p.IRQ_SET_DATA_NONE, p.IRQ_SET_DATA_BOOL, p.IRQ_SET_DATA_EVENTFD,
                              0, p.IRQ_SET_DATA_NONE | p.IRQ_SET_DATA_EVENTFD])
    start, count = b.rng.choice([(0, 1), (0, 0), (1, 0), (0, 2), (1, 1), (1, 0xffff_ffff),
                                 (0xffff_ffff, 1), (2, 0xffff_fffe), (0, 0xffff_ffff)])
    kinds = [b.rng.choice(FD_WRONG_KINDS) if b.rng.random() < 0.3 else 'eventfd'
             for _ in range(b.rng.choice([0, 1, 1, 2]))]
    fds = [b.fd(k) for k in kinds]
    payload = bytes(b.rng.choice([0, 1, 2])) if data_type == p.IRQ_SET_DATA_BOOL else b''
    argsz = b.rng.choice([p.IRQ_SET.size + len(payload), 0, 8, 0xffff_ffff])
    data = struct.pack('<IIIII', argsz, action | data_type, index, start, count) + payload
    b.step(_msg(b, p.Cmd.DEVICE_SET_IRQS, data),
           f'SET_IRQS index {index} flags {action | data_type:#x} start {start} count {count} '
           f'argsz {argsz} fds {",".join(kinds) or "none"}', fds, reply=True)
    b.touch('irq')


def fam_dma_map_shapes(b: Builder) -> None:
    """DMA_MAP with bogus geometry, flags, argsz, and fds of every kind."""
    ram_end = b.layout.ram_gpa + b.layout.ram_bytes
    addr, size, offset, what = b.rng.choice([
        (0x10_0000, PAGE_SIZE, 0, 'a page'),
        (0x10_0000, 2 * PAGE_SIZE, 0, 'two pages'),
        (b.layout.ram_gpa, PAGE_SIZE, 0, 'over the RAM'),
        (ram_end - PAGE_SIZE, 2 * PAGE_SIZE, 0, 'overlapping the RAM end'),
        (0x10_0000, 4 * PAGE_SIZE, 0, 'past the memfd end'),
        (0x10_0000, PAGE_SIZE, 4 * PAGE_SIZE, 'offset past EOF'),
        (0x10_0000, PAGE_SIZE, 123, 'offset not page aligned'),
        (0x10_0001, PAGE_SIZE, 0, 'address not page aligned'),
        (0x10_0000, 100, 0, 'size not page aligned'),
        (0x10_0000, 0, 0, 'size 0'),
        (UINT64_MAX - PAGE_SIZE + 1, 2 * PAGE_SIZE, 0, 'wrapping past 2^64'),
        (0x10_0000, 1 << 63, 0, 'size 2^63'),
        (0x10_0000, PAGE_SIZE, UINT64_MAX - PAGE_SIZE + 1, 'offset near 2^64')])
    flags = b.rng.choice([p.DMA_FLAG_READ | p.DMA_FLAG_WRITE] * 3
                         + [0, p.DMA_FLAG_READ, 0xffff_ffff])
    argsz = b.rng.choice([p.DMA_MAP.size] * 4 + [0, 8, 31, 33, 0xffff_ffff])
    choice = b.rng.random()
    if choice < 0.55:
        kinds = ['memfd:8192']
    elif choice < 0.8:
        kinds = [b.rng.choice(FD_WRONG_KINDS)]
    elif choice < 0.9:
        kinds = []
    else:
        kinds = ['memfd:8192', b.rng.choice(FD_KINDS)]
    fds = [b.fd(k) for k in kinds]
    b.step(_dma_map(b, addr, size, offset, flags, argsz),
           f'DMA_MAP {what}: {addr:#x}+{size:#x} offset {offset:#x} flags {flags:#x} '
           f'argsz {argsz} fds {",".join(kinds) or "none"}', fds, reply=True)
    b.touch('dma')
    if b.rng.random() < 0.5:
        b.step(_dma_unmap(b, addr, size), f'DMA_UNMAP {addr:#x}+{size:#x}', reply=True)


def fam_dma_unmap_bogus(b: Builder) -> None:
    addr, size, flags, what = b.rng.choice([
        (0x20_0000, PAGE_SIZE, 0, 'never mapped'),
        (b.layout.ram_gpa, PAGE_SIZE, 0, 'part of the RAM'),
        (b.layout.ram_gpa + PAGE_SIZE, b.layout.ram_bytes, 0, 'misaligned with the RAM'),
        (0, 0, 0, 'size 0'),
        (UINT64_MAX, 2, 0, 'wrapping'),
        (0, 0, 1, 'GET_DIRTY_BITMAP without a bitmap'),
        (0x20_0000, PAGE_SIZE, 2, 'ALL with an address'),
        (0, 0, 0xffff_ffff, 'every flag')])
    b.step(_dma_unmap(b, addr, size, flags), f'DMA_UNMAP {what}: {addr:#x}+{size:#x} '
           f'flags {flags:#x}', reply=True)
    b.touch('dma')


def fam_reply_to_server(b: Builder) -> None:
    """Replies (and error replies) the server never asked for."""
    cmd = b.rng.choice(list(p.Cmd))
    flags = b.rng.choice([p.TYPE_REPLY, p.TYPE_REPLY | p.FLAG_ERROR, p.FLAG_NO_REPLY,
                          0xf, 0xffff_ffff])
    size = b.rng.choice([0, 8, 16])
    b.step(_msg(b, cmd, b.rng.randbytes(size), flags=flags, error_no=b.rng.choice([0, 22])),
           f'{cmd.name} with flags {flags:#x}, {size} bytes')


def fam_unknown_cmd(b: Builder) -> None:
    cmd = b.rng.choice([0, p.Cmd.DMA_READ, p.Cmd.DMA_WRITE, p.Cmd.DIRTY_PAGES, 15, 16, 17, 18,
                        100, 0xffff])
    size = b.rng.choice([0, 8, 16, 24])
    b.step(_msg(b, cmd, b.rng.randbytes(size)), f'command {cmd} size {size}', reply=True)


def fam_version_again(b: Builder) -> None:
    b.step(_msg(b, p.Cmd.VERSION, p.version().data), 'VERSION after negotiation', reply=True)


# -- families that end the connection (or should)

def fam_truncated_header(b: Builder) -> None:
    full = _region_read(b, p.CONFIG_REGION_INDEX, 0, 4)
    cut = b.rng.randint(1, p.HEADER_SIZE - 1)
    b.step(full[:cut], f'header cut after {cut} bytes, then hang-up')
    b.case.hangup = True


def fam_header_then_eof(b: Builder) -> None:
    full = b.rng.choice([_region_read(b, p.CONFIG_REGION_INDEX, 0, 4),
                         _dma_map(b, 0x10_0000, PAGE_SIZE),
                         _region_write(b, 1, 0x34, b'\1\2\3\4')])
    cut = b.rng.randint(p.HEADER_SIZE, len(full) - 1)
    b.step(full[:cut], f'{len(full) - cut} payload bytes missing, then hang-up')
    b.case.hangup = True


def fam_lying_size(b: Builder) -> None:
    """msg_size disagrees with the payload sent: smaller than the header,
    or larger (the server waits for the rest: silence can be right)."""
    data = p.REGION_ACCESS.pack(0, p.CONFIG_REGION_INDEX, 4)
    size = b.rng.choice([0, 8, 15, 17, 24, 40, 4096, 0xffff_ffff])
    b.step(_msg(b, p.Cmd.REGION_READ, data, size=size),
           f'cfg read msg_size {size}, {p.HEADER_SIZE + len(data)} sent', reply=True)
    b.case.may_stall = True


def fam_random_bytes(b: Builder) -> None:
    data = b.rng.randbytes(b.rng.randint(1, 300))
    fds = [b.fd(b.rng.choice(FD_KINDS)) for _ in range(b.rng.choice([0, 0, 1, 2]))]
    b.step(data, f'{len(data)} random bytes, {len(fds)} fds', fds)
    b.case.may_stall = True


def fam_before_version(b: Builder) -> None:
    """On a fresh connection: anything but VERSION first, or a VERSION
    that libvfio-user must refuse (lib/tran.c, recv_version)."""
    b.case.fresh = True
    choice = b.rng.random()
    if choice < 0.3:
        b.step(_region_read(b, p.CONFIG_REGION_INDEX, 0, 4), 'cfg read before VERSION',
               reply=True)
    elif choice < 0.4:
        b.step(_msg(b, p.Cmd.DEVICE_RESET), 'DEVICE_RESET before VERSION', reply=True)
    else:
        caps, what = b.rng.choice([
            (b'{"capabilities":', 'truncated JSON'),
            (b'not json at all', 'not JSON'),
            (json.dumps({'capabilities': {'max_msg_fds': -1}}).encode(), 'max_msg_fds -1'),
            (json.dumps({'capabilities': {'max_msg_fds': 1 << 40}}).encode(), 'max_msg_fds 2^40'),
            (json.dumps({'capabilities': {'max_data_xfer_size': 'x'}}).encode(), 'string size'),
            (json.dumps({'capabilities': {'migration': {'pgsize': 3}}}).encode(), 'pgsize 3'),
            (json.dumps([1, 2, 3]).encode(), 'a JSON array')])
        nul = b'' if b.rng.random() < 0.2 else b'\0'
        major = b.rng.choice([0, 0, 0, 1, 0xffff])
        fds = [b.fd('eventfd')] if b.rng.random() < 0.1 else []
        b.step(_msg(b, p.Cmd.VERSION, p.VERSION.pack(major, 1) + caps + nul),
               f'VERSION major {major} with {what}{"" if nul else ", no NUL"}'
               f'{", an fd" if fds else ""}', fds, reply=True)


SURVIVABLE = [(fam_cfg_read, 10), (fam_cfg_write, 5), (fam_cfg_odd_length, 1),
              (fam_register, 14), (fam_region_oob, 5),
              (fam_region_huge_count, 3), (fam_bad_region_index, 3), (fam_device_reset, 3),
              (fam_fds_on_request, 3), (fam_too_many_fds, 2), (fam_info_shapes, 4),
              (fam_set_irqs_bad, 5), (fam_dma_map_shapes, 5), (fam_dma_unmap_bogus, 3),
              (fam_reply_to_server, 2), (fam_unknown_cmd, 3), (fam_version_again, 1)]
ENDING = [(fam_truncated_header, 2), (fam_header_then_eof, 2), (fam_lying_size, 2),
          (fam_random_bytes, 1)]

FAMILIES = generator.Families('vfio-user-fuzz', SURVIVABLE, ENDING, fam_before_version)
