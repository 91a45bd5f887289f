"""Running one case on a remote, and what came of it.

After the case the harness asks the remote a follow-up (two config reads
with known answers, in the transport's protocol) within a deadline, and
classifies:

  answered  the remote processed (or refused) everything and still answers
  exited    it exited with a status >= 0, usually with a log line saying why
            (hw/remote/message.c ends its loop on any invalid message; a
            vfio-user server whose client hung up exits by auto-shutdown)
  stalled   a case that leaves the stream mid-message, and an idle remote
            waiting for the rest: expected
  CRASH     it died by a signal                                 -> finding
  HANG      alive, but no answer within the deadline            -> finding
  FD-LEAK   answered, but after the restore it holds more fds than after
            its set-up (transports that track fds)              -> finding

A silent remote is sampled (CPU time per thread, /proc state) to tell a
busy loop from a blocked one before it counts as hung; a hung one's
threads are then unwound with gdb (harness/qemu/backtrace.py), so the
finding says where it looped or waited even when the replay answers.  A case that ends the remote
gets a fresh one from the pool; after a surviving one the remote is
restored (:meth:`FuzzRemote.restore`).
"""

import os
import signal
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from ..base import procfs
from ..base.fdstream import ProtocolError, RemoteError, RemoteGone, RemoteTimeout, close_fds
from ..qemu import backtrace
from ..qemu.guestmem import GuestMemory
from ..qemu.process import QEMUProcess
from .cases import Case, open_fd
from .transport import FuzzRemote, Pool

FOLLOWUP_TIMEOUT_S = 0.5        # the follow-up after a case that should be answered

STALL_TIMEOUT_S = 0.2           # the follow-up after a case that may leave the stream
                                # mid-message (FOLLOWUP_TIMEOUT_S otherwise)
HANG_CONFIRM_S = 2.0            # more silence before an idle remote counts as hung
# ... and before a busy one does: long enough that a remote starved by a
# loaded host (other tests beside the fuzzer) catches up -- 0.5 s was not
# (a 'hang busy' that did not reproduce alone, once in ~10 CI runs).
BUSY_CONFIRM_S = 3.0
BUSY_SAMPLE_S = 0.2             # CPU sampling window to tell busy from idle
BUSY_FRACTION = 0.5             # of one CPU used or wanted (run + run-queue wait)
                                # over BUSY_SAMPLE_S: a loop starved by a loaded
                                # host gets 20-45% but wants all of it
EXIT_TIMEOUT_S = 3.0            # from closed socket (or our hang-up) to exit status
LOG_TAIL_LINES = 8
# The remotes run with this trace (the proxy transport waits for it: see
# harness/mpqemu/fuzz/remotes.py); its lines are noise in a log tail.
RESET_TRACE_EVENT = 'lsi_reset'

OUTCOME_ANSWERED = 'answered'
OUTCOME_EXITED = 'exited'
OUTCOME_STALLED = 'stalled'
OUTCOME_CRASH = 'crash'
OUTCOME_HANG = 'hang'
OUTCOME_FD_LEAK = 'fd-leak'
FINDINGS = (OUTCOME_CRASH, OUTCOME_HANG, OUTCOME_FD_LEAK)


def log_tail(process: QEMUProcess) -> str:
    """The last lines of a remote's log, without our reset trace lines."""
    lines = [line for line in process.log_tail(LOG_TAIL_LINES * 50).splitlines()
             if not line.startswith(RESET_TRACE_EVENT)]
    return '\n'.join(lines[-LOG_TAIL_LINES:])


@dataclass
class Result:
    """What came of one case (see the module docstring for the outcomes)."""
    outcome: str
    detail: str = ''                 # why, in words
    exit_status: Optional[int] = None
    signal: str = ''
    log: str = ''                    # the remote's last log line(s) where it ended
    elapsed_s: float = 0.0
    remote_state: str = ''
    backtrace: str = ''              # a hung remote's threads (gdb), while still hung

    @property
    def is_finding(self) -> bool:
        return self.outcome in FINDINGS

    def match_keys(self, case: Case, transport: str) -> Dict[str, str]:
        """What a known issue's "match" is compared with."""
        return {'outcome': self.outcome, 'signal': self.signal, 'log': self.log,
                'notes': case.notes(), 'transport': transport}


