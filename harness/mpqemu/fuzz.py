"""Fuzzing a real remote process through its proxy socket.

    python -m harness.mpqemu.fuzz --seed 1 --messages 200000 --out build/fuzz

Each *case* is generated from ``(seed, index)`` alone (``random.Random``
seeded with both), so any case can be rebuilt and replayed.  A case is a
few protocol messages, most of them well formed but odd (random config
and register accesses, unusual fd types, odd memory tables), often ending
in a malformed one: unknown commands, wrong sizes, truncated headers or
data, too many fds, fds of the wrong type (a pipe or /dev/null where a
memfd or eventfd belongs), out-of-range addresses and lengths, overlapping
or oversized memory regions, and sequences out of order (register access
on a fresh remote before any SYNC_SYSMEM).

After the case the harness asks the remote a follow-up (two config reads
with known answers) within a deadline, and classifies:

  answered  the remote processed (or refused) everything and still answers
  exited    it exited with a status >= 0, usually with a log line saying why
            (hw/remote/message.c ends its loop on any invalid message)
  stalled   a case that leaves the stream mid-message, and an idle remote
            waiting for the rest: expected
  CRASH     it died by a signal                                 -> finding
  HANG      alive, but no answer within the deadline            -> finding
  harness hang: the case overran its own deadline               -> a bug here

A case that ends the remote gets a fresh one (a spare is always starting
in the background, ~40 ms).  After a surviving case the harness restores
what the case touched (memory table, irqfd, BARs, device reset, guest RAM
contents), so cases do not depend on each other.  Each finding is replayed
alone on a fresh remote (``reproduced``), shrunk step by step while it
still reproduces, and saved as JSON with the exact bytes (hex), the fds
(by kind), the outcome and the remote's log tail; known upstream bugs
(``tests/known_issues``) are recognised as such.
"""

import argparse
import collections
import faulthandler
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..base import known_issues, params, paths, procfs
from ..devices import lsi, pci
from ..qemu import binary as qemu_binary
from ..qemu.binary import Capabilities
from ..qemu.process import QEMUProcess
from . import protocol as p
from .guestmem import PAGE_SIZE, GuestMemory
from .remote import Remote

# The harness's guest RAM for every remote, and where setup puts the BARs.
RAM_GPA = 0
RAM_BYTES = 64 << 10
IO_BASE = pci.DEFAULT_IO_BASE
MMIO_BASE = pci.DEFAULT_MMIO_BASE

STARTUP_TIMEOUT_S = 10.0        # a fresh remote's first answer (2 busy cores)
FOLLOWUP_TIMEOUT_S = 0.5        # the follow-up after a case that should be answered
STALL_TIMEOUT_S = 0.2           # ... after a case that may leave the stream mid-message
HANG_CONFIRM_S = 2.0            # more silence before an idle remote counts as hung
BUSY_CONFIRM_S = 0.5            # ... and before a busy one does
BUSY_SAMPLE_S = 0.2             # CPU sampling window to tell busy from idle
BUSY_FRACTION = 0.5             # of one CPU, over BUSY_SAMPLE_S
EXIT_TIMEOUT_S = 3.0            # from closed socket (or our hang-up) to exit status
CASE_DEADLINE_S = 15.0          # everything a case does, replay excluded
WATCHDOG_S = 120.0              # hard stop of the whole process (faulthandler)
SAVED_PER_SIGNATURE = 3         # finding JSON files kept per distinct signature
MINIMIZE_MAX_REPLAYS = 12
LOG_TAIL_LINES = 8
# The remote serves its socket before its machine reset (qemu_system_reset
# at machine creation done); whatever it was told before that reset, such
# as BAR addresses, is undone.  Its trace of the LSI's reset says it is past
# that point.
RESET_TRACE_EVENT = 'lsi_reset'
STARTED_POLL_S = 0.001
MARKER = ((pci.VENDOR_ID, 2, 0x1000), (pci.DEVICE_ID, 2, 0x0012))
DEFAULT_CORPUS_DIR = os.path.join(paths.REPO_DIR, 'tests', 'fuzz', 'corpus')

OUTCOME_ANSWERED = 'answered'
OUTCOME_EXITED = 'exited'
OUTCOME_STALLED = 'stalled'
OUTCOME_CRASH = 'crash'
OUTCOME_HANG = 'hang'
FINDINGS = (OUTCOME_CRASH, OUTCOME_HANG)


class FuzzError(Exception):
    """The fuzzer itself went wrong (not the remote)."""


# ---------------------------------------------------------------- cases

