"""A minimal driver for the LSI 53C895A SCSI controller QEMU emulates.

Everything the device does is driven by SCRIPTS, the controller's own
instruction set, fetched by DMA from host memory.  This module has the
register map (names and offsets as in QEMU's hw/scsi/lsi53c895a.c), a small
SCRIPTS assembler, and SCSI commands built the way SeaBIOS's polled driver
(src/hw/lsi-scsi.c) builds them: select, IDENTIFY, CDB, then follow the
target through an optional disconnect/reselect, the data phase, STATUS and
COMMAND COMPLETE, and stop with an INT instruction.  Completion is seen by
polling ISTAT0 or, where the access offers one, by the INTx line.

The driver runs over :class:`harness.devices.pci.DeviceAccess` only, so
the same code drives a remote process through the fake proxy or a device
behind a real proxy through qtest.

Emulation details this relies on (hw/scsi/lsi53c895a.c):
  - register BARs (0: I/O, 1: MMIO) only take 1-byte accesses; QEMU splits
    wider ones, little endian, so a 4-byte write of DSP is one round trip;
  - writing DSP[31:24] starts SCRIPTS when DMODE.MAN is clear;
  - reading DSTAT, SIST0 or SIST1 clears it and re-evaluates the IRQ;
  - a READ is queued to the block layer: the target disconnects (MSG IN
    SAVE DATA POINTER + DISCONNECT) and reselects when data is ready;
  - the bus "phase" reads as DATA OUT (0) once disconnected;
  - one block move moves at most 2^24 - 1 bytes (24-bit DBC).
"""

import struct
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

from ..base.errors import HarnessError
from . import pci

VENDOR_ID = 0x1000          # PCI_VENDOR_ID_LSI_LOGIC
DEVICE_ID = 0x0012          # PCI_DEVICE_ID_LSI_53C895A
IO_BAR = 0                  # 256 bytes of registers in I/O space
MMIO_BAR = 1                # the same registers, 1 KiB memory BAR
SCRIPT_RAM_BAR = 2          # 8 KiB of on-chip SCRIPTS RAM
SCRIPT_RAM_SIZE = 0x2000
# BAR index -> size, as QEMU's lsi53c895a registers them (and a proxy
# learns them from its remote).
BAR_SIZES = {IO_BAR: 0x100, MMIO_BAR: 0x400, SCRIPT_RAM_BAR: SCRIPT_RAM_SIZE}

# ---------------------------------------------------------------- registers

SCNTL0 = 0x00
SCNTL1 = 0x01
SCNTL2 = 0x02
SCNTL3 = 0x03
SCID = 0x04
SXFER = 0x05
SDID = 0x06
GPREG = 0x07
SFBR = 0x08
SOCL = 0x09
SSID = 0x0a
SBCL = 0x0b
DSTAT = 0x0c
SSTAT0 = 0x0d
SSTAT1 = 0x0e
SSTAT2 = 0x0f
DSA = 0x10
ISTAT0 = 0x14
ISTAT1 = 0x15
MBOX0 = 0x16
MBOX1 = 0x17
CTEST0 = 0x18
CTEST1 = 0x19
CTEST2 = 0x1a
CTEST3 = 0x1b
TEMP = 0x1c
DFIFO = 0x20
CTEST4 = 0x21
CTEST5 = 0x22
CTEST6 = 0x23
DBC = 0x24                  # 24 bits
DCMD = 0x27
DNAD = 0x28
DSP = 0x2c
DSPS = 0x30
SCRATCHA = 0x34
DMODE = 0x38
DIEN = 0x39
SBR = 0x3a
DCNTL = 0x3b
ADDER = 0x3c
SIEN0 = 0x40
SIEN1 = 0x41
SIST0 = 0x42
SIST1 = 0x43
SLPAR = 0x44
MACNTL = 0x46
GPCNTL0 = 0x47
STIME0 = 0x48
STIME1 = 0x49
RESPID0 = 0x4a
RESPID1 = 0x4b
STEST0 = 0x4c
STEST1 = 0x4d
STEST2 = 0x4e
STEST3 = 0x4f
SIDL = 0x50
STEST4 = 0x52
SODL = 0x54
CCNTL0 = 0x56
CCNTL1 = 0x57
SBDL = 0x58
SCRATCHB = 0x5c             # SCRATCHC..R follow, 4 bytes each
MMRS = 0xa0
MMWS = 0xa4
SFS = 0xa8
DRS = 0xac
SBMS = 0xb0
DBMS = 0xb4
DNAD64 = 0xb8
PMJAD1 = 0xc0
PMJAD2 = 0xc4
RBC = 0xc8
UA = 0xcc
IA = 0xd4
SBC = 0xd8
CSBC = 0xdc
REGISTER_SPACE_SIZE = 0x100

