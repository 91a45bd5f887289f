"""Which processes of one run of the suite are still there.

``make``, ``.ci/run`` and the job-stop tests export ``MPQEMU_SUITE_TOKEN``
with a value of their own; every process the run starts inherits it (QEMU,
Avocado's runners, the tests, their helpers, the lifeline watchers), so
whatever still carries it once the run has returned is a leftover, however
it was started and whoever its parent is now.

    python -m harness.base.leftovers TOKEN [--wait SECONDS]

lists the leftovers (after waiting up to SECONDS for them to go) and exits
1 if there are any.
"""

import argparse
import os
import sys
import time
from typing import List

from . import procfs
from .waiting import WaitTimeout, wait_until

TOKEN_VARIABLE = 'MPQEMU_SUITE_TOKEN'
POLL_S = 0.05


def find(token: str) -> List[int]:
    entry = f'{TOKEN_VARIABLE}={token}'
    me = os.getpid()
    return [pid for pid in procfs.pids()
            if pid != me and procfs.state(pid) not in (None, 'Z', 'X')
            and procfs.environ_has(pid, entry)]


def wait_none(token: str, timeout_s: float) -> List[int]:
    """Wait up to ``timeout_s`` for every process of ``token`` to end;
    returns those still there."""
    try:
        wait_until(lambda: not find(token), timeout_s, f'the processes of {token} to end', POLL_S)
        return []
    except WaitTimeout:
        return find(token)


def describe(pids: List[int]) -> str:
    return '\n'.join(f'  {pid} (parent {procfs.ppid(pid)}, {procfs.state(pid)}): '
                     f"{' '.join(procfs.cmdline(pid))[:200]}" for pid in pids)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m harness.base.leftovers', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('token')
    parser.add_argument('--wait', type=float, default=0.0, metavar='SECONDS')
    args = parser.parse_args(argv)
    started = time.monotonic()
    left = wait_none(args.token, args.wait)
    if left:
        print(f'leftovers: {len(left)} process(es) of {TOKEN_VARIABLE}={args.token} still '
              f'there after {args.wait:g} s:\n{describe(left)}', file=sys.stderr)
        return 1
    print(f'leftovers: none ({time.monotonic() - started:.2f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
