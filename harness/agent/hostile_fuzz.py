"""The proxy fuzz run: hostile replies to the agent's accesses, case by case.

The hostile remote itself is harness/mpqemu/hostile; this is the run that
drives it from the agent guest.

A :class:`Case` (seed, index) is one access of the agent -- a config read
or write, an I/O or MMIO BAR read or write, of 1, 2 or 4 bytes -- and the
:class:`~.replies.Reply` the hostile remote gives it.  The agent runs the
access and two follow-ups in one batch: an MMIO read of a marker unique to
the case, then the identity dword.  :class:`Campaign` then classifies:

  correct   the proxy coped: a legal reply reached the guest as sent; an
            illegal one was refused (a read got all-ones, or an error was
            logged) and the link stayed in step
  CRASH     the proxy died by a signal                          -> finding
  EXIT      it exited                                           -> finding
  HANG      the vCPU did not come back by the deadline (0.5 s; a batch
            that then finishes within 10 s was only slow) -- the harness
            hangs up; a proxy still wedged then is killed       -> finding
  DESYNC    a follow-up got a reply meant for another access    -> finding
  FD-LEAK   the proxy holds more fds than before the case       -> finding
  ACCEPTED  an illegal reply reached the guest, or passed
            without a word in the proxy's log                   -> finding

A case whose reply ends the link (EOF, a hang-up) or leaves it out of
step is followed by a re-plug: the agent ejects the device through the
ACPI PCI hot-plug register (hw/acpi/pcihp.c, a write of the slot's bit to
port 0xae08), a fresh hostile remote is hot-plugged in its place, and the
agent programs its BARs where they were at boot.  A proxy that died is booted anew
(``boot``).  Findings are keyed like the other fuzzers' (known issues
match ``outcome``, ``notes`` -- the reply's description -- ``log`` and
``transport``) and tallied in :class:`harness.fuzz.campaign.Summary`.
"""

import collections
import dataclasses
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from ..base import known_issues, procfs
from ..base.errors import HarnessError, QMPError
from ..devices import pci
from ..fuzz.campaign import Summary
from ..fuzz.runner import signal_name
from ..mpqemu.hostile import replies
from ..mpqemu.hostile.model import (DEVICE_ID, IO_BAR, MMIO_BAR, UINT64_MAX, VENDOR_ID,
                                    FunctionModel)
from ..mpqemu.hostile.remote import HostileRemote
from ..mpqemu.hostile.replies import Reply
from .client import AgentTimeout
from .mailbox import Command, Op

TRANSPORT = 'hostile-remote'
DEVID = 'hostile'
SLOT = 4
HANG_S = 0.5                  # beyond what the reply's delays take
LATE_S = 5.0                  # for the vCPU to come back after a hang-up
SLOW_GRACE_S = 10.0           # for a batch late on a busy host to finish anyway
QMP_S = 2.0
EJECT_S = 5.0
IDENTITY = DEVICE_ID << 16 | VENDOR_ID
MARKER_OFFSET = 0xff0         # in the MMIO BAR; no case's access goes there
PCIHP_EJECT_PORT = 0xae08     # hw/acpi/pcihp.c PCI_EJ_BASE, PIIX4
# The proxy is booted anew once its leaked fds reach half its fd limit
# (at most this many): far from EMFILE, which would be a finding of ours.
FD_RELAUNCH_MAX = 4000
OUTCOME_CORRECT = 'correct'
FINDINGS = ('crash', 'exit', 'hang', 'desync', 'fd-leak', 'accepted')   # worst first

# (kind, write, size, offset): offsets into config space or a BAR.
CONFIG_READS = [(pci.VENDOR_ID, 4), (pci.VENDOR_ID, 2), (pci.DEVICE_ID, 2),
                (pci.CLASS_DEVICE, 2), (pci.REVISION_ID, 1), (pci.SUBSYSTEM_VENDOR_ID, 4),
                (pci.INTERRUPT_PIN, 1), (pci.CLASS_DEVICE - 2, 4)]
