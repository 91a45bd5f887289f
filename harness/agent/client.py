"""Post command batches to the agent and read their results.

The harness reaches the agent's mailbox through the proxy's guest RAM
(``memory-backend-memfd``, mapped from /proc/PID/fd: harness/mpqemu/
proxyram.py).  Every batch has a deadline that follows from what it asks
for (a base, a little per command, and the time its interrupt waits and
delays may take); one that misses it ends in :class:`AgentTimeout`, whose
message names the command the agent was running and why it may be stuck:
whether the guest's timer still ticks (its vCPU runs guest code) and where
the proxy's threads wait (a vCPU blocked in ``recvmsg`` on a remote's
socket).  A guest that takes a CPU exception, or whose QEMU exits, ends in
:class:`AgentFault` naming the step too.
"""

import time
from typing import List, Optional

from ..base.errors import HarnessError, Timeout
from ..base.waiting import wait_until
from ..mpqemu.proxyram import MappedRam
from ..qemu import waits
from ..qemu.process import QEMUProcess
from . import mailbox
from .mailbox import Command, Op, Status

BATCH_BASE_TIMEOUT_S = 5.0
PER_COMMAND_TIMEOUT_S = 0.005      # emulated under PVM: ~1 µs per guest instruction
WAIT_MARGIN_S = 1.0                # beyond the waits and delays a batch asks for
POLL_MIN_S = 0.00002
POLL_MAX_S = 0.002
TICK_SAMPLE_S = 0.1


class AgentError(HarnessError):
    """The agent could not do what it was asked."""


class AgentTimeout(AgentError, Timeout):
    """A batch did not finish in time."""


class AgentFault(AgentError):
    """The guest took a CPU exception, or its QEMU exited."""


class AgentCommandError(AgentError):
    """The agent refused a command (unknown op, bad size, bad line)."""


def batch_timeout(commands: List[Command]) -> float:
    """How long a batch may take: what its waits and delays ask for, plus
    a base and a little per command."""
    waited = sum(c.arg for c in commands if c.op in (Op.IRQ_WAIT, Op.DELAY)) / 1000
    return (BATCH_BASE_TIMEOUT_S + len(commands) * PER_COMMAND_TIMEOUT_S
            + waited + WAIT_MARGIN_S)


