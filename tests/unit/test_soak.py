"""The soak (harness/tools/soak.py) over real Avocado runs.

The soak's own command line runs tests/jobs/soak_runs.py twice, the
second run beside the CPU hog: a steady test whose figures double, a test
that passes and then cancels, one that always fails.  The report must
count each, call the changing status and the failures unexpected, give
each figure's spread hog vs quiet, and leave no hog behind.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.base import lifeline, paths, procfs
from harness.base.waiting import wait_until
from harness.report.results import read_tests
from harness.tools import cpu_hog, soak

FIXTURE = os.path.join('tests', 'jobs', 'soak_runs.py')
STEADY = f'{FIXTURE}:Steady.test_steady'
FLAKY = f'{FIXTURE}:Flaky.test_flaky'
FAILS = f'{FIXTURE}:Fails.test_fails'
WAITS = f'{FIXTURE}:Waits.test_waits'
SOAK_TIMEOUT_S = 120
MARK_TIMEOUT_S = 60
STOP_BOUND_S = 30
HOG_END_BOUND_S = 5.0

pytestmark = pytest.mark.slow          # real Avocado jobs: seconds each


def run_soak(tmp_path, *tests, runs=2, hog_runs=1):
    """The soak's command line on ``tests``; (exit status, soak.json, output)."""
    out = tmp_path / 'soak'
    marks = tmp_path / 'marks'
    marks.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, '-m', 'harness.tools.soak', '--runs', str(runs), '--hog-runs',
         str(hog_runs), '--out', str(out), *[a for t in tests for a in ('--suite', t)]],
        cwd=paths.REPO_DIR, env=dict(os.environ, SOAK_RUNS_DIR=str(marks)),
        capture_output=True, text=True, timeout=SOAK_TIMEOUT_S, check=False)
    report = json.loads((out / 'soak.json').read_text()) if (out / 'soak.json').exists() else None
    return done.returncode, report, done.stdout + done.stderr


def processes_with(entry: str):
    return [pid for pid in procfs.pids()
            if procfs.state(pid) not in (None, 'Z', 'X') and procfs.environ_has(pid, entry)]


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory):
    """Steady, Flaky and Fails soaked twice, the second run beside the hog."""
    tmp_path = tmp_path_factory.mktemp('soak')
    rc, report, output = run_soak(tmp_path, STEADY, FLAKY, FAILS)
    assert report, output
    return tmp_path, rc, report, output


def test_hog_runs_alternate():
    assert soak.hog_plan(10, 5) == [False, True] * 5
    assert soak.hog_plan(2, 1) == [False, True]
    assert soak.hog_plan(4, 0) == [False] * 4
    assert soak.hog_plan(3, 3) == [True] * 3


def test_make_functional_per_run_with_tags_and_arguments():
    assert soak.job_command('/x/run-01', 'faults,heartbeat protocol', '-p accel=tcg') == [
        'make', '--no-print-directory', 'functional', 'JOB_RESULTS=/x/run-01',
        'TAGS=faults,heartbeat protocol', 'AVOCADO_ARGS=-p accel=tcg']
    cmd = soak.job_command('/x/run-01', 'a b', '-p accel=tcg', [FIXTURE])
    assert cmd[-7:] == ['-t', 'a', '-t', 'b', '-p', 'accel=tcg', FIXTURE]


def test_report_files_and_exit_status(two_runs):
    tmp_path, rc, report, output = two_runs
    assert rc == 1, output
    assert (tmp_path / 'soak' / 'soak.md').read_text().startswith(
        '# Soak: 2 runs, 1 beside a 2-thread CPU hog: 2 unexpected (2 tests, 0 runs)')
    assert [(j['run'], j['hog'], j['tests'], j['problems']) for j in report['jobs']] == [
        (1, False, 3, []), (2, True, 3, [])]
    assert os.path.exists(tmp_path / 'soak' / 'run-02' / 'latest' / 'results.json')
    page = (tmp_path / 'soak' / 'report' / 'index.html').read_text(encoding='utf-8')
    assert '<th>run 1</th><th>run 2 (hog)</th>' in page          # one column per run


def test_pass_rates_and_what_is_unexpected(two_runs):
    _, _, report, _ = two_runs
    steady, flaky, fails = (report['tests'][t] for t in (STEADY, FLAKY, FAILS))
    assert (steady['statuses'], steady['pass_rate'], steady['unexpected']) == (
        ['PASS', 'PASS'], 1.0, [])
    assert (flaky['counts'], flaky['pass_rate']) == ({'PASS': 1, 'CANCEL': 1}, 0.5)
    assert flaky['unexpected'] == ['status changed between runs: PASS 1×, CANCEL 1×']
    assert (fails['counts'], fails['pass_rate']) == ({'FAIL': 2}, 0.0)
    assert fails['unexpected'] == ['FAIL in runs 1, 2: fails every run']
    assert (report['unexpected'], report['unexpected_tests'], report['problem_runs']) == (
        2, [FAILS, FLAKY], [])