CONFIG_WRITES = [(0x0c, 1), (0x0d, 1), (0x0c, 2)]      # cache line size, latency timer


@dataclass(frozen=True)
class Access:
    """One access of the agent: ``kind`` 'cfg', 'io' or 'mem' ('reset':
    a system_reset, in a scenario's report)."""
    kind: str
    write: bool
    size: int
    offset: int
    value: int = 0

    def command(self, bdf: int, bars: Dict[int, int]) -> Command:
        if self.kind == 'cfg':
            op = Op.CFG_WRITE if self.write else Op.CFG_READ
            return Command(op, arg=bdf, addr=self.offset, size=self.size, value=self.value)
        base = bars[IO_BAR if self.kind == 'io' else MMIO_BAR]
        op = {('io', False): Op.IO_READ, ('io', True): Op.IO_WRITE,
              ('mem', False): Op.MEM_READ, ('mem', True): Op.MEM_WRITE}[self.kind, self.write]
        return Command(op, addr=base + self.offset, size=self.size, value=self.value)

    def describe(self) -> str:
        if self.kind == 'reset':
            return 'system_reset'
        what = f"{self.kind} {'write' if self.write else 'read'}/{self.size} +{self.offset:#x}"
        return what + (f' = {self.value:#x}' if self.write else '')


@dataclass(frozen=True)
class Case:
    seed: int
    index: int
    access: Access
    reply: Reply
    contents: int          # what the BAR holds at the access before it

    @property
    def families(self) -> List[str]:
        return [self.reply.family]

    def notes(self) -> str:
        return f'{self.access.describe()}; {self.reply.describe()}'

    def to_json(self) -> dict:
        return {'seed': self.seed, 'index': self.index, 'access': asdict(self.access),
                'reply': self.reply.to_json(), 'contents': self.contents}

    @classmethod
    def from_json(cls, data: dict) -> 'Case':
        return cls(data['seed'], data['index'], Access(**data['access']),
                   Reply.from_json(data['reply']), data['contents'])


def generate(seed: int, index: int) -> Case:
    """Case ``index`` of ``seed``: the same on every machine and run."""
    rng = random.Random(f'hostile-remote:{seed}:{index}')
    kind = rng.choice(['cfg', 'cfg', 'io', 'mem'])
    write = rng.random() < 0.4
    if kind == 'cfg':
        offset, size = rng.choice(CONFIG_WRITES if write else CONFIG_READS)
    else:
        size = rng.choice([1, 2, 4])
        offset = rng.randrange(0, 0x100 if kind == 'io' else MARKER_OFFSET, size)
    value = rng.getrandbits(8 * size) if write else 0
    return Case(seed, index, Access(kind, write, size, offset, value), replies.generate(rng),
                rng.getrandbits(32))


@dataclass
class Result:
    outcome: str
    flags: List[str] = field(default_factory=list)
    guest: Optional[int] = None         # what the access read
    expected: Optional[int] = None      # what it should have read
    followups: Tuple[int, ...] = ()
    fd_delta: int = 0
    log: str = ''                       # the proxy's new log lines
    signal: str = ''
    detail: str = ''
    elapsed_s: float = 0.0

    @property
    def is_finding(self) -> bool:
        return self.outcome != OUTCOME_CORRECT

    def match_keys(self, case: Case) -> Dict[str, str]:
        return {'outcome': self.outcome, 'signal': self.signal, 'log': self.log,
                'notes': case.notes(), 'transport': TRANSPORT, 'error': self.detail}


@dataclass
class Target:
    """What a case runs on: the machine, its agent and its hostile remote."""
    vm: object
    agent: object
    peer: HostileRemote
    bdf: int = 0
    bars: Dict[int, int] = field(default_factory=dict)