@dataclass
class Step:
    """One message (or fragment) written with one ``sendmsg``."""
    data: bytes
    fds: Tuple[int, ...] = ()          # indices into Case.fds
    note: str = ''
    reply: bool = False                # answered if the remote accepts it
    barrier: bool = False              # collect all replies owed before sending
    truncate: Optional[Tuple[int, int]] = None   # (fd index, size) before sending

    def to_json(self) -> dict:
        out = {'hex': self.data.hex(), 'note': self.note}
        for name in ('fds', 'reply', 'barrier', 'truncate'):
            value = getattr(self, name)
            if value:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_json(cls, d: dict) -> 'Step':
        return cls(bytes.fromhex(d['hex']), tuple(d.get('fds', ())), d.get('note', ''),
                   d.get('reply', False), d.get('barrier', False),
                   tuple(d['truncate']) if d.get('truncate') else None)


@dataclass
class Case:
    seed: int
    index: int
    families: List[str] = field(default_factory=list)
    fds: List[str] = field(default_factory=list)     # fd kinds, see open_fd()
    steps: List[Step] = field(default_factory=list)
    hangup: bool = False       # shut our write side after the steps
    fresh: bool = False        # on a just-started remote, before any setup
    may_stall: bool = False    # may leave the stream mid-message
    touches: List[str] = field(default_factory=list)   # what restore() must redo

    @property
    def messages(self) -> int:
        return sum(1 for s in self.steps if s.data)

    def notes(self) -> str:
        return ' | '.join(s.note for s in self.steps)

    def to_json(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != 'steps'}
        d['steps'] = [s.to_json() for s in self.steps]
        return d

    @classmethod
    def from_json(cls, d: dict) -> 'Case':
        case = cls(d['seed'], d['index'], list(d.get('families', [])), list(d.get('fds', [])),
                   [Step.from_json(s) for s in d['steps']], d.get('hangup', False),
                   d.get('fresh', False), d.get('may_stall', False), list(d.get('touches', [])))
        return case


FD_WRONG_KINDS = ('eventfd', 'pipe-read', 'pipe-write', 'dev-null', 'dev-zero', 'socket',
                  'directory', 'regular-file', 'memfd-empty')
FD_KINDS = ('memfd:8192',) + FD_WRONG_KINDS


def open_fd(kind: str, workdir: str, ram_fd: int = -1) -> Tuple[int, List[int]]:
    """Open an fd of ``kind``; returns it and every fd to close afterwards.
    ``guest-ram`` is the harness's own guest RAM memfd (``ram_fd``)."""
    if kind == 'guest-ram':
        fd = os.dup(ram_fd)
        return fd, [fd]
    if kind.startswith('memfd:'):
        fd = os.memfd_create('fuzz', os.MFD_CLOEXEC)
        os.ftruncate(fd, int(kind.split(':', 1)[1]))
        return fd, [fd]
    if kind == 'memfd-empty':
        fd = os.memfd_create('fuzz-empty', os.MFD_CLOEXEC)
        return fd, [fd]
    if kind == 'eventfd':
        fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        return fd, [fd]
    if kind in ('pipe-read', 'pipe-write'):
        r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        return (r if kind == 'pipe-read' else w), [r, w]
    if kind == 'dev-null':
        fd = os.open('/dev/null', os.O_RDWR | os.O_CLOEXEC)
        return fd, [fd]
    if kind == 'dev-zero':
        fd = os.open('/dev/zero', os.O_RDWR | os.O_CLOEXEC)
        return fd, [fd]
    if kind == 'socket':
        a, b = socket.socketpair()
        fds = [a.detach(), b.detach()]
        return fds[0], fds
    if kind == 'directory':
        fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return fd, [fd]
    if kind == 'regular-file':
        fd, path = tempfile.mkstemp(dir=workdir, prefix='fuzz-file-')
        os.unlink(path)
        os.ftruncate(fd, 8192)
        return fd, [fd]
    raise FuzzError(f"unknown fd kind {kind!r}")


@dataclass(frozen=True)
class Layout:
    """Where the harness's setup puts RAM and the LSI's BARs."""
    ram_gpa: int
    ram_bytes: int
    bars: Tuple[Tuple[int, bool, int, int], ...]   # (index, io, address, size)


