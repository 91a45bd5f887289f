"""Tie every process the suite starts to the life of whatever runs it.

Two ties, one for each way a process can be left behind:

``popen()`` / ``preexec()``
    A child (QEMU, a host tool) gets PR_SET_PDEATHSIG: the kernel SIGKILLs
    it when the harness process that started it dies, by SIGKILL, a crash,
    or Avocado killing a timed-out test.  prctl(2): the signal fires when
    the *thread* that forked the child exits, and Avocado runs setUp, the
    test and tearDown each in a short-lived worker thread of its own
    (avocado/core/test.py ``_catch_test_status``): a QEMU forked there
    would be killed as the test method returns, before tearDown could shut
    it down.  ``popen()`` therefore forks from one thread that lives as
    long as the process.

``tie_to_job()``
    Avocado runs each test in a child of an ``avocado-runner-*`` process,
    itself a child of the job (``avocado run``).  A job that stops early
    (--failfast, SIGINT, SIGTERM, --job-timeout) can leave the runner
    behind, re-parented to init and still holding the test and its QEMUs;
    a runner whose test ignores SIGTERM waits for it for ever.  So, in the
    test process:

    - it gets PR_SET_PDEATHSIG as well: it dies with its runner;
    - it becomes a child subreaper: a grandchild whose own parent dies is
      re-parented to the test, not to init, and stays findable;
    - a watcher process (``python -m harness.base.lifeline``, in a session of
      its own, so a Ctrl-C meant for the job does not reach it) waits on
      pidfds of the job, the runner and the test.  Once the job or the
      runner is gone it SIGKILLs the runner, the test and everything below
      them; once the test is gone it kills whatever of the test's
      descendants outlived it (it keeps their list, refreshed every
      second).  It logs what it killed, and how long that took, to the
      file it is given.
"""

import concurrent.futures
import ctypes
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import paths, procfs
from .waiting import WaitTimeout, wait_until

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)

WATCH_INTERVAL_S = 1.0
# SIGSTOP what is found, look again for children forked meanwhile, then
# SIGKILL everything: a tree cannot grow while it is being killed.
FREEZE_ROUNDS = 5
GONE_TIMEOUT_S = 5.0
GONE_POLL_S = 0.01
RUNNER_MARKERS = ('avocado.plugins.runners.', 'avocado-runner-')


def preexec() -> Callable[[], None]:
    """A ``preexec_fn`` for subprocess that SIGKILLs the child when its
    parent dies.  Call it in the parent, right before starting the child."""
    parent_pid = os.getpid()

    def _setup() -> None:
        # Between fork and exec: keep to async-signal-safe calls.
        if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(127)
        # The parent may have died before prctl took effect: we were then
        # reparented, and nothing would ever kill us.
        if os.getppid() != parent_pid:
            os._exit(127)
    return _setup


_spawner: Optional[Tuple[int, concurrent.futures.ThreadPoolExecutor]] = None
_spawner_lock = threading.Lock()


def _spawner_thread() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread of this process that forks long-lived children (a
    new one after fork(): threads do not survive it)."""
    global _spawner               # pylint: disable=global-statement
    with _spawner_lock:
        if _spawner is None or _spawner[0] != os.getpid():
            _spawner = (os.getpid(), concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix='lifeline-spawner'))
        return _spawner[1]


def popen(argv: Sequence[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen(argv, **kwargs)`` for a child that must die with
    this process, and only then: forked from a thread that lives as long
    as the process, with PR_SET_PDEATHSIG."""
    kwargs['preexec_fn'] = preexec()
    return _spawner_thread().submit(subprocess.Popen, list(argv), **kwargs).result()


def _is_runner(pid: int) -> bool:
    return any(marker in arg for arg in procfs.cmdline(pid)[:3] for marker in RUNNER_MARKERS)


def _is_job(pid: int) -> bool:
    argv = procfs.cmdline(pid)
    return any(os.path.basename(a) == 'avocado' for a in argv[:2]) and 'run' in argv


def avocado_job() -> Optional[Tuple[int, int]]:
    """(job pid, runner pid) when this process is an Avocado test run by
    a runner of a live job, else None (pytest, a shell, a plain script)."""
    runner = os.getppid()
    job = procfs.ppid(runner)
    if job and _is_runner(runner) and _is_job(job):
        return job, runner
    return None