REGISTER_NAMES: Dict[int, str] = {
    value: name for name, value in globals().items()
    if name.isupper() and isinstance(value, int) and name not in (
        'VENDOR_ID', 'DEVICE_ID', 'IO_BAR', 'MMIO_BAR', 'SCRIPT_RAM_BAR', 'SCRIPT_RAM_SIZE',
        'REGISTER_SPACE_SIZE')
}

ISTAT0_DIP = 0x01           # DMA interrupt pending (DSTAT)
ISTAT0_SIP = 0x02           # SCSI interrupt pending (SIST0/1)
ISTAT0_INTF = 0x04
ISTAT0_CON = 0x08
ISTAT0_SEM = 0x10
ISTAT0_SIGP = 0x20
ISTAT0_SRST = 0x40          # software reset
ISTAT0_ABRT = 0x80

ISTAT1_SRUN = 0x02          # SCRIPTS running

DSTAT_IID = 0x01            # illegal instruction
DSTAT_SIR = 0x04            # SCRIPTS INT instruction
DSTAT_SSI = 0x08
DSTAT_ABRT = 0x10
DSTAT_BF = 0x20
DSTAT_MDPE = 0x40
DSTAT_DFE = 0x80            # DMA FIFO empty: QEMU always sets it on read

SIST0_PAR = 0x01
SIST0_RST = 0x02
SIST0_UDC = 0x04            # unexpected disconnect (QEMU: 10000-insn loop guard)
SIST0_SGE = 0x08
SIST0_RSL = 0x10
SIST0_SEL = 0x20
SIST0_CMP = 0x40
SIST0_MA = 0x80             # phase mismatch
SIST1_HTH = 0x01
SIST1_GEN = 0x02
SIST1_STO = 0x04            # selection timeout: no such target

DMODE_MAN = 0x01            # manual start: writing DSP does not start SCRIPTS
SCNTL1_RST = 0x08

# SCSI bus phases (SSTAT1[2:0], and bits 26:24 of phase-checking SCRIPTS)
PHASE_DATA_OUT = 0
PHASE_DATA_IN = 1
PHASE_COMMAND = 2
PHASE_STATUS = 3
PHASE_MSG_OUT = 6
PHASE_MSG_IN = 7

# Our INT vectors (land in DSPS), so a stop is identified by where it came from.
INT_DONE = 0x0000d0e0
INT_BAD_PHASE = 0x0000bad0
INT_RESELECT_ABORTED = 0x0000bad1
INT_ALREADY_CONNECTED = 0x0000bad2

DEFAULT_TIMEOUT_S = 10.0
POLL_MAX_INTERVAL_S = 0.001
MAX_BLOCK_MOVE_BYTES = (1 << 24) - 1
MAX_TRANSFER_BYTES = 8 << 20            # per SCSI command; < 2^24 and a multiple of 4 KiB


class LsiError(HarnessError):
    """The controller stopped somewhere other than where SCRIPTS said."""


class LsiTimeout(LsiError):
    """SCRIPTS did not finish within the deadline."""


class SelectionTimeout(LsiError):
    """No target answered the selection (SIST1.STO)."""


class ScsiError(LsiError):
    """The target completed the command with a status other than GOOD."""

    def __init__(self, message: str, status: int, sense: bytes = b''):
        super().__init__(message)
        self.status = status
        self.sense = sense


