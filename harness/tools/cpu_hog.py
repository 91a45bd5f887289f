"""A CPU hog: busy workers beside a run, to see what a loaded host does
to the suite (harness/tools/soak.py runs some of its runs beside one).

    python -m harness.tools.cpu_hog --threads 2 --limit-s 600

Each worker is a process of its own spinning on integer arithmetic (Python
threads would share one core under the GIL).  Bounded three ways: each
worker stops at ``--limit-s``; a worker dies with the hog (PR_SET_PDEATHSIG)
and the hog with whoever started it through ``start()``; ``stop()`` kills
the hog's whole tree and waits until it is gone.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import List, Optional, Sequence

from ..base import lifeline, paths

DEFAULT_THREADS = 2
DEFAULT_LIMIT_S = 3600.0
SPINS_PER_CLOCK_READ = 100_000
READY_TIMEOUT_S = 10.0


def spin(until: float) -> None:
    """Integer arithmetic until the monotonic clock reaches ``until``."""
    value = 1
    while time.monotonic() < until:
        for _ in range(SPINS_PER_CLOCK_READ):
            value = (value * 1103515245 + 12345) & 0xffffffff


def run_workers(threads: int, limit_s: float) -> int:
    """Fork ``threads`` spinning workers; wait for them (the hog's process)."""
    until = time.monotonic() + limit_s
    workers = []
    for _ in range(threads):
        die_with_parent = lifeline.preexec()
        pid = os.fork()
        if pid == 0:
            die_with_parent()
            spin(until)
            os._exit(0)
        workers.append(pid)
    print(f'cpu_hog: {threads} workers {workers} for at most {limit_s:g} s', flush=True)
    for pid in workers:
        os.waitpid(pid, 0)
    return 0


class CpuHog:
    """``threads`` busy workers from ``start()`` until ``stop()``."""

    def __init__(self, threads: int = DEFAULT_THREADS, limit_s: float = DEFAULT_LIMIT_S,
                 env: Optional[dict] = None):
        self.threads = threads
        self.limit_s = limit_s
        self.env = env
        self.proc: Optional[subprocess.Popen] = None
        self.killed: List[int] = []         # the hog and its workers, once stopped

    def start(self) -> 'CpuHog':
        self.proc = lifeline.popen(
            [sys.executable, '-m', 'harness.tools.cpu_hog', '--threads', str(self.threads),
             '--limit-s', str(self.limit_s)],
            cwd=paths.REPO_DIR, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, start_new_session=True)
        return self

    def stop(self) -> None:
        """Kill the hog and its workers; raises if any is still there
        lifeline.GONE_TIMEOUT_S later."""
        if self.proc is None:
            return
        killed = lifeline.kill_trees([self.proc.pid])
        self.killed = sorted(killed)
        self.proc.wait()
        self.proc = None
        left = lifeline.wait_gone(killed)
        if left:
            raise RuntimeError(f'cpu_hog: processes {left} still there after SIGKILL')

    def __enter__(self) -> 'CpuHog':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m harness.tools.cpu_hog', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--threads', type=int, default=DEFAULT_THREADS)
    parser.add_argument('--limit-s', type=float, default=DEFAULT_LIMIT_S)
    args = parser.parse_args(argv)
    if args.threads < 1 or args.limit_s <= 0:
        parser.error('--threads must be at least 1 and --limit-s positive')
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return run_workers(args.threads, args.limit_s)


if __name__ == '__main__':
    sys.exit(main())
