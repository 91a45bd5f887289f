"""What a fuzz case is: protocol messages with their fds, as data.

A :class:`Case` is a list of :class:`Step` (the bytes of one ``sendmsg``
and which of the case's fds go with it) plus what the harness must do
around them (hang up, start on a fresh remote, restore afterwards).  Fds
are recorded by kind (:data:`FD_KINDS`) and opened only when the case
runs (:func:`open_fd`), so a case round-trips through JSON unchanged:
that is what findings and the corpus store.
"""

import os
import socket
import tempfile
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple

from ..devices import pci

# The harness's guest RAM for every remote, and where setup puts the BARs.
RAM_GPA = 0
RAM_BYTES = 64 << 10
IO_BASE = pci.DEFAULT_IO_BASE
MMIO_BASE = pci.DEFAULT_MMIO_BASE


class FuzzError(Exception):
    """The fuzzer itself went wrong (not the remote)."""


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
    """Case ``index`` of run ``seed``: what to send, and what to do around it."""
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
        return cls(d['seed'], d['index'], list(d.get('families', [])), list(d.get('fds', [])),
                   [Step.from_json(s) for s in d['steps']], d.get('hangup', False),
                   d.get('fresh', False), d.get('may_stall', False), list(d.get('touches', [])))


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