class Agent:
    """The agent of one boot of ``proxy``, through ``ram`` (its boot RAM)."""

    def __init__(self, ram: MappedRam, proxy: QEMUProcess, log_tail=None):
        self.ram = ram
        self.proxy = proxy
        self._log_tail = log_tail or (lambda: '')
        self.batches = 0
        self.commands = 0
        self._late: Optional[tuple] = None     # (batch, seq) that missed its deadline

    # -- the mailbox

    def header(self, name: str) -> int:
        return mailbox.field(self.ram.read(mailbox.MAILBOX_GPA, mailbox.HEADER_SIZE), name)

    def _set(self, name: str, value: int) -> None:
        offset, data = mailbox.pack_field(name, value)
        self.ram.write(mailbox.MAILBOX_GPA + offset, data)

    def ready(self) -> bool:
        return (self.header('magic') == mailbox.MAGIC
                and self.header('version') == mailbox.VERSION)

    def forget_boot(self) -> None:
        """Before a reset: the next boot's agent must announce itself anew."""
        self._set('magic', 0)

    @property
    def tsc_hz(self) -> float:
        """The guest TSC's rate, from the agent's calibration on the PIT."""
        ticks = self.header('calib_ticks')
        if not ticks:
            raise AgentError("the agent has not calibrated its TSC (not ready?)")
        return self.header('calib_tsc') / (ticks * mailbox.TICK_S)

    def tsc_to_s(self, delta: int) -> float:
        return delta / self.tsc_hz

    # -- running commands

    def run(self, commands: List[Command], timeout_s: Optional[float] = None) -> List[Command]:
        """Run ``commands`` in order (in batches of at most MAX_CMDS) and
        return them with their results filled in.  A command the agent
        refuses raises AgentCommandError; an interrupt wait that expires is
        a result (status TIMEOUT), not an error."""
        for start in range(0, len(commands), mailbox.MAX_CMDS):
            self._run_batch(commands[start:start + mailbox.MAX_CMDS], timeout_s)
        return commands

    def one(self, op: Op, timeout_s: Optional[float] = None, **fields) -> Command:
        return self.run([Command(op, **fields)], timeout_s)[0]

    def _run_batch(self, batch: List[Command], timeout_s: Optional[float]) -> None:
        if self._late:
            raise AgentError("the agent is still running a batch that missed its deadline: "
                             "finish_late() it first")
        if not self.ready():
            raise AgentError("the agent is not ready (not booted yet, or reset since)")
        base = mailbox.MAILBOX_GPA
        self.ram.write(base + mailbox.CMDS_OFFSET, b''.join(c.encode() for c in batch))
        seq = (self.header('done_seq') + 1) & 0xffffffff
        self._set('count', len(batch))
        self._set('request_seq', seq)        # last: the agent starts on it
        timeout_s = batch_timeout(batch) if timeout_s is None else timeout_s
        try:
            self._wait_done(batch, seq, timeout_s)
        except AgentTimeout:
            self._late = (batch, seq)
            raise
        self._collect(batch)

    def finish_late(self, timeout_s: Optional[float] = None) -> List[Command]:
        """Wait for the batch that missed its deadline (e.g. a vCPU blocked
        on a stopped remote, since continued) and return its results."""
        if not self._late:
            raise AgentError("no batch is running late")
        batch, seq = self._late
        timeout_s = batch_timeout(batch) if timeout_s is None else timeout_s
        self._wait_done(batch, seq, timeout_s)
        self._late = None
        self._collect(batch)
        return batch

    def _wait_done(self, batch: List[Command], seq: int, timeout_s: float) -> None:
        """Until the agent has done batch ``seq``: AgentFault if the guest
        dies first, AgentTimeout past ``timeout_s``."""
        def done() -> bool:
            if self.header('done_seq') == seq:
                return True
            if not self.proxy.is_running():
                raise self._fault(batch)
            return False
        wait_until(done, timeout_s, f'the agent to finish {len(batch)} commands', POLL_MIN_S,
                   max_interval_s=POLL_MAX_S, error=lambda s: self._timeout(batch, s))

    def _collect(self, batch: List[Command]) -> None:
        base = mailbox.MAILBOX_GPA
        results = self.ram.read(base + mailbox.CMDS_OFFSET, len(batch) * mailbox.CMD_SIZE)
        for i, command in enumerate(batch):
            command.decode_result(results[i * mailbox.CMD_SIZE:(i + 1) * mailbox.CMD_SIZE])
            if command.status not in (Status.OK, Status.TIMEOUT):
                raise AgentCommandError(f"the agent refused command #{i} "
                                        f"({command.describe()}): {command.status_name}")
        self.batches += 1
        self.commands += len(batch)

    def _step(self, batch: List[Command]) -> str:
        current = self.header('current')
        if current < len(batch):
            return f"command #{current} of {len(batch)} ({batch[current].describe()})"
        return f"a batch of {len(batch)} commands"

    def _fault(self, batch: List[Command]) -> AgentFault:
        vector = self.header('fault_vector')
        step = self._step(batch)
        if vector != mailbox.NO_FAULT:
            name = mailbox.exception_name(vector)
            what = (f"the agent took CPU exception {vector}" + (f" ({name})" if name else '')
                    + f" at eip {self.header('fault_eip'):#x} (error code "
                    f"{self.header('fault_error'):#x}) running {step}")
        else:
            what = (f"the guest's QEMU ({self.proxy.name}) {self.proxy.state_description()} "
                    f"while the agent ran {step}")
        return AgentFault(f"{what}\n--- agent log ---\n{self._log_tail()}\n"
                          f"--- {self.proxy.log_path} ---\n{self.proxy.log_tail()}")

    def _timeout(self, batch: List[Command], timeout_s: float) -> AgentTimeout:
        step = self._step(batch)
        before = self.header('ticks')
        time.sleep(TICK_SAMPLE_S)
        after = self.header('ticks')
        if after != before:
            ticking = f"the guest's timer ticks on ({after}), so the command itself is slow"
        else:
            ticking = (f"the guest's timer stopped at tick {after}: its vCPU runs no guest "
                       f"code (blocked in QEMU, or halted with interrupts off)")
        thread_waits = self.proxy.waits()
        blocked = waits.awaited_peers(thread_waits)
        cause = (f"; the proxy's {blocked[0].name} waits for a reply on {blocked[0].fd_role}"
                 if blocked else '')
        return AgentTimeout(f"the agent did not finish {step} within {timeout_s:.1f} s: "
                            f"{ticking}{cause} (proxy: {waits.describe(thread_waits)})")

    # -- typed helpers

    def cfg_read(self, bdf: int, offset: int, size: int) -> int:
        return self.one(Op.CFG_READ, arg=bdf, addr=offset, size=size).value

    def cfg_write(self, bdf: int, offset: int, value: int, size: int) -> None:
        self.one(Op.CFG_WRITE, arg=bdf, addr=offset, size=size, value=value)

    def find_device(self, vendor_id: int, device_id: int, bus: int = 0) -> int:
        """The bus << 8 | devfn of the first function 0 on ``bus`` with this
        identity, from one batch of config reads."""
        probes = [Command(Op.CFG_READ, arg=bus << 8 | slot << 3, addr=0, size=4)
                  for slot in range(32)]
        self.run(probes)
        wanted = device_id << 16 | vendor_id
        found = []
        for slot, probe in enumerate(probes):
            if probe.value == wanted:
                return bus << 8 | slot << 3
            if probe.value != 0xffffffff:
                found.append(f'{probe.value & 0xffff:04x}:{probe.value >> 16:04x} at '
                             f'{bus:02x}:{slot:02x}.0')
        raise AgentError(f"no PCI device {vendor_id:04x}:{device_id:04x} on bus {bus} "
                         f"(the agent found {', '.join(found) or 'nothing'}): is the device "
                         f"plugged, and did its remote start?")
