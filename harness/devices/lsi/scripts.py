"""A small assembler for SCRIPTS, the LSI 53C895A's own instruction set.

The chip fetches SCRIPTS by DMA from guest memory (or its SCRIPTS RAM) and
runs them until an INT instruction or an error stops it.  The programs the
harness writes stop with one of the INT vectors below, so a stop says by
its DSPS where it came from; :class:`Stop` is the interrupt registers read
at a stop, and what they mean.
"""

import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

from .registers import (DSTAT_ABRT, DSTAT_IID, DSTAT_SIR, SIST0_MA, SIST0_RST,
                        SIST0_UDC)

MAX_BLOCK_MOVE_BYTES = (1 << 24) - 1    # one block move: 24-bit DBC

# Our INT vectors (land in DSPS), so a stop is identified by where it came from.
INT_DONE = 0x0000d0e0
INT_BAD_PHASE = 0x0000bad0
INT_RESELECT_ABORTED = 0x0000bad1
INT_ALREADY_CONNECTED = 0x0000bad2


@dataclass(frozen=True)
class _Ref:
    label: str
    add: int = 0


Word = Union[int, _Ref]


class Script:
    """A SCRIPTS program; addresses may name labels, resolved by
    :meth:`assemble` against the address the program is loaded at.

    Encodings follow lsi_execute_script() in hw/scsi/lsi53c895a.c (and
    the 53C895A manual's instruction set chapter).
    """

    def __init__(self) -> None:
        self.words: List[Word] = []
        self.labels: Dict[str, int] = {}

    def __len__(self) -> int:
        return 4 * len(self.words)

    def label(self, name: str) -> 'Script':
        if name in self.labels:
            raise ValueError(f"SCRIPTS label {name!r} defined twice")
        self.labels[name] = len(self)
        return self

    def _emit(self, *words: Word) -> 'Script':
        self.words.extend(words)
        return self

    # -- block move (type 0)
    def move(self, phase: int, count: int, addr: Word) -> 'Script':
        """MOVE count, addr, WHEN phase (fails with SIST0.MA on mismatch)."""
        if not 0 <= count <= MAX_BLOCK_MOVE_BYTES:
            raise ValueError(f"block move of {count} bytes: DBC has 24 bits")
        return self._emit((1 << 27) | (phase & 7) << 24 | count, addr)

    # -- I/O (type 1)
    def select(self, target: int, alt: Word = 0) -> 'Script':
        """SELECT target; jump to ``alt`` if already (re)selected."""
        return self._emit(1 << 30 | 0 << 27 | (target & 0xf) << 16, alt)

    def wait_reselect(self, alt: Word) -> 'Script':
        """WAIT RESELECT; jump to ``alt`` if ISTAT0.SIGP is set."""
        return self._emit(1 << 30 | 2 << 27, alt)

    def load_register(self, register: int, value: int) -> 'Script':
        """MOVE value TO register (read-modify-write, operator MOVE)."""
        return self._emit(1 << 30 | 7 << 27 | (register & 0x7f) << 16 | (register & 0x80)
                          | (value & 0xff) << 8, 0)

    # -- transfer control (type 2)
    def _transfer(self, opcode: int, target: Word, when: Optional[int] = None,
                  if_not: bool = False) -> 'Script':
        insn = 2 << 30 | opcode << 27
        if not if_not:
            insn |= 1 << 19                           # "jump if true"
        if when is not None:
            insn |= (when & 7) << 24 | 1 << 17        # compare phase
        if insn & 0x002e0000 == 0:
            raise ValueError("a transfer control without any condition is a NOP in QEMU")
        return self._emit(insn, target)

    def jump(self, target: Word, when: Optional[int] = None, if_not: bool = False) -> 'Script':
        return self._transfer(0, target, when, if_not)

    def int_(self, vector: int) -> 'Script':
        """INT vector: stop with DSTAT.SIR, DSPS = vector."""
        return self._transfer(3, vector)

    # -- memory move (type 3)
    def memory_move(self, count: int, src: Word, dst: Word) -> 'Script':
        if not 0 <= count <= MAX_BLOCK_MOVE_BYTES:
            raise ValueError(f"memory move of {count} bytes: the count has 24 bits")
        return self._emit(3 << 30 | count, src, dst)

    def ref(self, label: str, add: int = 0) -> _Ref:
        return _Ref(label, add)

    def assemble(self, base: int) -> bytes:
        """Little-endian dwords with labels resolved for loading at ``base``."""
        out = []
        for word in self.words:
            if isinstance(word, _Ref):
                if word.label not in self.labels:
                    raise ValueError(f"SCRIPTS label {word.label!r} is not defined")
                word = base + self.labels[word.label] + word.add
            out.append(word & 0xffffffff)
        return struct.pack(f'<{len(out)}I', *out)


# ---------------------------------------------------------------- stops

@dataclass
class Stop:
    """Why SCRIPTS stopped: the interrupt registers, read (and so
    cleared) once ISTAT0 showed DIP or SIP."""
    istat0: int
    dstat: int
    sist0: int
    sist1: int
    dsps: int
    dsp: int
    by_irq: bool
    elapsed_s: float

    @property
    def done(self) -> bool:
        return self.dstat == DSTAT_SIR and not (self.sist0 or self.sist1) and \
            self.dsps == INT_DONE

    def __str__(self) -> str:
        return (f"ISTAT0={self.istat0:#04x} DSTAT={self.dstat:#04x} SIST0={self.sist0:#04x} "
                f"SIST1={self.sist1:#04x} DSPS={self.dsps:#x} DSP={self.dsp:#x}")

    def explain(self) -> str:
        """What the stop means, in words."""
        reasons = []
        if self.dsps == INT_BAD_PHASE and self.dstat & DSTAT_SIR:
            reasons.append('the target went to a phase the script did not expect')
        if self.dsps == INT_RESELECT_ABORTED:
            reasons.append('WAIT RESELECT was aborted by ISTAT0.SIGP')
        if self.dsps == INT_ALREADY_CONNECTED:
            reasons.append('SELECT found the chip already connected: reset it')
        if self.dstat & DSTAT_IID:
            reasons.append('illegal instruction (bad script address? is bus mastering on?)')
        if self.dstat & DSTAT_ABRT:
            reasons.append('aborted through ISTAT0.ABRT')
        if self.sist0 & SIST0_MA:
            reasons.append('phase mismatch: a short transfer or the command failed mid-way')
        if self.sist0 & SIST0_UDC:
            reasons.append("unexpected disconnect (QEMU's 10000-instruction loop guard)")
        if self.sist0 & SIST0_RST:
            reasons.append('SCSI bus reset')
        return '; '.join(reasons) or 'no known cause'
