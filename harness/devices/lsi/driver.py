"""A minimal driver for the LSI 53C895A QEMU emulates, and the SCSI
commands it issues to the disk behind it.

SCSI commands are SCRIPTS built the way SeaBIOS's polled driver
(src/hw/lsi-scsi.c) builds them: select, IDENTIFY, CDB, then follow the
target through an optional disconnect/reselect, the data phase, STATUS and
COMMAND COMPLETE, and stop with an INT instruction.  Completion is seen by
polling ISTAT0 or, where the access offers one, by the INTx line.

The driver runs over :class:`harness.devices.pci.DeviceAccess` only, so
the same code drives a remote process through the fake proxy or a device
behind a real proxy through qtest.

Emulation details this relies on beyond the register map's
(hw/scsi/lsi53c895a.c): a READ is queued to the block layer, so the target
disconnects (MSG IN SAVE DATA POINTER + DISCONNECT) and reselects when
data is ready.
"""

import struct
import time
from typing import List, Optional

from ...base.waiting import wait_until
from .. import pci
from .errors import LsiError, LsiTimeout, ScsiError, SelectionTimeout
from .registers import (DEVICE_ID, DIEN, DSP, DSPS, DSTAT, DSTAT_ABRT, DSTAT_DFE, DSTAT_IID,
                        DSTAT_SIR, ISTAT0, ISTAT0_DIP, ISTAT0_SIP, ISTAT0_SRST, ISTAT1,
                        MMIO_BAR, PHASE_COMMAND, PHASE_DATA_IN, PHASE_DATA_OUT, PHASE_MSG_IN,
                        PHASE_MSG_OUT, PHASE_STATUS, SCRIPT_RAM_BAR, SCRIPT_RAM_SIZE, SIEN0,
                        SIEN1, SIST0, SIST0_MA, SIST0_SGE, SIST0_UDC, SIST1, SIST1_STO,
                        VENDOR_ID)
from .scripts import (INT_ALREADY_CONNECTED, INT_BAD_PHASE, INT_DONE, INT_RESELECT_ABORTED,
                      MAX_BLOCK_MOVE_BYTES, Script, Stop)
from .scsi import (CDB_FUA, INQUIRY_STANDARD_LEN, MSG_IDENTIFY, SCSI_INQUIRY,
                   SCSI_READ_10, SCSI_REQUEST_SENSE,
                   SCSI_TEST_UNIT_READY, SCSI_WRITE_10, SENSE_FIXED_LEN,
                   STATUS_CHECK_CONDITION, STATUS_GOOD, Inquiry)

DEFAULT_TIMEOUT_S = 10.0
POLL_MIN_INTERVAL_S = 0.00005       # polled SCRIPTS: the first polls are quick
POLL_MAX_INTERVAL_S = 0.001
MAX_TRANSFER_BYTES = 8 << 20            # per SCSI command; < 2^24 and a multiple of 4 KiB

# Command block layout in DMA memory (one command at a time).
_CB_SCRIPT = 0x000
_CB_SCRIPT_MAX = 0x200
_CB_CDB = 0x200
_CB_MSGOUT = 0x210
_CB_MSGIN = 0x218
_CB_STATUS = 0x220
_CB_SIZE = 0x240


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

    def run_in_script_ram(self, script: Script, timeout_s: Optional[float] = None) -> Stop:
        """Load ``script`` into the chip's on-chip SCRIPTS RAM (BAR 2), start
        it there and wait for the stop, as Linux's sym53c8xx runs its
        SCRIPTS: the chip then fetches its instructions from its own BAR."""
        base = self.function.bar(SCRIPT_RAM_BAR).address
        code = script.assemble(base)
        if len(code) > SCRIPT_RAM_SIZE:
            raise ValueError(f"script of {len(code)} bytes does not fit the "
                             f"{SCRIPT_RAM_SIZE}-byte SCRIPTS RAM")
        for offset in range(0, len(code), 4):
            self.script_ram_write(offset, struct.unpack_from('<I', code, offset)[0])
        return self.start(base, timeout_s)

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
            raise LsiError(f"SCRIPTS stopped unexpectedly: {stop} ({stop.explain()})")
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
            def stopped():
                istat0 = self.read_reg(ISTAT0)
                return istat0 if istat0 & (ISTAT0_DIP | ISTAT0_SIP) else None
            istat0 = wait_until(
                stopped, max(0.0, deadline - time.monotonic()), 'SCRIPTS to stop',
                POLL_MIN_INTERVAL_S, max_interval_s=POLL_MAX_INTERVAL_S,
                error=lambda _: LsiTimeout(
                    f"SCRIPTS still running after {timeout_s} s "
                    f"(ISTAT0={self.read_reg(ISTAT0):#04x} ISTAT1={self.read_reg(ISTAT1):#04x}"
                    f" DSP={self.read_reg(DSP, 4):#x}); see the remote's log"))
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
