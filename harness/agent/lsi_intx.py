"""The LSI 53C895A as an interrupt source the agent drives.

A one-instruction SCRIPTS program (``INT``) in guest RAM: a DSP write from
the agent starts it, the chip stops with DSTAT.SIR and, DIEN.SIR being set,
raises INTx; reading DSTAT clears it and drops the line
(hw/scsi/lsi53c895a.c lsi_update_irq).  Each step is one agent command, so
a whole series of interrupts is one batch, and every interrupt is timed
from the start of its DSP write to the entry of the guest's handler.
"""

from typing import List

from ..devices.lsi import driver as lsi, registers as lsi_regs, scripts as lsi_scripts
from ..devices.lsi.errors import LsiError
from .access import AgentAccess, AgentIrqTimeout
from .mailbox import Command, Op, Status

VECTOR = 0x0000_1e70          # lands in DSPS: this stop is ours


class IntxSource:
    def __init__(self, access: AgentAccess, device: lsi.Lsi53c895a):
        if access.irq is None:
            raise LsiError("the LSI has no interrupt line assigned (config 0x3c): did "
                           "the firmware enumerate it?")
        self.access = access
        self.agent = access.agent
        self.line = access.irq.line
        mmio = device.function.bar(lsi_regs.MMIO_BAR).address
        self.dsp, self.istat0 = mmio + lsi_regs.DSP, mmio + lsi_regs.ISTAT0
        self.dstat, self.dsps = mmio + lsi_regs.DSTAT, mmio + lsi_regs.DSPS
        self.script = access.dma_alloc(16, 8)
        access.mem_write(self.script, lsi_scripts.Script().int_(VECTOR).assemble(self.script))
        device.write_reg(lsi_regs.DIEN, lsi_regs.DSTAT_SIR)
        device.write_reg(lsi_regs.SIEN0, 0)
        device.write_reg(lsi_regs.SIEN1, 0)

    def start(self) -> Command:
        return Command(Op.MEM_WRITE, addr=self.dsp, size=4, value=self.script)

    def wait(self, timeout_ms: int) -> Command:
        return Command(Op.IRQ_WAIT, arg=timeout_ms)

    def read_status(self) -> List[Command]:
        """ISTAT0, then DSTAT (which clears the interrupt), then DSPS."""
        return [Command(Op.MEM_READ, addr=self.istat0, size=1),
                Command(Op.MEM_READ, addr=self.dstat, size=1),
                Command(Op.MEM_READ, addr=self.dsps, size=4)]

    def ack(self) -> Command:
        return Command(Op.IRQ_ACK, arg=self.line)

    def cycle(self, timeout_ms: int) -> List[Command]:
        """start, wait, ISTAT0, DSTAT, DSPS, ack: one interrupt, end to end."""
        return [self.start(), self.wait(timeout_ms), *self.read_status(), self.ack()]

    def check(self, wait: Command, what: str) -> Command:
        """``wait`` (an IRQ_WAIT) must have seen the interrupt ``what`` raises."""
        if wait.status == Status.TIMEOUT:
            raise AgentIrqTimeout(f"no INTx edge within {wait.arg / 1000} s on IRQ {self.line} "
                                  f"after {what} (the agent took "
                                  f"{self.agent.header('irq_count')} on that line so far)")
        return wait

    def latency_s(self, start: Command, wait: Command) -> float:
        """DSP write started -> handler entered."""
        return self.agent.tsc_to_s(wait.irq_tsc - start.tsc_start)
