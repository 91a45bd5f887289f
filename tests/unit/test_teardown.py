"""No QEMU outlives the harness: not after a SIGKILL of the harness
process, not after Avocado kills a test that overran its timeout."""

import json
import os
import signal
import subprocess
import sys
import time

from conftest import functional_tests, pid_alive

from harness.base import paths
from harness.testing import MultiprocessTest

DATA = os.path.join(os.path.dirname(__file__), 'data')
REPO = os.path.dirname(os.path.dirname(DATA))
GONE_TIMEOUT_S = 10.0


def wait_gone(pids, timeout_s=GONE_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if pid_alive(pid)]
        if not alive:
            return []
        time.sleep(0.05)
    return alive


def test_qemu_dies_with_a_sigkilled_harness(tmp_path, disk):
    holder = subprocess.Popen([sys.executable, os.path.join(DATA, 'hold_topology.py'),
                               str(tmp_path), disk], stdout=subprocess.PIPE, text=True,
                              cwd=REPO)
    try:
        pids = json.loads(holder.stdout.readline())
        assert len(pids) == 2 and all(pid_alive(pid) for pid in pids)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(GONE_TIMEOUT_S)
        holder.stdout.close()
    assert wait_gone(pids) == []


def test_qemu_dies_with_an_avocado_test_that_timed_out(tmp_path):
    pids_file = tmp_path / 'pids.json'
    env = dict(os.environ, MPQEMU_PIDS_FILE=str(pids_file))
    avocado = os.path.join(os.path.dirname(sys.executable), 'avocado')
    result = subprocess.run([avocado, 'run', '--job-results-dir', str(tmp_path / 'results'),
                             os.path.join(DATA, 'avocado_overrun.py')],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert 'INTERRUPT 1' in result.stdout, result.stdout + result.stderr
    pids = json.loads(pids_file.read_text())
    assert len(pids) == 2
    assert wait_gone(pids) == []


def test_every_own_teardown_survives_a_setup_that_failed(tmp_path):
    """A test whose setUp fails early (here: a QEMU that does not exist)
    still runs tearDown; a class's own tearDown must not trip over what
    setUp never made, or the real error is buried under an AttributeError.
    One test of each class with a tearDown of its own."""
    picked = {}
    for name, cls, _ in functional_tests():
        if cls.tearDown is not MultiprocessTest.tearDown:
            picked.setdefault(cls, name)
    assert len(picked) >= 5, picked
    missing = '/nonexistent/qemu-system-x86_64'
    avocado = os.path.join(os.path.dirname(sys.executable), 'avocado')
    env = {k: v for k, v in os.environ.items() if k not in ('QEMU_SRC', 'QEMU_DEB')}
    result = subprocess.run(
        [avocado, '--config', os.path.join(paths.REPO_DIR, 'tests', 'functional', 'avocado.conf'),
         'run',
         '--job-results-dir', str(tmp_path / 'results'), '--max-parallel-tasks', '2',
         *[f'-p={name}={missing}' for name in ('qemu_bin', 'vfio_user_client',
                                                 'vfio_user_server')],
         *[f'tests/functional/{name}' for name in picked.values()]],
        cwd=paths.REPO_DIR, env=env, capture_output=True, text=True, timeout=300, check=False)
    with open(tmp_path / 'results' / 'latest' / 'results.json', encoding='utf-8') as f:
        tests = json.load(f)['tests']
    assert len(tests) == len(picked), result.stdout + result.stderr
    for test in tests:
        with open(test['logfile'], encoding='utf-8', errors='replace') as f:
            log = f.read()
        assert test['status'] == 'ERROR' and f'{missing} does not exist' in log, test
        assert 'AttributeError' not in log, f"{test['name']}: tearDown failed:\n{log[-2000:]}"