def test_figure_spread_hog_vs_quiet(two_runs):
    _, _, report, _ = two_runs
    figures = report['tests'][STEADY]['figures']
    assert set(figures) == {'latency_ms', 'round_trip.median', 'round_trip.n', 'time_s'}
    latency = figures['latency_ms']
    assert {k: latency[k] for k in ('n', 'median', 'min', 'max', 'quiet_median', 'hog_median',
                                    'hog_ratio')} == {
        'n': 2, 'median': 15.0, 'min': 10.0, 'max': 20.0, 'quiet_median': 10.0,
        'hog_median': 20.0, 'hog_ratio': 2.0}
    # A figure only some runs have (none in the cancelled run) has no hog median.
    flaky = report['tests'][FLAKY]['figures']['latency_ms']
    assert (flaky['n'], flaky['hog_median'], flaky['hog_ratio']) == (1, None, None)


def test_the_hog_ran_and_is_gone(two_runs):
    tmp_path, _, report, _ = two_runs
    quiet, hogged = report['jobs']
    assert quiet['hog_pids'] == []
    assert len(hogged['hog_pids']) == 1 + soak.DEFAULT_HOG_THREADS
    assert not [p for p in hogged['hog_pids'] if procfs.state(p) not in (None, 'Z', 'X')]
    assert processes_with(f"SOAK_RUNS_DIR={tmp_path / 'marks'}") == []


def test_steady_runs_exit_zero(tmp_path):
    rc, report, output = run_soak(tmp_path, STEADY, runs=2, hog_runs=0)
    assert rc == 0, output
    assert report['unexpected'] == 0 and report['hog_runs'] == 0
    assert 'soak: 0 unexpected in 2 runs (0 tests, 0 runs)' in output


def test_a_test_missing_from_a_run_is_unexpected(two_runs, tmp_path):
    """Real results of two soaks, Flaky and Fails only in the first."""
    first = two_runs[0] / 'soak' / 'run-01' / 'latest' / 'results.json'
    assert run_soak(tmp_path, STEADY, runs=1, hog_runs=0)[0] == 0
    second = tmp_path / 'soak' / 'run-01' / 'latest' / 'results.json'
    runs = [{'run': n, 'hog': False, 'tests': read_tests(str(path))}
            for n, path in ((1, first), (2, second))]
    report = soak.aggregate(runs)
    assert report['tests'][FLAKY]['unexpected'] == [
        'NOT RUN in run 2', 'status changed between runs: PASS 1×, NOT RUN 1×']
    assert report['tests'][STEADY]['unexpected'] == []
    assert len(report['tests'][FAILS]['unexpected']) == 3     # FAIL, NOT RUN, changed
    assert (report['unexpected'], report['unexpected_tests']) == (2, [FAILS, FLAKY])


def test_hog_ends_by_itself(tmp_path):
    hog = cpu_hog.CpuHog(threads=2, limit_s=0.5).start()
    assert hog.proc.wait(timeout=HOG_END_BOUND_S) == 0


def test_hog_dies_with_its_starter(tmp_path):
    """A soak killed by SIGKILL takes its hog down: no worker outlives it."""
    starter = subprocess.Popen(
        [sys.executable, '-c', 'import sys, time\n'
         'from harness.base import procfs\n'
         'from harness.tools.cpu_hog import CpuHog\n'
         'hog = CpuHog(2, 60).start()\n'
         'time.sleep(0.5)\n'
         'print(*[hog.proc.pid] + procfs.descendants([hog.proc.pid]), flush=True)\n'
         'time.sleep(60)\n'],
        cwd=paths.REPO_DIR, stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in starter.stdout.readline().split()]
    assert len(pids) == 3
    started = {pid: procfs.start_time(pid) for pid in pids}
    starter.send_signal(signal.SIGKILL)
    starter.wait()
    began = time.monotonic()
    assert lifeline.wait_gone(started, HOG_END_BOUND_S) == []
    print(f'hog gone {(time.monotonic() - began) * 1000:.0f} ms after its starter')


def test_a_stopped_soak_leaves_nothing(tmp_path):
    """SIGTERM mid-run, beside the hog: the job and the hog go with the soak."""
    marks = tmp_path / 'marks'
    marks.mkdir()
    entry = f'SOAK_RUNS_DIR={marks}'
    proc = subprocess.Popen(
        [sys.executable, '-m', 'harness.tools.soak', '--runs', '2', '--hog-runs', '2',
         '--out', str(tmp_path / 'soak'), '--suite', WAITS],
        cwd=paths.REPO_DIR, env=dict(os.environ, SOAK_RUNS_DIR=str(marks)),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: (marks / 'waits').exists() or proc.poll() is not None,
               MARK_TIMEOUT_S, 'the waiting test to start')
    assert proc.poll() is None, proc.stderr.read()
    hog = [p for p in processes_with(entry) if 'harness.tools.cpu_hog' in procfs.cmdline(p)]
    assert len(hog) == 1 + soak.DEFAULT_HOG_THREADS
    proc.terminate()
    assert proc.wait(STOP_BOUND_S) == 130
    assert 'interrupted during run 1 of 2' in proc.stderr.read()
    started = {pid: procfs.start_time(pid) for pid in processes_with(entry)}
    left = lifeline.wait_gone(started, HOG_END_BOUND_S)
    assert not left, '\n'.join(' '.join(procfs.cmdline(p)) for p in left)