def signal_name(status: int) -> str:
    """SIGABRT for an exit status of -6 (subprocess's convention)."""
    try:
        return signal.Signals(-status).name
    except ValueError:
        return f'signal {-status}'


class CaseRunner:
    """Sends cases to remotes and classifies what happens."""

    def __init__(self, pool: Pool, memory: GuestMemory, workdir: str, tracks_fds: bool = False):
        self.pool = pool
        self.memory = memory
        self.workdir = workdir
        self.tracks_fds = tracks_fds
        self.remote: Optional[FuzzRemote] = None
        self.fd_baseline: Optional[int] = None    # the current remote's, after set-up
        self.wire_messages = 0

    def current(self, setup: bool = True) -> FuzzRemote:
        if self.remote is None:
            self.remote = self.pool.take()
            self.fd_baseline = None
        self.remote.wait_started()
        if setup and not self.remote.ready:
            self.remote.setup(self.memory)
        return self.remote

    def end_remote(self) -> str:
        tail = ''
        if self.remote is not None:
            self.wire_messages += self.remote.requests
            tail = self.pool.retire(self.remote)
            self.remote = None
        return tail

    def run(self, case: Case) -> Result:
        started = time.monotonic()
        if case.fresh and self.remote is not None and self.remote.ready:
            self.end_remote()
        remote = self.current(setup=not case.fresh)
        if self.tracks_fds and self.fd_baseline is None and remote.ready:
            self.fd_baseline = procfs.fd_count(remote.pid)
        opened: List[int] = []
        try:
            fds = []
            for kind in case.fds:
                fd, to_close = open_fd(kind, self.workdir, self.memory.regions[0].fd)
                fds.append(fd)
                opened += to_close
            result = self._run(remote, case, fds)
        finally:
            close_fds(opened)
        if result.outcome == OUTCOME_ANSWERED:
            try:
                if not remote.ready:
                    remote.setup(self.memory)
                else:
                    remote.restore(self.memory, case.touches)
            except RemoteGone as err:
                result = self._ended(remote, err, f'while restoring after the case: {err}')
            except RemoteError as err:
                result = self._silent(remote, case, err, marker=False)
        if result.outcome == OUTCOME_ANSWERED and self.tracks_fds:
            result = self._check_fds(remote, result)
        if result.outcome != OUTCOME_ANSWERED:
            result.log = self.end_remote() or result.log
        result.elapsed_s = time.monotonic() - started
        return result

    def _run(self, remote: FuzzRemote, case: Case, fds: List[int]) -> Result:
        owed = 0
        try:
            for step in case.steps:
                if step.barrier:
                    for _ in range(owed):
                        remote.recv_any(FOLLOWUP_TIMEOUT_S)
                    owed = 0
                if step.truncate:
                    os.ftruncate(fds[step.truncate[0]], step.truncate[1])
                if step.data:
                    remote.send_raw(step.data, [fds[i] for i in step.fds], FOLLOWUP_TIMEOUT_S)
                    self.wire_messages += 1
                owed += step.reply
            if case.hangup:
                remote.hangup()
                return self._after_hangup(remote)
            sent = remote.send_followup(FOLLOWUP_TIMEOUT_S)
            self.wire_messages += sent
            timeout = STALL_TIMEOUT_S if case.may_stall else FOLLOWUP_TIMEOUT_S
            got = remote.await_followup(timeout)
            return Result(OUTCOME_ANSWERED, f'{got - sent} replies before the follow-up')
        except RemoteGone as err:
            return self._ended(remote, err, str(err))
        except RemoteTimeout as err:
            return self._silent(remote, case, err)
        except ProtocolError as err:
            # A reply the protocol does not allow is the remote's bug.
            return Result(OUTCOME_HANG if remote.process.is_running() else OUTCOME_CRASH,
                          f'malformed reply: {err}')

    def _check_fds(self, remote: FuzzRemote, result: Result) -> Result:
        """After set-up and after each restore the remote should hold the
        same fds: more means it kept some a case gave it."""
        count = procfs.fd_count(remote.pid)
        if count is None:
            return result
        if self.fd_baseline is None:
            self.fd_baseline = count
            return result
        if count > self.fd_baseline:
            grew = count - self.fd_baseline
            self.fd_baseline = count            # report each growth once
            return Result(OUTCOME_FD_LEAK, f'{grew} more fds after the restore than before '
                          f'the case ({count} open)', remote_state=self._state(remote))
        return result

    def _after_hangup(self, remote: FuzzRemote) -> Result:
        if remote.process.wait_exit(EXIT_TIMEOUT_S):
            return self._exit_result(remote, 'hung up mid-message')
        return self._hang(remote, f'still running {EXIT_TIMEOUT_S} s after the proxy hung up')

    def _ended(self, remote: FuzzRemote, err: Exception, detail: str) -> Result:
        if remote.process.wait_exit(EXIT_TIMEOUT_S):
            return self._exit_result(remote, detail)
        return self._hang(remote, f'socket closed but the process still runs after '
                          f'{EXIT_TIMEOUT_S} s ({err})')

    def _exit_result(self, remote: FuzzRemote, detail: str) -> Result:
        status = remote.process.exitcode
        log = log_tail(remote.process)
        if status < 0:
            return Result(OUTCOME_CRASH, detail, status, signal_name(status), log)
        return Result(OUTCOME_EXITED, detail, status, '', log)

    def _silent(self, remote: FuzzRemote, case: Case, err: Exception,
                marker: bool = True) -> Result:
        """No answer in time: exited meanwhile, busy, or blocked?  With
        ``marker`` the follow-up is still owed, else any late reply will do
        (the link is then out of step and the remote is replaced anyway)."""
        pid = remote.pid
        if not remote.process.is_running():
            return self._exit_result(remote, f'exited without closing first ({err})')
        before, wanted_before = backtrace.thread_cpu(pid), procfs.cpu_wanted_seconds(pid)
        time.sleep(BUSY_SAMPLE_S)       # a measurement window, not a settle delay
        after, wanted_after = backtrace.thread_cpu(pid), procfs.cpu_wanted_seconds(pid)
        if not before or not after or not remote.process.is_running():
            return self._exit_result(remote, f'exited while silent ({err})')
        busy = (sum(after.values()) - sum(before.values())) / BUSY_SAMPLE_S
        wanted = ((wanted_after - wanted_before) / BUSY_SAMPLE_S
                  if wanted_before is not None and wanted_after is not None else busy)
        state = self._state(remote)
        looping = max(busy, wanted) >= BUSY_FRACTION
        if not looping and case.may_stall:
            return Result(OUTCOME_STALLED, 'idle, waiting for the rest of a misframed message',
                          remote_state=state)
        how = 'busy' if looping else 'idle'
        confirm = BUSY_CONFIRM_S if how == 'busy' else HANG_CONFIRM_S
        try:
            if marker:
                remote.await_followup(confirm)
                return Result(OUTCOME_ANSWERED, f'answered late ({how}; overloaded host?)')
            remote.recv_any(confirm)
            result = Result(OUTCOME_ANSWERED, f'restore answered late ({how}; overloaded host?)')
            self.end_remote()
            return result
        except RemoteGone as gone:
            return self._ended(remote, gone, str(gone))
        except ProtocolError as err:
            return self._hang(remote, f'malformed late reply: {err}')
        except RemoteTimeout:
            waited = FOLLOWUP_TIMEOUT_S + BUSY_SAMPLE_S + confirm
            threads = backtrace.busy_threads(pid, before, BUSY_SAMPLE_S, after)
            return self._hang(remote, f'no answer for {waited:.1f} s and {how} '
                              f'({busy:.0%} CPU, {wanted:.0%} wanted'
                              + (f': {threads}' if threads else '') + '): '
                              + ('a loop' if how == 'busy' else 'blocked'))

    def _hang(self, remote: FuzzRemote, detail: str) -> Result:
        """A live remote that does not answer: where it is, while it is."""
        return Result(OUTCOME_HANG, detail, remote_state=self._state(remote),
                      backtrace=backtrace.backtraces(remote.pid))

    @staticmethod
    def _state(remote: FuzzRemote) -> str:
        pid = remote.pid
        return (f'state={procfs.state(pid) or "?"} wchan={procfs.read(pid, "wchan")} '
                f'syscall={procfs.read(pid, "syscall").split(" ")[0]}')