class _Builder:
    def __init__(self, case: Case, rng: random.Random, layout: Layout):
        self.case, self.rng, self.layout = case, rng, layout

    def fd(self, kind: str) -> int:
        self.case.fds.append(kind)
        return len(self.case.fds) - 1

    def step(self, data: bytes, note: str, fds: Sequence[int] = (), reply: bool = False,
             **kw) -> None:
        self.case.steps.append(Step(data, tuple(fds), note, reply, **kw))

    def touch(self, what: str) -> None:
        if what not in self.case.touches:
            self.case.touches.append(what)

    def u32(self) -> int:
        return self.rng.getrandbits(32)

    def u64(self) -> int:
        return self.rng.choice([0, 1, 0xff, 0xffff_ffff, p.UINT64_MAX, self.rng.getrandbits(64)])


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
            b.step(_bar(p.Cmd.BAR_WRITE, MMIO_BASE + lsi.SCRATCHA, 1, 4, True),
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
ENDING_PROBABILITY = 0.2
OUT_OF_ORDER_PROBABILITY = 0.02
MAX_SURVIVABLE_PARTS = 8


def generate(seed: int, index: int, layout: Layout) -> Case:
    """Case ``index`` of run ``seed``: depends on nothing else."""
    rng = random.Random(f'mpqemu-fuzz/{seed}/{index}')
    case = Case(seed, index)
    b = _Builder(case, rng, layout)
    families = []
    if rng.random() < OUT_OF_ORDER_PROBABILITY:
        families.append(fam_out_of_order)
    parts = rng.randint(1, MAX_SURVIVABLE_PARTS)
    families += rng.choices([f for f, _ in SURVIVABLE], [w for _, w in SURVIVABLE], k=parts)
    if rng.random() < ENDING_PROBABILITY:
        families += rng.choices([f for f, _ in ENDING], [w for _, w in ENDING])
    for family in families:
        family(b)
        case.families.append(family.__name__[4:].replace('_', '-'))
    return case


# ---------------------------------------------------------------- remotes


def log_tail(process: QEMUProcess) -> str:
    """The last lines of a remote's log, without our reset trace lines."""
    lines = [line for line in process.log_tail(LOG_TAIL_LINES * 50).splitlines()
             if not line.startswith(RESET_TRACE_EVENT)]
    return '\n'.join(lines[-LOG_TAIL_LINES:])


class FuzzRemote:
    """One remote process under fuzz: its process, its socket, and a fake
    proxy on that socket for setup and restore."""

    def __init__(self, process: QEMUProcess, sock: socket.socket):
        self.process = process
        self.proxy = p.FakeProxy(sock, timeout_s=FOLLOWUP_TIMEOUT_S)
        self.link = self.proxy.link
        self.started = False
        self.ready = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_started(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Wait until the remote is past its machine reset (see
        RESET_TRACE_EVENT): messages before it would be undone."""
        if self.started:
            return
        deadline = time.monotonic() + timeout_s
        while not self.process.count_log_lines(RESET_TRACE_EVENT):
            if not self.process.is_running():
                raise p.RemoteGone(f"the remote exited while starting (status "
                                   f"{self.process.exitcode}): {self.process.log_tail()}")
            if time.monotonic() > deadline:
                raise p.RemoteTimeout(f"the remote did not reach its machine reset within "
                                      f"{timeout_s} s; see {self.process.log_path}")
            time.sleep(STARTED_POLL_S)      # polling a file for a condition, with a deadline
        self.started = True

    def setup(self, memory: GuestMemory) -> None:
        """What a proxy does at start: memory table, irqfd, BARs."""
        self.wait_started()
        self.restore(memory, ('sysmem', 'irqfd', 'config'))
        self.ready = True

    def restore(self, memory: GuestMemory, touches: Sequence[str]) -> None:
        self.proxy.device_reset()
        memory.regions[0].fill(RAM_GPA, RAM_BYTES)
        if 'sysmem' in touches:
            self.proxy.sync_sysmem(memory.sysmem_table(), barrier=False)
        if 'irqfd' in touches:
            self.proxy.set_irqfd(barrier=False)
        if 'config' in touches:
            function = pci.PciFunction(self.proxy_access(memory))
            function.setup(IO_BASE, MMIO_BASE)

    def proxy_access(self, memory: GuestMemory) -> p.FakeProxyAccess:
        return p.FakeProxyAccess(self.proxy, memory)

    def layout(self, memory: GuestMemory) -> Layout:
        bars = pci.PciFunction(self.proxy_access(memory)).setup(IO_BASE, MMIO_BASE)
        return Layout(RAM_GPA, RAM_BYTES, tuple((bar.index, bar.io, bar.address, bar.size)
                                                for bar in bars))

    def close(self) -> None:
        try:
            self.proxy.close()
        finally:
            if self.process.is_running():
                self.process.kill()
            self.process.shutdown()


class RemotePool:
    """Starts remotes without QMP (a fork and exec) and keeps one spare
    starting in the background, so that replacing a dead remote costs
    little more than its setup."""

    def __init__(self, caps: Capabilities, logdir: str, keep_logs: bool = False):
        self.caps = caps
        self.logdir = logdir
        self.keep_logs = keep_logs
        self.launched = 0
        self._spare: Optional[FuzzRemote] = None
        os.makedirs(logdir, exist_ok=True)

    def _launch(self) -> FuzzRemote:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.launched += 1
        try:
            remote = Remote('lsi1', args=['-trace', RESET_TRACE_EVENT],
                            name=f'remote-{self.launched}')
            process = remote.start(self.caps, self.logdir, theirs, qmp=False)
        except BaseException:
            ours.close()
            raise
        return FuzzRemote(process, ours)

    def take(self) -> FuzzRemote:
        remote = self._spare or self._launch()
        self._spare = None
        try:
            self._spare = self._launch()
        except BaseException:
            self.retire(remote)
            raise
        return remote

    def retire(self, remote: FuzzRemote) -> str:
        """Stop ``remote``; returns its log tail and removes its files."""
        remote.close()
        tail = log_tail(remote.process)
        if not self.keep_logs:
            for path in (remote.process.log_path,
                         os.path.join(self.logdir, f'{remote.process.name}.cmdline')):
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
        return tail

    def close(self) -> None:
        if self._spare:
            self.retire(self._spare)
            self._spare = None


# ---------------------------------------------------------------- running a case

@dataclass
class Result:
    outcome: str
    detail: str = ''                 # why, in words
    exit_status: Optional[int] = None
    signal: str = ''
    log: str = ''                    # the remote's last log line(s) where it ended
    replies: int = 0
    elapsed_s: float = 0.0
    remote_state: str = ''

    @property
    def is_finding(self) -> bool:
        return self.outcome in FINDINGS

    def match_keys(self, case: Case) -> Dict[str, str]:
        return {'outcome': self.outcome, 'signal': self.signal, 'log': self.log,
                'notes': case.notes()}


def _signal_name(status: int) -> str:
    try:
        return signal.Signals(-status).name
    except ValueError:
        return f'signal {-status}'


def _normalize_log(line: str) -> str:
    """A log line with its numbers (pids, addresses, sizes) replaced by N."""
    return re.sub(r'\b(?:0x)?[0-9a-fA-F]*[0-9][0-9a-fA-F]*\b', 'N', line).strip()


class CaseRunner:
    """Sends cases to remotes and classifies what happens."""

    def __init__(self, pool: RemotePool, memory: GuestMemory, workdir: str):
        self.pool = pool
        self.memory = memory
        self.workdir = workdir
        self.remote: Optional[FuzzRemote] = None
        self.wire_messages = 0

    def current(self, setup: bool = True) -> FuzzRemote:
        if self.remote is None:
            self.remote = self.pool.take()
        self.remote.wait_started()
        if setup and not self.remote.ready:
            self.remote.setup(self.memory)
        return self.remote

    def end_remote(self) -> str:
        tail = ''
        if self.remote is not None:
            self.wire_messages += self.remote.proxy.requests
            tail = self.pool.retire(self.remote)
            self.remote = None
        return tail

    def run(self, case: Case) -> Result:
        started = time.monotonic()
        if case.fresh and self.remote is not None and self.remote.ready:
            self.end_remote()
        remote = self.current(setup=not case.fresh)
        opened: List[int] = []
        try:
            fds = []
            for kind in case.fds:
                fd, to_close = open_fd(kind, self.workdir, self.memory.regions[0].fd)
                fds.append(fd)
                opened += to_close
            result = self._run(remote, case, fds)
        finally:
            p.close_fds(opened)
        if result.outcome == OUTCOME_ANSWERED:
            try:
                if not remote.ready:
                    remote.setup(self.memory)
                else:
                    remote.restore(self.memory, case.touches)
            except p.RemoteGone as err:
                result = self._ended(remote, err, f'while restoring after the case: {err}')
            except p.RemoteError as err:
                result = self._silent(remote, case, err, marker=False)
        if result.outcome != OUTCOME_ANSWERED:
            result.log = self.end_remote() or result.log
        result.elapsed_s = time.monotonic() - started
        return result

    def _run(self, remote: FuzzRemote, case: Case, fds: List[int]) -> Result:
        link = remote.link
        owed = 0
        replies = 0
        try:
            for step in case.steps:
                if step.barrier:
                    for _ in range(owed):
                        link.recv(FOLLOWUP_TIMEOUT_S)
                    replies += owed
                    owed = 0
                if step.truncate:
                    os.ftruncate(fds[step.truncate[0]], step.truncate[1])
                if step.data:
                    link.send_raw(step.data, [fds[i] for i in step.fds], FOLLOWUP_TIMEOUT_S)
                    self.wire_messages += 1
                owed += step.reply
            if case.hangup:
                link.sock.shutdown(socket.SHUT_WR)
                return self._after_hangup(remote)
            for offset, size, _ in MARKER:
                link.send(p.pci_cfg_read(offset, size), FOLLOWUP_TIMEOUT_S)
                self.wire_messages += 1
            timeout = STALL_TIMEOUT_S if case.may_stall else FOLLOWUP_TIMEOUT_S
            got = self._await_marker(link, timeout)
            return Result(OUTCOME_ANSWERED, f'{got - len(MARKER)} replies before the follow-up',
                          replies=replies + got)
        except p.RemoteGone as err:
            return self._ended(remote, err, str(err))
        except p.RemoteTimeout as err:
            return self._silent(remote, case, err)
        except p.ProtocolError as err:
            # The remote only ever sends RET: anything else is its bug.
            return Result(OUTCOME_HANG if remote.process.is_running() else OUTCOME_CRASH,
                          f'malformed reply: {err}')

    def _await_marker(self, link: p.Link, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        values: List[Optional[int]] = []
        want = [v for _, _, v in MARKER]
        while values[-len(want):] != want:
            reply = link.recv(max(0.0, deadline - time.monotonic()))
            values.append(p.decode_ret(reply))
        return len(values)

    def _after_hangup(self, remote: FuzzRemote) -> Result:
        if remote.process.wait_exit(EXIT_TIMEOUT_S):
            return self._exit_result(remote, 'hung up mid-message')
        return Result(OUTCOME_HANG, f'still running {EXIT_TIMEOUT_S} s after the proxy hung up',
                      remote_state=self._state(remote))

    def _ended(self, remote: FuzzRemote, err: Exception, detail: str) -> Result:
        if remote.process.wait_exit(EXIT_TIMEOUT_S):
            return self._exit_result(remote, detail)
        return Result(OUTCOME_HANG, f'socket closed but the process still runs after '
                      f'{EXIT_TIMEOUT_S} s ({err})', remote_state=self._state(remote))

    def _exit_result(self, remote: FuzzRemote, detail: str) -> Result:
        status = remote.process.exitcode
        log = log_tail(remote.process)
        if status < 0:
            return Result(OUTCOME_CRASH, detail, status, _signal_name(status), log)
        return Result(OUTCOME_EXITED, detail, status, '', log)

    def _silent(self, remote: FuzzRemote, case: Case, err: Exception,
                marker: bool = True) -> Result:
        """No answer in time: exited meanwhile, busy, or blocked?  With
        ``marker`` the follow-up is still owed, else any late reply will do
        (the link is then out of step and the remote is replaced anyway)."""
        pid = remote.pid
        if not remote.process.is_running():
            return self._exit_result(remote, f'exited without closing first ({err})')
        before = procfs.cpu_seconds(pid)
        time.sleep(BUSY_SAMPLE_S)       # a measurement window, not a settle delay
        after = procfs.cpu_seconds(pid)
        if before is None or after is None or not remote.process.is_running():
            return self._exit_result(remote, f'exited while silent ({err})')
        busy = (after - before) / BUSY_SAMPLE_S
        state = self._state(remote)
        if busy < BUSY_FRACTION and case.may_stall:
            return Result(OUTCOME_STALLED, 'idle, waiting for the rest of a misframed message',
                          remote_state=state)
        how = 'busy' if busy >= BUSY_FRACTION else 'idle'
        confirm = BUSY_CONFIRM_S if how == 'busy' else HANG_CONFIRM_S
        try:
            if marker:
                self._await_marker(remote.link, confirm)
                return Result(OUTCOME_ANSWERED, f'answered late ({how}; overloaded host?)')
            remote.link.recv(confirm)
            result = Result(OUTCOME_ANSWERED, f'restore answered late ({how}; overloaded host?)')
            self.end_remote()
            return result
        except p.RemoteGone as gone:
            return self._ended(remote, gone, str(gone))
        except p.RemoteTimeout:
            waited = FOLLOWUP_TIMEOUT_S + BUSY_SAMPLE_S + confirm
            return Result(OUTCOME_HANG, f'no answer for {waited:.1f} s and {how} '
                          f'({busy:.0%} CPU): ' + ('a loop' if how == 'busy' else 'blocked'),
                          remote_state=self._state(remote))

    @staticmethod
    def _state(remote: FuzzRemote) -> str:
        pid = remote.pid
        return (f'state={procfs.state(pid) or "?"} wchan={procfs.read(pid, "wchan")} '
                f'syscall={procfs.read(pid, "syscall").split(" ")[0]}')


# ---------------------------------------------------------------- a fuzzing run

@dataclass
class Finding:
    case: Case
    result: Result
    signature: str
    known_issue: Optional[str] = None
    reproduced: Optional[bool] = None
    minimized: Optional[Case] = None
    occurrences: int = 1
    qemu: str = ''

    def to_json(self) -> dict:
        return {
            'signature': self.signature, 'qemu': self.qemu,
            'outcome': self.result.outcome, 'signal': self.result.signal,
            'exit_status': self.result.exit_status, 'detail': self.result.detail,
            'remote_state': self.result.remote_state, 'log_tail': self.result.log,
            'known_issue': self.known_issue, 'reproduced': self.reproduced,
            'occurrences': self.occurrences,
            'reproduce': f'python -m harness.mpqemu.fuzz --replay FILE  '
                         f'(or --seed {self.case.seed} --case {self.case.index})',
            'case': self.case.to_json(),
            'minimized': self.minimized.to_json() if self.minimized else None,
        }


def signature(result: Result, known_issue: Optional[str]) -> str:
    """What makes two findings the same: the known issue they are, else
    outcome, signal and the remote's last words."""
    if known_issue:
        return f'{result.outcome}:{result.signal}:{known_issue}'
    last = _normalize_log(result.log.splitlines()[-1]) if result.log.strip() else ''
    how = ' busy' if 'busy' in result.detail else ''
    return f'{result.outcome}{how}:{result.signal or result.exit_status}:{last}'


@dataclass
class Summary:
    seed: int
    qemu: str
    cases: int = 0
    messages: int = 0
    wire_messages: int = 0
    remotes_started: int = 0
    elapsed_s: float = 0.0
    outcomes: Dict[str, int] = field(default_factory=dict)
    exit_reasons: Dict[str, int] = field(default_factory=dict)
    harness_hangs: int = 0
    slowest_case_s: float = 0.0
    findings: List[dict] = field(default_factory=list)

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def unknown_findings(self) -> List[dict]:
        return [f for f in self.findings if not f['known_issue']]

    def to_json(self) -> dict:
        d = asdict(self)
        d['messages_per_s'] = round(self.messages_per_s, 1)
        return d


class Fuzzer:
    """One fuzzing run against one QEMU binary."""

    def __init__(self, caps: Capabilities, out_dir: str, seed: int,
                 issues: Optional[List[known_issues.KnownIssue]] = None,
                 log: Callable[[str], None] = print):
        self.caps = caps
        self.out_dir = out_dir
        self.seed = seed
        self.issues = known_issues.load() if issues is None else issues
        self.log = log
        self.workdir = tempfile.mkdtemp(prefix='fuzz-', dir=out_dir)
        self.memory = GuestMemory()
        self.memory.add_region(RAM_GPA, RAM_BYTES, 'fuzz-ram')
        self.pool = RemotePool(caps, os.path.join(self.workdir, 'remotes'))
        self.runner = CaseRunner(self.pool, self.memory, self.workdir)
        self.layout: Optional[Layout] = None
        self.findings: Dict[str, Finding] = {}
        self.saved: collections.Counter = collections.Counter()
        self.qemu = '.'.join(map(str, caps.version))

    def __enter__(self) -> 'Fuzzer':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.runner.end_remote()
            self.pool.close()
        finally:
            self.memory.close()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def get_layout(self) -> Layout:
        if self.layout is None:
            remote = self.runner.current(setup=False)
            remote.restore(self.memory, ('sysmem', 'irqfd'))
            self.layout = remote.layout(self.memory)
            remote.ready = True
        return self.layout

    def case(self, index: int) -> Case:
        return generate(self.seed, index, self.get_layout())

    def run(self, messages: int, time_limit_s: Optional[float] = None,
            first_index: int = 0) -> Summary:
        summary = Summary(self.seed, self.qemu)
        outcomes: collections.Counter = collections.Counter()
        exits: collections.Counter = collections.Counter()
        started = time.monotonic()
        index = first_index
        watchdog = _Watchdog()
        try:
            self.get_layout()
            while summary.messages < messages:
                if time_limit_s is not None and time.monotonic() - started > time_limit_s:
                    self.log(f'time limit {time_limit_s} s reached after {summary.messages} '
                             f'messages')
                    break
                watchdog.arm()
                case = self.case(index)
                result = self.runner.run(case)
                summary.cases += 1
                summary.messages += case.messages
                outcomes[result.outcome] += 1
                summary.slowest_case_s = max(summary.slowest_case_s, result.elapsed_s)
                if result.elapsed_s > CASE_DEADLINE_S:
                    summary.harness_hangs += 1
                    self.log(f'HARNESS HANG: case {index} took {result.elapsed_s:.1f} s')
                if result.outcome == OUTCOME_EXITED:
                    lines = result.log.strip().splitlines()
                    exits[_normalize_log(lines[-1]) if lines else '(no log line)'] += 1
                if result.is_finding:
                    self.record_finding(case, result)
                index += 1
        finally:
            watchdog.disarm()
        summary.elapsed_s = time.monotonic() - started
        summary.wire_messages = self.runner.wire_messages
        summary.remotes_started = self.pool.launched
        summary.outcomes = dict(outcomes)
        summary.exit_reasons = dict(exits.most_common())
        summary.findings = [self._summary_entry(f) for f in self.findings.values()]
        return summary

    @staticmethod
    def _summary_entry(f: Finding) -> dict:
        return {'signature': f.signature, 'outcome': f.result.outcome, 'signal': f.result.signal,
                'occurrences': f.occurrences, 'known_issue': f.known_issue,
                'reproduced': f.reproduced, 'first_case': [f.case.seed, f.case.index],
                'log': f.result.log.strip().splitlines()[-1] if f.result.log.strip() else ''}

    def record_finding(self, case: Case, result: Result) -> Finding:
        issue = known_issues.lookup(self.issues, result.match_keys(case), self.caps.version)
        sig = signature(result, issue.id if issue else None)
        if sig in self.findings:
            finding = self.findings[sig]
            finding.occurrences += 1
        else:
            finding = Finding(case, result, sig, issue.id if issue else None, qemu=self.qemu)
            self.findings[sig] = finding
            replay = self.replay(case)
            finding.reproduced = _same(replay, result)
            if finding.reproduced and not issue:
                # Known issues have their reproducer in tests/fuzz/corpus.
                finding.minimized = self.minimize(case, result)
            self.log(f'{result.outcome.upper()} {result.signal or ""} case {case.index} '
                     f'({",".join(case.families)}): {result.detail}; '
                     f'known issue: {finding.known_issue or "NO"}; '
                     f'reproduced alone: {finding.reproduced}')
        if self.saved[sig] < SAVED_PER_SIGNATURE:
            self.saved[sig] += 1
            self.save(Finding(case, result, sig, finding.known_issue, finding.reproduced,
                              finding.minimized if self.saved[sig] == 1 else None,
                              qemu=self.qemu))
        return finding

    def save(self, finding: Finding) -> str:
        directory = os.path.join(self.out_dir, 'findings')
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f'{finding.result.outcome}-seed{finding.case.seed}-'
                                       f'case{finding.case.index}.json')
        with open(path, 'w', encoding='utf-8') as f:
            json.dump(finding.to_json(), f, indent=1)
            f.write('\n')
        return path

    def replay(self, case: Case) -> Result:
        """Run ``case`` alone on a fresh remote."""
        self.runner.end_remote()
        result = self.runner.run(case)
        self.runner.end_remote()
        return result

    def minimize(self, case: Case, result: Result) -> Case:
        """Drop steps one at a time while the same outcome still follows."""
        best = case
        replays = 0
        i = 0
        while i < len(best.steps) and replays < MINIMIZE_MAX_REPLAYS:
            trial = Case.from_json(best.to_json())
            del trial.steps[i]
            if not trial.steps:
                break
            replays += 1
            if _same(self.replay(trial), result):
                best = trial
            else:
                i += 1
        best.fds = list(best.fds)
        return best


class _Watchdog:
    """A hard stop for a harness that hangs despite every deadline: after
    WATCHDOG_S without re-arming, dump all stacks and exit (the remotes die
    with us, PR_SET_PDEATHSIG).  Off where stderr has no file descriptor."""

    def __init__(self) -> None:
        self.stream = sys.__stderr__
        try:
            self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            self.stream = None

    def arm(self) -> None:
        if self.stream:
            faulthandler.dump_traceback_later(WATCHDOG_S, repeat=False, file=self.stream,
                                              exit=True)

    def disarm(self) -> None:
        if self.stream:
            faulthandler.cancel_dump_traceback_later()


def _same(a: Result, b: Result) -> bool:
    return (a.outcome, a.signal) == (b.outcome, b.signal)


# ---------------------------------------------------------------- corpus

@dataclass
class ReplayOutcome:
    path: str
    expected: str             # outcome:signal recorded in the corpus entry
    got: Result
    known_issue: Optional[str]

    @property
    def same(self) -> bool:
        return f'{self.got.outcome}:{self.got.signal}' == self.expected


def corpus_files(directory: str = DEFAULT_CORPUS_DIR) -> List[str]:
    if not os.path.isdir(directory):
        return []
    return sorted(os.path.join(directory, n) for n in os.listdir(directory)
                  if n.endswith('.json'))


def load_reproducer(path: str) -> Tuple[Case, dict]:
    with open(path, encoding='utf-8') as f:
        data = json.load(f)
    return Case.from_json(data.get('minimized') or data['case']), data


CORPUS_ATTEMPTS = 3     # some findings depend on timing (the busy-loop hang does)


def replay_corpus(fuzzer: Fuzzer, paths: Sequence[str]) -> List[ReplayOutcome]:
    """Replay reproducers on fresh remotes, each up to CORPUS_ATTEMPTS
    times until it shows its recorded outcome."""
    outcomes = []
    for path in paths:
        case, data = load_reproducer(path)
        fuzzer.get_layout()
        for _ in range(CORPUS_ATTEMPTS):
            result = fuzzer.replay(case)
            if (result.outcome, result.signal) == (data['outcome'], data.get('signal') or ''):
                break
        issue = known_issues.lookup(fuzzer.issues, result.match_keys(case), fuzzer.caps.version)
        outcomes.append(ReplayOutcome(path, f"{data['outcome']}:{data.get('signal') or ''}",
                                      result, issue.id if issue else None))
    return outcomes


# ---------------------------------------------------------------- CLI

def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog='python -m harness.mpqemu.fuzz',
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--messages', type=int, default=10000,
                        help='fuzz messages to send (the run ends at the case that passes it)')
    parser.add_argument('--out', default=os.path.join('build', 'fuzz'),
                        help='where summary.json and findings/*.json go')
    parser.add_argument('--qemu-bin', default=None,
                        help='QEMU under test (default: $QEMU_BIN or qemu-system-x86_64)')
    parser.add_argument('--time-limit', type=float, default=None, metavar='S',
                        help='stop after S seconds even if fewer messages were sent')
    parser.add_argument('--case', type=int, action='append', default=[], metavar='INDEX',
                        help='replay case INDEX of --seed alone (repeatable) instead of a run')
    parser.add_argument('--replay', action='append', default=[], metavar='FILE',
                        help='replay a finding or corpus JSON file (repeatable)')
    parser.add_argument('--show', type=int, metavar='INDEX',
                        help='print case INDEX of --seed as JSON and exit')
    args = parser.parse_args(list(argv) or None)
    caps = qemu_binary.probe(args.qemu_bin or params.get('qemu_bin'))
    caps.require_multiprocess()
    os.makedirs(args.out, exist_ok=True)
    with Fuzzer(caps, args.out, args.seed) as fuzzer:
        if args.show is not None:
            print(json.dumps(fuzzer.case(args.show).to_json(), indent=1))
            return 0
        if args.case or args.replay:
            for index in args.case:
                result = fuzzer.replay(fuzzer.case(index))
                print(f'case {index}: {result.outcome} {result.signal} {result.detail} '
                      f'| {result.log.strip().splitlines()[-1:] }')
            for outcome in replay_corpus(fuzzer, args.replay):
                print(f'{outcome.path}: expected {outcome.expected}, got {outcome.got.outcome}:'
                      f'{outcome.got.signal} (known issue: {outcome.known_issue})')
            return 0
        summary = fuzzer.run(args.messages, args.time_limit)
    path = os.path.join(args.out, 'summary.json')
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(summary.to_json(), f, indent=1)
        f.write('\n')
    print(format_summary(summary))
    print(f'written: {path}' + (f', {os.path.join(args.out, "findings")}/'
                                if summary.findings else ''))
    return 1 if summary.unknown_findings or summary.harness_hangs else 0


def format_summary(summary: Summary) -> str:
    lines = [f'seed {summary.seed}, QEMU {summary.qemu}: {summary.messages} messages in '
             f'{summary.cases} cases, {summary.elapsed_s:.1f} s, '
             f'{summary.messages_per_s:.0f} messages/s, {summary.remotes_started} remotes started',
             f'outcomes: {summary.outcomes}', f'harness hangs: {summary.harness_hangs} '
             f'(slowest case {summary.slowest_case_s:.2f} s)', 'exit reasons:']
    lines += [f'  {count:6d}  {reason}' for reason, count in summary.exit_reasons.items()]
    lines.append(f'findings: {len(summary.findings)} distinct')
    for f in summary.findings:
        lines.append(f"  {f['occurrences']:6d}x {f['outcome']} {f['signal']} "
                     f"known={f['known_issue'] or 'NO'} reproduced={f['reproduced']} "
                     f"first={f['first_case']} | {f['log']}")
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
