"""Running one case on a remote, and what came of it.

After the case the harness asks the remote a follow-up (two config reads
with known answers) within a deadline, and classifies:

  answered  the remote processed (or refused) everything and still answers
  exited    it exited with a status >= 0, usually with a log line saying why
            (hw/remote/message.c ends its loop on any invalid message)
  stalled   a case that leaves the stream mid-message, and an idle remote
            waiting for the rest: expected
  CRASH     it died by a signal                                 -> finding
  HANG      alive, but no answer within the deadline            -> finding

A silent remote is sampled (CPU time, /proc state) to tell a busy loop
from a blocked one before it counts as hung.  A case that ends the remote
gets a fresh one from the pool; after a surviving one the remote is
restored (:meth:`FuzzRemote.restore`).
"""

import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from ...base import procfs
from ...devices import pci
from .. import protocol as p
from ...qemu.guestmem import GuestMemory
from .cases import Case, open_fd
from .remotes import FOLLOWUP_TIMEOUT_S, FuzzRemote, RemotePool, log_tail

STALL_TIMEOUT_S = 0.2           # the follow-up after a case that may leave the stream
                                # mid-message (FOLLOWUP_TIMEOUT_S otherwise)
HANG_CONFIRM_S = 2.0            # more silence before an idle remote counts as hung
BUSY_CONFIRM_S = 0.5            # ... and before a busy one does
BUSY_SAMPLE_S = 0.2             # CPU sampling window to tell busy from idle
BUSY_FRACTION = 0.5             # of one CPU, over BUSY_SAMPLE_S
EXIT_TIMEOUT_S = 3.0            # from closed socket (or our hang-up) to exit status
MARKER = ((pci.VENDOR_ID, 2, 0x1000), (pci.DEVICE_ID, 2, 0x0012))

OUTCOME_ANSWERED = 'answered'
OUTCOME_EXITED = 'exited'
OUTCOME_STALLED = 'stalled'
OUTCOME_CRASH = 'crash'
OUTCOME_HANG = 'hang'
FINDINGS = (OUTCOME_CRASH, OUTCOME_HANG)


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

    @property
    def is_finding(self) -> bool:
        return self.outcome in FINDINGS

    def match_keys(self, case: Case) -> Dict[str, str]:
        return {'outcome': self.outcome, 'signal': self.signal, 'log': self.log,
                'notes': case.notes()}


def _signal_name(status: int) -> str:
    try:
        return signal.Signals(-status).name
    except ValueError:
        return f'signal {-status}'


