"""The device-access interface (harness.devices.pci.DeviceAccess) over the
agent, and the device's interrupt as the agent's handler sees it.

Config space, I/O and MMIO go through the agent, so every access is a real
vCPU access of the guest-facing QEMU (through the proxy to the remote, or
to the in-process device of a control VM).  Guest memory is read and
written directly in the proxy's RAM, as a device's DMA would see it; DMA
buffers come from a window of guest RAM the agent never uses.
"""

from typing import List, Optional

from ..base.errors import Timeout
from ..base.units import MIB
from ..devices import pci
from ..qemu.guestmem import FirstFit
from ..mpqemu.proxyram import MappedRam
from .client import Agent, AgentError
from .mailbox import Command, Op, Status

DMA_BASE = 4 * MIB              # above the agent (1 MiB) and its mailbox (2 MiB)
DMA_TOP_RESERVE = 2 * MIB       # the firmware keeps the top of RAM (ACPI tables)
NO_LINE = (0, 2, 0xff)          # unassigned (0xff), or lines the agent keeps


class AgentIrqTimeout(AgentError, Timeout, AssertionError):
    """The device's interrupt did not reach the guest in time."""


class AgentIrqLine:
    """The INTx line ``line`` of the 8259 PICs, unmasked by the agent.

    The agent's handler masks the line and sends no EOI; ``ack()`` sends
    the EOI and unmasks it, so a level still high then is delivered again
    (under KVM: the irqfd's resample path).  ``wait()`` consumes one
    interrupt; ``count`` is how many have been consumed, ``last`` the
    IRQ_WAIT command of the latest (its ``irq_tsc`` is when the handler ran).
    """

    def __init__(self, agent: Agent, line: int):
        self.agent = agent
        self.line = line
        agent.one(Op.IRQ_ENABLE, arg=line)
        self.count = 0
        self.last: Optional[Command] = None

    def wait(self, timeout_s: float) -> bool:
        command = self.agent.one(Op.IRQ_WAIT, arg=max(0, round(timeout_s * 1000)))
        if command.status == Status.TIMEOUT:
            return False
        self.count += 1
        self.last = command
        return True

    def pending(self) -> bool:
        """Consume an interrupt already taken, and re-arm the line."""
        if not self.wait(0):
            return False
        self.ack()
        return True

    def ack(self) -> None:
        self.agent.one(Op.IRQ_ACK, arg=self.line)


class AgentAccess:
    """PCI function ``bdf`` (bus << 8 | devfn) reached by the agent."""

    def __init__(self, agent: Agent, bdf: int, ram_bytes: int,
                 extra_ram: Optional[List[MappedRam]] = None):
        self.agent = agent
        self.bdf = bdf
        self.regions = [agent.ram] + list(extra_ram or [])
        self._dma = FirstFit(DMA_BASE, ram_bytes - DMA_BASE - DMA_TOP_RESERVE)
        line = self.config_read(pci.INTERRUPT_LINE, 1)
        self.irq: Optional[AgentIrqLine] = None if line in NO_LINE else AgentIrqLine(agent, line)
        self.last_write: Optional[Command] = None

    # -- configuration space

    def config_read(self, offset: int, size: int) -> int:
        return self.agent.cfg_read(self.bdf, offset, size)

    def config_write(self, offset: int, value: int, size: int) -> None:
        self.agent.cfg_write(self.bdf, offset, value, size)

    # -- BARs

    def bar_read(self, addr: int, size: int, memory: bool) -> int:
        return self.agent.one(Op.MEM_READ if memory else Op.IO_READ, addr=addr, size=size).value

    def bar_write(self, addr: int, value: int, size: int, memory: bool) -> None:
        self.last_write = self.agent.one(Op.MEM_WRITE if memory else Op.IO_WRITE, addr=addr,
                                         size=size, value=value)

    # -- guest memory, as the device's DMA sees it

    def _region(self, gpa: int, length: int) -> MappedRam:
        for region in self.regions:
            if region.gpa <= gpa and gpa + length <= region.gpa + region.size:
                return region
        raise AgentError(f"{length} bytes at {gpa:#x} are in no RAM the harness has mapped "
                         f"(boot RAM and {len(self.regions) - 1} more region(s))")

    def mem_read(self, gpa: int, length: int) -> bytes:
        return self._region(gpa, length).read(gpa, length)

    def mem_write(self, gpa: int, data: bytes) -> None:
        self._region(gpa, len(data)).write(gpa, data)

    def dma_alloc(self, size: int, align: int = 64) -> int:
        return self._dma.take(size, align)

    def dma_free(self, gpa: int) -> None:
        self._dma.free(gpa)

    def interrupt_latency_s(self) -> float:
        """From the start of the last BAR write (e.g. DSP, which starts the
        SCRIPTS) to the handler's entry for the last interrupt consumed."""
        if not (self.irq and self.irq.last and self.last_write):
            raise AgentError("no BAR write followed by an interrupt to time")
        return self.agent.tsc_to_s(self.irq.last.irq_tsc - self.last_write.tsc_start)