class Campaign:
    """Cases in order on one machine, re-plugged or re-booted as needed.

    ``boot()`` returns a fresh :class:`Target` (a new machine with the agent
    booted through a new hostile remote, plugged at ``SLOT``)."""

    def __init__(self, boot: Callable[[], Target], out_dir: str, caps,
                 log: Callable[[str], None] = print):
        self.boot = boot
        self.out_dir = out_dir
        self.caps = caps
        self.log = log
        self.issues = known_issues.load()
        self.target: Optional[Target] = None
        self.replugs = 0
        self.boots = 0
        self.killed = 0
        self.slow = 0                 # batches late but not hung (a busy host)
        self._fds = 0
        self._fd_base = 0
        self._fd_relaunch = 0
        self._log_offset = 0
        self.findings: Dict[str, dict] = {}

    # -- the machine

    def _start(self) -> Target:
        if self.target:
            self.target.vm.shutdown()
        self.target = target = self.boot()
        self.boots += 1
        bdf = target.agent.find_device(VENDOR_ID, DEVICE_ID)
        target.bdf = bdf
        target.bars = {i: target.agent.cfg_read(bdf, pci.BASE_ADDRESS_0 + 4 * i, 4)
                       & ~(0x3 if target.peer.model.bars[i].io else 0xf)
                       for i in (IO_BAR, MMIO_BAR)}
        self._fd_base = self._fds = procfs.fd_count(target.vm.qemu.pid) or 0
        limit = procfs.open_files_limit(target.vm.qemu.pid) or 1024
        self._fd_relaunch = min(FD_RELAUNCH_MAX, limit // 2 - self._fd_base)
        self._log_offset = _log_size(target.vm.qemu.log_path)
        return target

    def replug(self) -> None:
        """Eject the device through ACPI and plug a fresh hostile remote."""
        target = self.target
        eject(target)
        peer = HostileRemote(FunctionModel(), workdir=self.out_dir)
        target.vm.plug_peer(DEVID, peer)
        target.peer = peer
        agent, bdf = target.agent, target.bdf
        for index, address in target.bars.items():
            agent.cfg_write(bdf, pci.BASE_ADDRESS_0 + 4 * index, address, 4)
        agent.cfg_write(bdf, pci.COMMAND, pci.COMMAND_IO | pci.COMMAND_MEMORY, 2)
        self.replugs += 1
        self._fds = procfs.fd_count(target.vm.qemu.pid) or 0
        self._log_offset = _log_size(target.vm.qemu.log_path)   # the eject's lines

    # -- one case

    def run_case(self, case: Case) -> Result:
        if self.target is None:
            self._start()
        started = time.monotonic()
        target = self.target
        model, access = target.peer.model, case.access
        marker = 0xa5000000 | (case.index & 0xffffff)
        bar = model.bars[MMIO_BAR]
        bar.contents[MARKER_OFFSET:MARKER_OFFSET + 4] = marker.to_bytes(4, 'little')
        expected = self._prepare(model, case)
        target.peer.arm(case.reply)
        batch = [access.command(target.bdf, target.bars),
                 Command(Op.MEM_READ, addr=target.bars[MMIO_BAR] + MARKER_OFFSET, size=4),
                 Command(Op.CFG_READ, arg=target.bdf, addr=0, size=4)]
        result = Result(OUTCOME_CORRECT, expected=expected)
        hung = False
        timeout = HANG_S + case.reply.delay_s + case.reply.gap_s * case.reply.fragments
        try:
            target.agent.run(batch, timeout_s=timeout)
        except AgentTimeout as err:
            hung = not self._slow(case)
            if hung:
                result.detail = str(err).splitlines()[0][:300]
                target.peer.hang_up()
                try:
                    target.agent.finish_late(LATE_S)
                except AgentTimeout:
                    self.killed += 1
                    target.vm.qemu.kill()
        except HarnessError as err:
            result.detail = str(err).splitlines()[0][:300]
        result.elapsed_s = time.monotonic() - started
        self._classify(case, result, batch, hung, marker)
        self._after(case, result, hung)
        return result

    def _slow(self, case: Case) -> bool:
        """After a batch missed HANG_S: True if it finishes within
        SLOW_GRACE_S after all (a loaded host, not a hang).  A remote
        that stays silent never answers, so it gets no grace."""
        if case.reply.end == replies.END_SILENT:
            return False
        try:
            self.target.agent.finish_late(SLOW_GRACE_S)
        except AgentTimeout:
            return False
        self.slow += 1
        return True

    def _prepare(self, model: FunctionModel, case: Case) -> Optional[int]:
        """Set up what the access meets; returns what a read must get."""
        access = case.access
        mask = (1 << (8 * access.size)) - 1
        if access.kind == 'cfg':
            right = None if access.write else model.config_read(access.offset, access.size)
        else:
            bar = model.bars[IO_BAR if access.kind == 'io' else MMIO_BAR]
            bar.contents[access.offset:access.offset + 4] = case.contents.to_bytes(4, 'little')
            right = None if access.write else case.contents & mask
        if right is None:
            return None
        reply = case.reply
        if not reply.legal() or reply.ends_link:
            return UINT64_MAX & mask
        return (right if reply.value is None else reply.value) & mask

    def _classify(self, case: Case, result: Result, batch: List[Command], hung: bool,
                  marker: int) -> None:
        target, reply, flags = self.target, case.reply, result.flags
        proxy = target.vm.qemu
        result.log = self._new_log(proxy.log_path)
        if not proxy.is_running():
            status = proxy.exitcode
            result.signal = signal_name(status) if status is not None and status < 0 else ''
            flags.append('crash' if result.signal else 'exit')
        else:
            try:
                proxy.qmp('query-status', timeout_s=QMP_S)
            except QMPError as err:
                flags.append('hang')
                result.detail = result.detail or f'QMP: {err}'
            if hung:
                flags.append('hang')
            fds = procfs.fd_count(proxy.pid) or 0
            result.fd_delta = fds - self._fds
            self._fds = fds
            if result.fd_delta > 0:
                flags.append('fd-leak')
        if not flags or flags == ['fd-leak']:
            access, guest = batch[0], batch[0].value
            result.guest = None if case.access.write else guest
            result.followups = (batch[1].value, batch[2].value)
            if not reply.ends_link and batch[1].value != marker:
                flags.append('desync')
            if not reply.legal() and not reply.ends_link:
                read_taken = (not case.access.write
                              and guest != (UINT64_MAX & ((1 << (8 * access.size)) - 1)))
                if read_taken or not result.log.strip():
                    flags.append('accepted')
            elif (reply.legal() and result.expected is not None and guest != result.expected
                  and 'desync' not in flags):
                flags.append('desync')
        for outcome in FINDINGS:
            if outcome in flags:
                result.outcome = outcome
                break

    def _after(self, case: Case, result: Result, hung: bool) -> None:
        """Re-plug, or boot anew, whatever the case left behind."""
        target = self.target
        if not target.vm.qemu.is_running() or 'hang' in result.flags and not hung:
            self._start()
            return
        in_step = (result.followups[1:] == (IDENTITY,) if result.followups else False)
        if (case.reply.ends_link or hung or not in_step or not target.peer.serving
                or target.peer.queued):
            self.replug()
        if self._fds - self._fd_base > self._fd_relaunch:
            self._start()

    def _new_log(self, path: str) -> str:
        size = _log_size(path)
        if size <= self._log_offset:
            return ''
        with open(path, 'rb') as f:
            f.seek(self._log_offset)
            data = f.read(size - self._log_offset)
        self._log_offset = size
        return data.decode(errors='replace')

    # -- the run

    def run(self, seed: int, cases: int, time_limit_s: Optional[float] = None) -> Summary:
        summary = Summary(seed, '.'.join(map(str, self.caps.version)), TRANSPORT)
        families = collections.defaultdict(collections.Counter)
        outcomes = collections.Counter()
        started = time.monotonic()
        for index in range(cases):
            if time_limit_s is not None and time.monotonic() - started > time_limit_s:
                self.log(f'time limit {time_limit_s} s reached after {index} cases')
                break
            case = generate(seed, index)
            result = self.run_case(case)
            summary.cases += 1
            summary.messages += 1
            outcomes[result.outcome] += 1
            summary.slowest_case_s = max(summary.slowest_case_s, result.elapsed_s)
            families[case.reply.family]['tried'] += 1
            families[case.reply.family]['found'] += result.is_finding
            if result.is_finding:
                self.record_finding(case, result)
        summary.elapsed_s = time.monotonic() - started
        summary.outcomes = dict(outcomes)
        summary.families = {name: dict(c) for name, c in sorted(families.items())}
        summary.remotes_started = self.replugs + self.boots
        summary.exit_reasons = {'replugs': self.replugs, 'boots': self.boots,
                                'killed': self.killed, 'slow': self.slow}
        summary.findings = sorted(self.findings.values(), key=lambda f: f['signature'])
        return summary

    def record_finding(self, case: Case, result: Result) -> dict:
        """Count a finding; the first of its signature is replayed alone,
        minimised and saved as a reproducer under ``OUT/findings``."""
        issue = known_issues.lookup(self.issues, result.match_keys(case), self.caps.version)
        signature = f'{result.outcome}:{issue.id if issue else case.reply.family}'
        finding = self.findings.get(signature)
        if finding:
            finding['occurrences'] += 1
            return finding
        reproduced = self.replay(case).outcome == result.outcome
        minimized = self.minimize(case, result) if reproduced else None
        lines = result.log.strip().splitlines()
        finding = self.findings[signature] = {
            'signature': signature, 'transport': TRANSPORT,
            'qemu': '.'.join(map(str, self.caps.version)),
            'outcome': result.outcome, 'signal': result.signal, 'flags': result.flags,
            'known_issue': issue.id if issue else None, 'occurrences': 1,
            'reproduced': reproduced, 'first_case': case.index,
            'guest': result.guest, 'expected': result.expected,
            'followups': list(result.followups), 'fd_delta': result.fd_delta,
            'log': lines[-1] if lines else '', 'log_tail': result.log[-2000:],
            'detail': result.detail, 'notes': case.notes(),
            'reproduce': f'make fuzz FUZZ_TRANSPORT={TRANSPORT} (seed {case.seed}, '
                         f'case {case.index}); the test replays the corpus',
            'case': case.to_json(),
            'minimized': minimized.to_json() if minimized else None}
        path = os.path.join(self.out_dir, 'findings', f'{_file_name(signature)}.json')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w', encoding='utf-8') as f:
            json.dump(finding, f, indent=2)
        finding['path'] = path
        return finding

    def replay(self, case: Case, attempts: int = 3) -> Result:
        """Run ``case`` alone until it shows a finding (or ``attempts``)."""
        for _ in range(attempts):
            result = self.run_case(case)
            if result.is_finding:
                break
        return result

    def minimize(self, case: Case, result: Result) -> Case:
        """The case with each of its reply's fields set back to the right
        reply's while the outcome stays the same."""
        for name, value in case.reply.to_json().items():
            if name == 'family':
                continue
            fewer = dataclasses.replace(case.reply, **{name: getattr(replies.CORRECT, name)})
            if name == 'fds' and len(value) > 1:
                fewer = dataclasses.replace(case.reply, fds=tuple(value[:1]))
            smaller = dataclasses.replace(case, reply=fewer)
            if self.run_case(smaller).outcome == result.outcome:
                case = smaller
        return case

    def close(self) -> None:
        if self.target:
            self.target.vm.shutdown()
            self.target = None


def eject(target: Target) -> None:
    """The agent ejects the hostile device (ACPI PCI hot-plug, PIIX4) and
    QEMU confirms it (DEVICE_DELETED), so a new one can take its slot."""
    target.agent.one(Op.IO_WRITE, addr=PCIHP_EJECT_PORT, size=4, value=1 << SLOT)
    target.vm.qemu.get_event('DEVICE_DELETED', EJECT_S)


def _log_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _file_name(signature: str) -> str:
    return ''.join(c if c.isalnum() or c in '-_' else '_' for c in signature)