# ---------------------------------------------------------------- assembler

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

    def wait_disconnect(self) -> 'Script':
        return self._emit(1 << 30 | 1 << 27, 0)

    def wait_reselect(self, alt: Word) -> 'Script':
        """WAIT RESELECT; jump to ``alt`` if ISTAT0.SIGP is set."""
        return self._emit(1 << 30 | 2 << 27, alt)

    def set_carry(self) -> 'Script':
        return self._emit(1 << 30 | 3 << 27 | 1 << 10, 0)

    def clear_carry(self) -> 'Script':
        return self._emit(1 << 30 | 4 << 27 | 1 << 10, 0)

    def load_register(self, register: int, value: int) -> 'Script':
        """MOVE value TO register (read-modify-write, operator MOVE)."""
        return self._emit(1 << 30 | 7 << 27 | (register & 0x7f) << 16 | (register & 0x80)
                          | (value & 0xff) << 8, 0)

    # -- transfer control (type 2)
    def _transfer(self, opcode: int, target: Word, when: Optional[int] = None,
                  if_not: bool = False, data: Optional[Tuple[int, int]] = None,
                  intfly: bool = False) -> 'Script':
        insn = 2 << 30 | opcode << 27
        if not if_not:
            insn |= 1 << 19                           # "jump if true"
        if when is not None:
            insn |= (when & 7) << 24 | 1 << 17        # compare phase
        if data is not None:
            value, mask = data                        # compare SFBR & mask == value
            insn |= 1 << 18 | (~mask & 0xff) << 8 | (value & 0xff)
        if intfly:
            insn |= 1 << 20
        if insn & 0x002e0000 == 0:
            raise ValueError("a transfer control without any condition is a NOP in QEMU")
        return self._emit(insn, target)

    def jump(self, target: Word, when: Optional[int] = None, if_not: bool = False,
             data: Optional[Tuple[int, int]] = None) -> 'Script':
        return self._transfer(0, target, when, if_not, data)

    def call(self, target: Word, when: Optional[int] = None) -> 'Script':
        return self._transfer(1, target, when)

    def ret(self) -> 'Script':
        return self._transfer(2, 0)

    def int_(self, vector: int, when: Optional[int] = None, if_not: bool = False) -> 'Script':
        """INT vector: stop with DSTAT.SIR, DSPS = vector."""
        return self._transfer(3, vector, when, if_not)

    def intfly(self, vector: int) -> 'Script':
        """INTFLY: raise ISTAT0.INTF and keep running."""
        return self._transfer(3, vector, intfly=True)

    # -- memory move, load/store (type 3)
    def memory_move(self, count: int, src: Word, dst: Word) -> 'Script':
        if not 0 <= count <= MAX_BLOCK_MOVE_BYTES:
            raise ValueError(f"memory move of {count} bytes: the count has 24 bits")
        return self._emit(3 << 30 | count, src, dst)

    def load(self, register: int, count: int, addr: Word) -> 'Script':
        """LOAD register, count, addr (1..4 bytes from memory)."""
        return self._emit(3 << 30 | 1 << 29 | 1 << 24 | (register & 0xff) << 16 | (count & 7),
                          addr)

    def store(self, register: int, count: int, addr: Word) -> 'Script':
        return self._emit(3 << 30 | 1 << 29 | (register & 0xff) << 16 | (count & 7), addr)

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


# ---------------------------------------------------------------- driver

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


@dataclass
class Inquiry:
    peripheral_type: int
    vendor: str
    product: str
    revision: str
    raw: bytes


# Command block layout in DMA memory (one command at a time).
_CB_SCRIPT = 0x000
_CB_SCRIPT_MAX = 0x200
_CB_CDB = 0x200
_CB_MSGOUT = 0x210
_CB_MSGIN = 0x218
_CB_STATUS = 0x220
_CB_SIZE = 0x240

SCSI_TEST_UNIT_READY = 0x00
SCSI_REQUEST_SENSE = 0x03
SCSI_INQUIRY = 0x12
SCSI_READ_CAPACITY_10 = 0x25
SCSI_READ_10 = 0x28
SCSI_WRITE_10 = 0x2a
CDB_FUA = 0x08               # WRITE(10) byte 1: write through to the medium

