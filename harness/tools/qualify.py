"""Run the suite's tests spread over a fleet of test hosts, as one job.

    python -m harness.tools.qualify --hosts hosts.json          # make qualify HOSTS=...
    python -m harness.tools.qualify --hosts hosts.json --tags protocol,-vfio-user
    python -m harness.tools.qualify --hosts hosts.json --suite tests/jobs/fleet.py

The hosts file (harness/fleet/hosts.py) names the hosts and the address at
which they reach this machine.  Each slot of a host runs one test at a
time over SSH with Avocado's remote spawner, made bounded
(harness/fleet/spawner.py: a host lost mid-test ends its test as an ERROR
and is used no more; one that never logs in is not used).  The job is
this machine's: Avocado's status server listens on the controller address
for the hosts' reports, and the results (results.json, results.html, each
test's logs) land in ``--out`` (build/job-results-fleet), then the report
(harness/tools/report.py).  Every test records the host it ran on in its
whiteboard (``host``).  The QEMUs and images the selected tests need are
prepared here first, as for ``make functional``.

Exit status: Avocado's (non-zero when any test failed or errored, a lost
host's included), 2 for a hosts file that is not one.
"""

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
from typing import List, Optional, Sequence

from ..base import paths
from ..base.errors import HarnessError
from ..fleet import hosts as fleet_hosts
from . import report

DEFAULT_OUT = os.path.join(paths.build_dir(), 'job-results-fleet')
SUITE_CONF = os.path.join(paths.REPO_DIR, 'tests', 'functional', 'avocado.conf')
SUITE = os.path.join('tests', 'functional')
# Per test on a host; the test's own timeout (harness/testing.py) ends it first.
TEST_TIMEOUT_S = 3600
SETUP_TIMEOUT_S = 120
JOB_TIMEOUT_S = 4 * 3600


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def setup_hook(token: Optional[str]) -> str:
    """What each slot's shell runs before a test: the checkout, its venv
    (the runner's python3), the job's leftover token."""
    hook = (f'cd {shlex.quote(paths.REPO_DIR)} && '
            f'. {shlex.quote(os.path.join(paths.REPO_DIR, "build", "venv", "bin", "activate"))}')
    if token:
        hook += f' && export MPQEMU_SUITE_TOKEN={shlex.quote(token)}'
    return hook


def write_config(path: str, slots: Sequence[str], token: Optional[str]) -> str:
    """The suite's avocado.conf plus the spawner's sections."""
    with open(SUITE_CONF, encoding='utf-8') as f:
        suite = f.read()
    with open(path, 'w', encoding='utf-8') as f:
        f.write(suite + '\n[spawner.remote]\n'
                f'slots = {list(slots)!r}\n'
                f'setup_hook = {setup_hook(token)}\n'
                f'setup_timeout = {SETUP_TIMEOUT_S}\n'
                f'test_timeout = {TEST_TIMEOUT_S}\n')
    return path


def avocado_command(config: str, fleet: fleet_hosts.Fleet, out: str,
                    filters: Sequence[str], suite: Sequence[str]) -> List[str]:
    uri = f'{fleet.controller}:{free_port(fleet.controller)}'
    return [os.path.join(paths.REPO_DIR, 'build', 'venv', 'bin', 'avocado'),
            '--config', config, 'run', '--job-results-dir', out,
            '--spawner', 'mpqemu-fleet', '--max-parallel-tasks', str(fleet.slots),
            '--status-server-disable-auto', '--status-server-listen', uri,
            '--status-server-uri', uri, *filters, *suite]


def job_env() -> dict:
    """The venv's bin first on PATH: aexpect starts its aexpect_helper
    from there for every session."""
    venv_bin = os.path.join(paths.REPO_DIR, 'build', 'venv', 'bin')
    return dict(os.environ, PATH=f"{venv_bin}:{os.environ.get('PATH', '')}")


def tag_filters(tags: str) -> List[str]:
    """``make functional``'s TAGS: each word a filter (either), quick only."""
    words = tags.split() or ['']
    return [f'--filter-by-tags={w + "," if w else ""}-thorough' for w in words]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m harness.tools.qualify',
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('--hosts', required=True, help='the hosts file (JSON)')
    parser.add_argument('--tags', default='', help="make functional's TAGS")
    parser.add_argument('--suite', nargs='*', default=[SUITE],
                        help='test references instead of tests/functional (no tag filter)')
    parser.add_argument('--out', default=DEFAULT_OUT, help='the job results directory')
    args = parser.parse_args(argv)
    try:
        fleet = fleet_hosts.load(args.hosts)
    except HarnessError as err:
        print(f'qualify: {err}', file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    slots = fleet_hosts.write_slots(fleet, os.path.join(args.out, 'slots'))
    config = write_config(os.path.join(args.out, 'fleet.conf'), slots,
                          os.environ.get('MPQEMU_SUITE_TOKEN'))
    filters = tag_filters(args.tags) if args.suite == [SUITE] else []
    command = avocado_command(config, fleet, args.out, filters, args.suite)
    print(f"qualify: {len(fleet.hosts)} hosts, {fleet.slots} slots: "
          f"{', '.join(h.name for h in fleet.hosts)}", flush=True)
    job = subprocess.Popen(command, cwd=paths.REPO_DIR, stdin=subprocess.DEVNULL,
                           env=job_env(), start_new_session=True)
    try:
        status = job.wait(JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f'qualify: the job overran {JOB_TIMEOUT_S} s; killed', file=sys.stderr)
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        status = 1
    except KeyboardInterrupt:
        os.killpg(job.pid, signal.SIGINT)      # Avocado ends its tests, then returns
        status = job.wait()
    written = report.main([os.path.join(args.out, 'latest')])
    return status or written


if __name__ == '__main__':
    sys.exit(main())
