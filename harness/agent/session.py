"""What the guest-facing QEMU needs to boot the agent, and the wait for it.

The agent is loaded with ``-kernel`` (an ELF with a PVH entry) and boots
from qboot or SeaBIOS (harness/images/agent.py), places the BARs the
firmware left unassigned, prints on QEMU's isa-debugcon (port 0x402, the
port SeaBIOS prints on too, so both land in ``firmware.log``) and gives its
verdict through isa-debug-exit.  Ready means "agent: ready" on that log and
the magic in its mailbox.
"""

import os
import re
import time
from typing import Callable, Dict, Optional, Tuple

from ..base import deadlines
from ..base.units import MIB
from ..guest.console import FirmwareLog
from ..guest import diagnosis
from ..guest.session import diagnosed
from ..mpqemu import proxyram
from ..qemu.process import QEMUProcess
from ..images import agent as agent_build
from .client import Agent, AgentError

READY_MARKER = 'agent: ready'
# What tests/images/agent/pci.c logs for each BAR it places.
PLACED_RE = re.compile(r'^agent: pci 00:(?P<slot>[0-9a-f]{2})\.(?P<fn>[0-7]) bar (?P<bar>\d) '
                       r'(?P<space>io|mem) (?P<address>0x[0-9a-f]{8}) size (?P<size>0x[0-9a-f]{8})$',
                       re.M)
FAILURE_PATTERNS = (r'agent: exception[^\n]*', r'No bootable device')
DEBUG_EXIT_PORT = 0xf4


class AgentSession:
    """One agent guest: its QEMU arguments, its log, its mailbox."""

    def __init__(self, log_dir: str, boot_firmware: str = 'qboot'):
        self.elf = agent_build.agent_elf()
        self.boot_firmware = boot_firmware
        self._firmware_args = agent_build.firmware_args(boot_firmware)
        self.firmware = FirmwareLog(os.path.join(log_dir, 'firmware.log'))
        self.console = self.firmware          # the agent has no serial console
        self.ready_marker = READY_MARKER
        self.ready_s: Optional[float] = None   # launch -> ready, last boot
        # Called with the error when a boot fails (harness/guest/diagnosis.py).
        self.diagnose: Optional[Callable[[Exception], str]] = None
        self._ram: Optional[proxyram.MappedRam] = None
        self.agent: Optional[Agent] = None      # the client, once ready

    def qemu_args(self):
        return (self._firmware_args + ['-kernel', self.elf] + self.firmware.qemu_args()
                + ['-device', f'isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=1'])

    def boot(self, vm) -> Agent:
        """Launch machine ``vm`` (harness/mpqemu/topology.py) with the agent
        as its guest and wait for it; ``vm.guest`` is this session from
        then on, and a boot that fails says why (harness/guest/diagnosis.py)."""
        self.diagnose = lambda err: str(diagnosis.boot_failure(vm, self, err))
        vm.guest = self
        vm.add_args(*self.qemu_args())
        vm.launch()
        return self.wait_ready(vm.qemu, vm.memory_mb)

    def wait_ready(self, proxy: QEMUProcess, memory_mb: int,
                   timeout_s: float = deadlines.AGENT_BOOT_S, since: int = 0) -> Agent:
        """Wait for the agent of the boot that logs after offset ``since``
        (take ``firmware.mark()`` before a reset); ``ready_s`` counts from
        the launch of ``proxy``, or for a reboot from this call."""
        started = time.monotonic() if since else (proxy.launched_at or time.monotonic())
        with diagnosed(self.diagnose, 'the agent'):
            self.firmware.wait_for(READY_MARKER, failure_patterns=FAILURE_PATTERNS,
                                   timeout_s=timeout_s, since=since, alive=proxy.is_running)
        if self._ram is None:
            self._ram = proxyram.boot_ram(proxy.pid, memory_mb * MIB)
        agent = Agent(self._ram, proxy, log_tail=self.firmware.tail)
        if not agent.ready():
            raise AgentError(f"the agent logged {READY_MARKER!r} but its mailbox at "
                             f"{agent.ram.gpa:#x} holds no magic: is the guest RAM the "
                             f"harness mapped the proxy's boot RAM?")
        self.ready_s = time.monotonic() - started
        self.agent = agent
        return agent

    def placed_bars(self, since: int = 0) -> Dict[Tuple[int, int], Tuple[str, int, int]]:
        """The BARs the agent placed itself (the firmware had left them
        unassigned): (bdf, BAR index) -> (space, address, size)."""
        return {(int(m['slot'], 16) << 3 | int(m['fn']), int(m['bar'])):
                (m['space'], int(m['address'], 16), int(m['size'], 16))
                for m in PLACED_RE.finditer(self.firmware.text(since))}

    def close(self) -> None:
        if self._ram:
            self._ram.close()
            self._ram = None