def tie_to_job(log_path: str) -> Optional[subprocess.Popen]:
    """Make sure nothing this test process starts outlives its Avocado
    job (see the module docstring).  Returns the watcher, or None when
    not run by an Avocado job."""
    found = avocado_job()
    if not found:
        return None
    job, runner = found
    if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), 'prctl(PR_SET_PDEATHSIG)')
    if os.getppid() != runner:            # the runner died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), 'prctl(PR_SET_CHILD_SUBREAPER)')
    with open(log_path, 'ab') as log:
        return subprocess.Popen(
            [sys.executable, '-m', 'harness.base.lifeline', str(job), str(runner), str(os.getpid())],
            cwd=paths.REPO_DIR, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            close_fds=True, start_new_session=True)


def _alive(pid: int, started: Optional[int]) -> bool:
    """Whether ``pid`` is still the process that started at ``started``
    and has not finished (a zombie has)."""
    return (started is not None and procfs.start_time(pid) == started
            and procfs.state(pid) not in (None, 'Z', 'X'))


Processes = Dict[int, Optional[int]]       # pid: start time (see procfs.start_time)


def kill_processes(pids: Processes) -> Processes:
    """SIGKILL each ``pid: start time`` that is still that process, after
    stopping them all; returns those killed."""
    me = os.getpid()
    victims = {p: started for p, started in pids.items() if p != me and _alive(p, started)}
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in victims:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    return victims


def kill_trees(roots: Sequence[int]) -> Processes:
    """SIGKILL ``roots`` and all their descendants: found and stopped
    first, in rounds, so that nothing forks while the tree is killed."""
    me = os.getpid()
    stopped: Processes = {}
    for _ in range(FREEZE_ROUNDS):
        found = [p for p in list(roots) + procfs.descendants(roots)
                 if p not in stopped and p != me and procfs.state(p) not in (None, 'Z', 'X')]
        if not found:
            break
        for pid in found:
            stopped[pid] = procfs.start_time(pid)
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return stopped


def wait_gone(pids: Processes, timeout_s: float = GONE_TIMEOUT_S) -> List[int]:
    """Wait for processes we cannot reap (not our children) to finish;
    returns those still there at the deadline."""
    def left() -> List[int]:
        return [p for p, started in pids.items() if _alive(p, started)]
    try:
        wait_until(lambda: not left(), timeout_s, 'the killed processes to end', GONE_POLL_S)
        return []
    except WaitTimeout:
        return left()


def _pidfd(pid: int) -> Optional[int]:
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def _describe(pids: Sequence[int], names: Dict[int, str]) -> str:
    return ', '.join(f'{p} ({names.get(p, "?")})' for p in pids) or 'nothing'


def _names(pids) -> Dict[int, str]:
    return {p: ' '.join(procfs.cmdline(p))[:120] for p in pids}


def watch(job: int, runner: int, test: int) -> str:
    """The watcher's loop (see the module docstring); returns what it did."""
    fds = {role: _pidfd(pid) for role, pid in (('job', job), ('runner', runner), ('test', test))}
    poller = select.poll()
    for fd in fds.values():
        if fd is not None:
            poller.register(fd, select.POLLIN)
    gone = [role for role, fd in fds.items() if fd is None]
    below: Processes = {}
    while not gone:
        ready = {fd for fd, _ in poller.poll(WATCH_INTERVAL_S * 1000)}
        gone = [role for role, fd in fds.items() if fd in ready]
        if not gone:
            below = {p: procfs.start_time(p) for p in procfs.descendants([test])
                     if p != os.getpid()}
    started = time.monotonic()
    names = _names(list(below) + [runner, test] + procfs.descendants([runner, test]))
    killed: Processes = {}
    if 'test' in gone:            # what it left behind, as last seen
        killed.update(kill_processes(below))
    if 'job' in gone or 'runner' in gone:
        killed.update(kill_trees([runner, test]))
    left = wait_gone(killed)
    took = time.monotonic() - started
    return (f"lifeline: {' and '.join(gone)} ended; killed {_describe(list(killed), names)} "
            f"in {took * 1000:.0f} ms" + (f"; still there: {left}" if left else ''))


def main(argv: Sequence[str]) -> int:
    # In its own session already; a terminal's SIGHUP must not end it early.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        job, runner, test = (int(a) for a in argv)
    except ValueError:
        print('usage: python -m harness.base.lifeline JOB_PID RUNNER_PID TEST_PID', file=sys.stderr)
        return 2
    print(watch(job, runner, test), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
