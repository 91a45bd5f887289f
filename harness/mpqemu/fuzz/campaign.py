"""A fuzzing run: cases in order, the tally, and what is kept of findings.

:class:`Fuzzer` sends cases ``0, 1, 2, ...`` of its seed until enough
messages went out (or a time limit passed) and tallies their outcomes in
a :class:`Summary`.  Each distinct finding (crash or hang, by
:func:`signature`) is replayed alone on a fresh remote (``reproduced``),
shrunk step by step while it still reproduces, and saved as JSON under
``OUT/findings/`` with the exact bytes (hex), the fds (by kind), the
outcome and the remote's log tail; known upstream bugs
(``tests/known_issues``) are recognised as such.  A case that overruns
CASE_DEADLINE_S is a harness hang, a bug here; a harness that hangs
despite every deadline is stopped by a watchdog.
"""

import collections
import faulthandler
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

from ...base import known_issues
from ...qemu.binary import Capabilities
from ...qemu.guestmem import GuestMemory
from .cases import RAM_BYTES, RAM_GPA, Case, Layout
from .families import generate
from .remotes import RemotePool
from .runner import OUTCOME_EXITED, CaseRunner, Result

CASE_DEADLINE_S = 15.0          # everything a case does, replay excluded
WATCHDOG_S = 120.0              # hard stop of the whole process (faulthandler)
SAVED_PER_SIGNATURE = 3         # finding JSON files kept per distinct signature
MINIMIZE_MAX_REPLAYS = 12


@dataclass
class Finding:
    """A crash or hang: the case, what came of it, and what is known about it."""
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
            'reproduce': f'python -m harness.tools.fuzz --replay FILE  '
                         f'(or --seed {self.case.seed} --case {self.case.index})',
            'case': self.case.to_json(),
            'minimized': self.minimized.to_json() if self.minimized else None,
        }


def _normalize_log(line: str) -> str:
    """A log line with its numbers (pids, addresses, sizes) replaced by N."""
    return re.sub(r'\b(?:0x)?[0-9a-fA-F]*[0-9][0-9a-fA-F]*\b', 'N', line).strip()


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
    """The tally of a run, as written to ``summary.json``."""
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

    def run(self, messages: int, time_limit_s: Optional[float] = None) -> Summary:
        summary = Summary(self.seed, self.qemu)
        outcomes: collections.Counter = collections.Counter()
        exits: collections.Counter = collections.Counter()
        started = time.monotonic()
        index = 0
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


def format_summary(summary: Summary) -> str:
    """The summary in a few lines, for a terminal or a job log."""
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