class CaseRunner:
    """Sends cases to remotes and classifies what happens."""

    def __init__(self, pool: RemotePool, memory: GuestMemory, workdir: str):
        self.pool = pool
        self.memory = memory
        self.workdir = workdir
        self.remote: Optional[FuzzRemote] = None
        self.wire_messages = 0

    def current(self, setup: bool = True) -> FuzzRemote:
        if self.remote is None:
            self.remote = self.pool.take()
        self.remote.wait_started()
        if setup and not self.remote.ready:
            self.remote.setup(self.memory)
        return self.remote

    def end_remote(self) -> str:
        tail = ''
        if self.remote is not None:
            self.wire_messages += self.remote.proxy.requests
            tail = self.pool.retire(self.remote)
            self.remote = None
        return tail

    def run(self, case: Case) -> Result:
        started = time.monotonic()
        if case.fresh and self.remote is not None and self.remote.ready:
            self.end_remote()
        remote = self.current(setup=not case.fresh)
        opened: List[int] = []
        try:
            fds = []
            for kind in case.fds:
                fd, to_close = open_fd(kind, self.workdir, self.memory.regions[0].fd)
                fds.append(fd)
                opened += to_close
            result = self._run(remote, case, fds)
        finally:
            p.close_fds(opened)
        if result.outcome == OUTCOME_ANSWERED:
            try:
                if not remote.ready:
                    remote.setup(self.memory)
                else:
                    remote.restore(self.memory, case.touches)
            except p.RemoteGone as err:
                result = self._ended(remote, err, f'while restoring after the case: {err}')
            except p.RemoteError as err:
                result = self._silent(remote, case, err, marker=False)
        if result.outcome != OUTCOME_ANSWERED:
            result.log = self.end_remote() or result.log
        result.elapsed_s = time.monotonic() - started
        return result

    def _run(self, remote: FuzzRemote, case: Case, fds: List[int]) -> Result:
        link = remote.link
        owed = 0
        try:
            for step in case.steps:
                if step.barrier:
                    for _ in range(owed):
                        link.recv(FOLLOWUP_TIMEOUT_S)
                    owed = 0
                if step.truncate:
                    os.ftruncate(fds[step.truncate[0]], step.truncate[1])
                if step.data:
                    link.send_raw(step.data, [fds[i] for i in step.fds], FOLLOWUP_TIMEOUT_S)
                    self.wire_messages += 1
                owed += step.reply
            if case.hangup:
                link.sock.shutdown(socket.SHUT_WR)
                return self._after_hangup(remote)
            for offset, size, _ in MARKER:
                link.send(p.pci_cfg_read(offset, size), FOLLOWUP_TIMEOUT_S)
                self.wire_messages += 1
            timeout = STALL_TIMEOUT_S if case.may_stall else FOLLOWUP_TIMEOUT_S
            got = self._await_marker(link, timeout)
            return Result(OUTCOME_ANSWERED, f'{got - len(MARKER)} replies before the follow-up')
        except p.RemoteGone as err:
            return self._ended(remote, err, str(err))
        except p.RemoteTimeout as err:
            return self._silent(remote, case, err)
        except p.ProtocolError as err:
            # The remote only ever sends RET: anything else is its bug.
            return Result(OUTCOME_HANG if remote.process.is_running() else OUTCOME_CRASH,
                          f'malformed reply: {err}')

    def _await_marker(self, link: p.Link, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        values: List[Optional[int]] = []
        want = [v for _, _, v in MARKER]
        while values[-len(want):] != want:
            reply = link.recv(max(0.0, deadline - time.monotonic()))
            values.append(p.decode_ret(reply))
        return len(values)

    def _after_hangup(self, remote: FuzzRemote) -> Result:
        if remote.process.wait_exit(EXIT_TIMEOUT_S):
            return self._exit_result(remote, 'hung up mid-message')
        return Result(OUTCOME_HANG, f'still running {EXIT_TIMEOUT_S} s after the proxy hung up',
                      remote_state=self._state(remote))

    def _ended(self, remote: FuzzRemote, err: Exception, detail: str) -> Result:
        if remote.process.wait_exit(EXIT_TIMEOUT_S):
            return self._exit_result(remote, detail)
        return Result(OUTCOME_HANG, f'socket closed but the process still runs after '
                      f'{EXIT_TIMEOUT_S} s ({err})', remote_state=self._state(remote))

    def _exit_result(self, remote: FuzzRemote, detail: str) -> Result:
        status = remote.process.exitcode
        log = log_tail(remote.process)
        if status < 0:
            return Result(OUTCOME_CRASH, detail, status, _signal_name(status), log)
        return Result(OUTCOME_EXITED, detail, status, '', log)

    def _silent(self, remote: FuzzRemote, case: Case, err: Exception,
                marker: bool = True) -> Result:
        """No answer in time: exited meanwhile, busy, or blocked?  With
        ``marker`` the follow-up is still owed, else any late reply will do
        (the link is then out of step and the remote is replaced anyway)."""
        pid = remote.pid
        if not remote.process.is_running():
            return self._exit_result(remote, f'exited without closing first ({err})')
        before = procfs.cpu_seconds(pid)
        time.sleep(BUSY_SAMPLE_S)       # a measurement window, not a settle delay
        after = procfs.cpu_seconds(pid)
        if before is None or after is None or not remote.process.is_running():
            return self._exit_result(remote, f'exited while silent ({err})')
        busy = (after - before) / BUSY_SAMPLE_S
        state = self._state(remote)
        if busy < BUSY_FRACTION and case.may_stall:
            return Result(OUTCOME_STALLED, 'idle, waiting for the rest of a misframed message',
                          remote_state=state)
        how = 'busy' if busy >= BUSY_FRACTION else 'idle'
        confirm = BUSY_CONFIRM_S if how == 'busy' else HANG_CONFIRM_S
        try:
            if marker:
                self._await_marker(remote.link, confirm)
                return Result(OUTCOME_ANSWERED, f'answered late ({how}; overloaded host?)')
            remote.link.recv(confirm)
            result = Result(OUTCOME_ANSWERED, f'restore answered late ({how}; overloaded host?)')
            self.end_remote()
            return result
        except p.RemoteGone as gone:
            return self._ended(remote, gone, str(gone))
        except p.RemoteTimeout:
            waited = FOLLOWUP_TIMEOUT_S + BUSY_SAMPLE_S + confirm
            return Result(OUTCOME_HANG, f'no answer for {waited:.1f} s and {how} '
                          f'({busy:.0%} CPU): ' + ('a loop' if how == 'busy' else 'blocked'),
                          remote_state=self._state(remote))

    @staticmethod
    def _state(remote: FuzzRemote) -> str:
        pid = remote.pid
        return (f'state={procfs.state(pid) or "?"} wchan={procfs.read(pid, "wchan")} '
                f'syscall={procfs.read(pid, "syscall").split(" ")[0]}')