STATUS_GOOD = 0x00
STATUS_CHECK_CONDITION = 0x02
INQUIRY_STANDARD_LEN = 36
SENSE_FIXED_LEN = 18
MSG_IDENTIFY = 0x80


class Lsi53c895a:
    """Drive one LSI 53C895A (and target ``target`` on its bus).

    ``regs_bar`` picks the register window (IO_BAR or MMIO_BAR).
    ``use_irq`` waits on ``access.irq`` instead of polling ISTAT0.
    """

    def __init__(self, access: pci.DeviceAccess, *, regs_bar: int = MMIO_BAR,
                 target: int = 0, use_irq: bool = False,
                 timeout_s: float = DEFAULT_TIMEOUT_S):
        self.access = access
        self.function = pci.PciFunction(access)
        self.regs_bar = regs_bar
        self.target = target
        self.use_irq = use_irq
        self.timeout_s = timeout_s
        self.block_size = 512
        self.last_stop: Optional[Stop] = None
        self._cb: Optional[int] = None

    # -- bring-up

    def setup(self) -> List[pci.Bar]:
        """Check identity, program BARs, enable IO/memory/bus mastering,
        reset the chip and allocate the command block."""
        self.function.expect_identity(VENDOR_ID, DEVICE_ID)
        bars = self.function.setup()
        if self._cb is None:
            self._cb = self.access.dma_alloc(_CB_SIZE, 256)
        self.soft_reset()
        return bars

    def close(self) -> None:
        if self._cb is not None:
            self.access.dma_free(self._cb)
            self._cb = None

    def soft_reset(self) -> None:
        """ISTAT0.SRST: resets the chip and its SCSI bus (the target then
        reports UNIT ATTENTION once)."""
        self.write_reg(ISTAT0, ISTAT0_SRST)
        self.write_reg(ISTAT0, 0)

    # -- registers

    def read_reg(self, offset: int, size: int = 1) -> int:
        return self.function.read(self.regs_bar, offset, size)

    def write_reg(self, offset: int, value: int, size: int = 1) -> None:
        self.function.write(self.regs_bar, offset, value, size)

    def script_ram_read(self, offset: int, size: int = 4) -> int:
        return self.function.read(SCRIPT_RAM_BAR, offset, size)

    def script_ram_write(self, offset: int, value: int, size: int = 4) -> None:
        self.function.write(SCRIPT_RAM_BAR, offset, value, size)

    # -- running SCRIPTS

    def run(self, script: Script, timeout_s: Optional[float] = None) -> Stop:
        """Load ``script`` into the command block, start it, wait for it
        to stop and return why.  Raises unless it stopped at INT_DONE."""
        code = script.assemble(self._cb + _CB_SCRIPT)
        if len(code) > _CB_SCRIPT_MAX:
            raise ValueError(f"script of {len(code)} bytes does not fit {_CB_SCRIPT_MAX}")
        self.access.mem_write(self._cb + _CB_SCRIPT, code)
        return self.start(self._cb + _CB_SCRIPT, timeout_s)

    def start(self, dsp: int, timeout_s: Optional[float] = None) -> Stop:
        """Start SCRIPTS at ``dsp`` and wait for the stop."""
        irq = self.access.irq if self.use_irq else None
        if self.use_irq and irq is None:
            raise LsiError("use_irq=True but this device access observes no interrupt "
                           "(a real proxy forwards INTx only through KVM irqfd)")
        self._arm_interrupts(bool(irq))
        if irq is not None:
            irq.pending()           # an edge left from an earlier stop is not ours
        started = time.monotonic()
        self.write_reg(DSP, dsp, 4)
        stop = self._wait_stop(irq, started, self.timeout_s if timeout_s is None else timeout_s)
        self.last_stop = stop
        if stop.sist1 & SIST1_STO:
            raise SelectionTimeout(f"no SCSI target {self.target} on the bus (selection "
                                   f"timeout, {stop}): is a scsi-hd attached with "
                                   f"scsi-id={self.target}?")
        if not stop.done:
            raise LsiError(f"SCRIPTS stopped unexpectedly: {stop} ({_explain(stop)})")
        return stop

    def _arm_interrupts(self, enabled: bool) -> None:
        # With DIEN/SIEN zero the chip still sets DIP/SIP (polling works) but
        # never raises INTx; enabling them is what makes an IRQ observable.
        self.write_reg(DIEN, DSTAT_SIR | DSTAT_IID | DSTAT_ABRT if enabled else 0)
        self.write_reg(SIEN0, SIST0_MA | SIST0_UDC | SIST0_SGE if enabled else 0)
        self.write_reg(SIEN1, SIST1_STO if enabled else 0)

    def _wait_stop(self, irq, started: float, timeout_s: float) -> Stop:
        deadline = started + timeout_s
        by_irq = False
        if irq is not None:
            by_irq = irq.wait(max(0.0, deadline - time.monotonic()))
            istat0 = self.read_reg(ISTAT0)
            if not by_irq:
                state = 'stopped with ' + f'ISTAT0={istat0:#04x}' \
                    if istat0 & (ISTAT0_DIP | ISTAT0_SIP) else 'still running'
                raise LsiTimeout(f"no INTx edge within {timeout_s} s (SCRIPTS {state}, "
                                 f"DSP={self.read_reg(DSP, 4):#x}): was SET_IRQFD sent, "
                                 f"and is INTx enabled in COMMAND?")
        else:
            interval = 0.0
            while True:
                istat0 = self.read_reg(ISTAT0)
                if istat0 & (ISTAT0_DIP | ISTAT0_SIP):
                    break
                if time.monotonic() > deadline:
                    raise LsiTimeout(f"SCRIPTS still running after {timeout_s} s "
                                     f"(ISTAT0={istat0:#04x} ISTAT1={self.read_reg(ISTAT1):#04x}"
                                     f" DSP={self.read_reg(DSP, 4):#x}); see the remote's log")
                if interval:
                    time.sleep(interval)
                interval = min(POLL_MAX_INTERVAL_S, interval * 2 or 0.00005)
        elapsed = time.monotonic() - started
        dstat = self.read_reg(DSTAT) & ~DSTAT_DFE
        sist0 = self.read_reg(SIST0)
        sist1 = self.read_reg(SIST1)
        stop = Stop(istat0, dstat, sist0, sist1, self.read_reg(DSPS, 4),
                    self.read_reg(DSP, 4), by_irq, elapsed)
        if irq is not None:
            irq.ack()
        return stop

    # -- SCSI commands

    def command(self, cdb: bytes, data_in: int = 0, data_out_gpa: Optional[int] = None,
                data_out_len: int = 0, data_in_gpa: Optional[int] = None,
                timeout_s: Optional[float] = None) -> int:
        """Run one SCSI command; returns the status byte.  Data moves
        by DMA to/from the given guest addresses."""
        if len(cdb) > 16:
            raise ValueError("a CDB has at most 16 bytes")
        if data_in and data_out_len:
            raise ValueError("a command moves data in one direction")
        cb = self._cb
        if cb is None:
            raise LsiError("call setup() before issuing commands")
        self.access.mem_write(cb + _CB_CDB, cdb.ljust(16, b'\0'))
        self.access.mem_write(cb + _CB_MSGOUT, bytes([MSG_IDENTIFY]))
        self.access.mem_write(cb + _CB_STATUS, b'\xff')

        s = Script()
        s.select(self.target, alt=s.ref('already_connected'))
        s.move(PHASE_MSG_OUT, 1, cb + _CB_MSGOUT)
        s.move(PHASE_COMMAND, len(cdb), cb + _CB_CDB)
        s.label('dispatch')
        s.jump(s.ref('status'), when=PHASE_STATUS)
        s.jump(s.ref('msg_in'), when=PHASE_MSG_IN)
        if data_in:
            s.jump(s.ref('data'), when=PHASE_DATA_IN)
        elif data_out_len:
            s.jump(s.ref('data'), when=PHASE_DATA_OUT)
        s.int_(INT_BAD_PHASE)
        # The target disconnected (SAVE DATA POINTER, DISCONNECT) while the
        # block layer works; it reselects us with IDENTIFY when data is ready.
        s.label('msg_in')
        s.move(PHASE_MSG_IN, 2, cb + _CB_MSGIN)
        s.wait_reselect(alt=s.ref('reselect_aborted'))
        s.move(PHASE_MSG_IN, 1, cb + _CB_MSGIN + 2)
        s.jump(s.ref('dispatch'), when=PHASE_MSG_IN, if_not=True)
        s.int_(INT_BAD_PHASE)
        s.label('data')
        if data_in:
            s.move(PHASE_DATA_IN, data_in, data_in_gpa)
        elif data_out_len:
            s.move(PHASE_DATA_OUT, data_out_len, data_out_gpa)
        s.jump(s.ref('dispatch'))
        s.label('status')
        s.move(PHASE_STATUS, 1, cb + _CB_STATUS)
        s.move(PHASE_MSG_IN, 1, cb + _CB_MSGIN + 4)     # COMMAND COMPLETE
        s.int_(INT_DONE)
        s.label('reselect_aborted')
        s.int_(INT_RESELECT_ABORTED)
        s.label('already_connected')
        s.int_(INT_ALREADY_CONNECTED)

        self.run(s, timeout_s)
        return self.access.mem_read(cb + _CB_STATUS, 1)[0]

    def _command_in(self, cdb: bytes, length: int, what: str) -> bytes:
        buf = self.access.dma_alloc(max(length, 1))
        try:
            status = self.command(cdb, data_in=length, data_in_gpa=buf)
            if status != STATUS_GOOD:
                raise self._scsi_error(what, status)
            return self.access.mem_read(buf, length)
        finally:
            self.access.dma_free(buf)

    def _scsi_error(self, what: str, status: int) -> ScsiError:
        sense = b''
        if status == STATUS_CHECK_CONDITION:
            try:
                sense = self.request_sense()
            except LsiError:
                pass
        detail = f", sense key {sense[2] & 0xf:#x} ASC/ASCQ {sense[12]:02x}/{sense[13]:02x}" \
            if len(sense) >= 14 else ''
        return ScsiError(f"{what} failed with SCSI status {status:#04x}{detail}", status, sense)

    def test_unit_ready(self) -> int:
        """The status byte (GOOD, or CHECK CONDITION e.g. after a reset)."""
        return self.command(bytes([SCSI_TEST_UNIT_READY, 0, 0, 0, 0, 0]))

    def wait_ready(self, attempts: int = 4) -> None:
        """TEST UNIT READY until GOOD, consuming the UNIT ATTENTION a
        reset leaves (as SeaBIOS's scsi_is_ready does)."""
        for _ in range(attempts):
            status = self.test_unit_ready()
            if status == STATUS_GOOD:
                return
            self.request_sense()
        raise self._scsi_error(f"TEST UNIT READY ({attempts} attempts)", status)

    def request_sense(self) -> bytes:
        cdb = bytes([SCSI_REQUEST_SENSE, 0, 0, 0, SENSE_FIXED_LEN, 0])
        buf = self.access.dma_alloc(SENSE_FIXED_LEN)
        try:
            status = self.command(cdb, data_in=SENSE_FIXED_LEN, data_in_gpa=buf)
            if status != STATUS_GOOD:
                raise ScsiError(f"REQUEST SENSE failed with status {status:#04x}", status)
            return self.access.mem_read(buf, SENSE_FIXED_LEN)
        finally:
            self.access.dma_free(buf)

    def inquiry(self) -> Inquiry:
        raw = self._command_in(bytes([SCSI_INQUIRY, 0, 0, 0, INQUIRY_STANDARD_LEN, 0]),
                               INQUIRY_STANDARD_LEN, 'INQUIRY')
        text = lambda b: b.decode('ascii', 'replace').strip()   # noqa: E731
        return Inquiry(raw[0] & 0x1f, text(raw[8:16]), text(raw[16:32]), text(raw[32:36]), raw)

    def read_capacity(self) -> Tuple[int, int]:
        """(number of blocks, block size); remembers the block size."""
        raw = self._command_in(bytes([SCSI_READ_CAPACITY_10] + [0] * 9), 8, 'READ CAPACITY(10)')
        last_lba, block_size = struct.unpack('>II', raw)
        self.block_size = block_size
        return last_lba + 1, block_size

    def _chunks(self, lba: int, blocks: int):
        per_command = min(MAX_TRANSFER_BYTES // self.block_size, 0xffff)
        done = 0
        while done < blocks:
            n = min(per_command, blocks - done)
            yield lba + done, n, done * self.block_size
            done += n

    def read10_to(self, gpa: int, lba: int, blocks: int) -> None:
        """READ(10) ``blocks`` blocks at ``lba`` into guest memory at ``gpa``."""
        for chunk_lba, n, offset in self._chunks(lba, blocks):
            cdb = struct.pack('>BBIBHB', SCSI_READ_10, 0, chunk_lba, 0, n, 0)
            status = self.command(cdb, data_in=n * self.block_size, data_in_gpa=gpa + offset)
            if status != STATUS_GOOD:
                raise self._scsi_error(f"READ(10) lba={chunk_lba} blocks={n}", status)

    def write10_from(self, gpa: int, lba: int, blocks: int, fua: bool = False) -> None:
        """WRITE(10) ``blocks`` blocks from guest memory at ``gpa`` to ``lba``;
        with ``fua`` each command completes only once its data is flushed
        (QEMU's scsi-disk flushes before the status: hw/scsi/scsi-disk.c).

        No SYNCHRONIZE CACHE here: without a data phase QEMU's LSI leaves
        the bus in a data phase while the flush runs, which a polled
        script cannot tell from a real one."""
        for chunk_lba, n, offset in self._chunks(lba, blocks):
            cdb = struct.pack('>BBIBHB', SCSI_WRITE_10, CDB_FUA if fua else 0, chunk_lba,
                              0, n, 0)
            status = self.command(cdb, data_out_gpa=gpa + offset,
                                  data_out_len=n * self.block_size)
            if status != STATUS_GOOD:
                raise self._scsi_error(f"WRITE(10) lba={chunk_lba} blocks={n}", status)

    def read10(self, lba: int, blocks: int) -> bytes:
        length = blocks * self.block_size
        buf = self.access.dma_alloc(length, 4096)
        try:
            self.read10_to(buf, lba, blocks)
            return self.access.mem_read(buf, length)
        finally:
            self.access.dma_free(buf)

    def write10(self, lba: int, data: bytes, fua: bool = False) -> None:
        if len(data) % self.block_size:
            raise ValueError(f"{len(data)} bytes is not a whole number of "
                             f"{self.block_size}-byte blocks")
        buf = self.access.dma_alloc(len(data), 4096)
        try:
            self.access.mem_write(buf, data)
            self.write10_from(buf, lba, len(data) // self.block_size, fua)
        finally:
            self.access.dma_free(buf)

    def memory_move(self, dst: int, src: int, length: int) -> None:
        """Copy guest memory with SCRIPTS MEMORY MOVE (DMA read + write)."""
        s = Script()
        done = 0
        while done < length:
            n = min(length - done, MAX_BLOCK_MOVE_BYTES & ~0xfff)
            s.memory_move(n, src + done, dst + done)
            done += n
        s.int_(INT_DONE)
        self.run(s)


def _explain(stop: Stop) -> str:
    reasons = []
    if stop.dsps == INT_BAD_PHASE and stop.dstat & DSTAT_SIR:
        reasons.append('the target went to a phase the script did not expect')
    if stop.dsps == INT_RESELECT_ABORTED:
        reasons.append('WAIT RESELECT was aborted by ISTAT0.SIGP')
    if stop.dsps == INT_ALREADY_CONNECTED:
        reasons.append('SELECT found the chip already connected: reset it')
    if stop.dstat & DSTAT_IID:
        reasons.append('illegal instruction (bad script address? is bus mastering on?)')
    if stop.dstat & DSTAT_ABRT:
        reasons.append('aborted through ISTAT0.ABRT')
    if stop.sist0 & SIST0_MA:
        reasons.append('phase mismatch: a short transfer or the command failed mid-way')
    if stop.sist0 & SIST0_UDC:
        reasons.append("unexpected disconnect (QEMU's 10000-instruction loop guard)")
    if stop.sist0 & SIST0_RST:
        reasons.append('SCSI bus reset')
    return '; '.join(reasons) or 'no known cause'
