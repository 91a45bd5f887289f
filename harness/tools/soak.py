"""Run the functional suite many times, some runs beside a CPU hog, and
report what changes from one run to the next.

    python -m harness.tools.soak --runs 10 --hog-runs 5          # make soak
    python -m harness.tools.soak --runs 3 --tags protocol --avocado-args '-p accel=tcg'
    python -m harness.tools.soak --runs 2 --suite tests/jobs/soak_runs.py

Each run is one ``make functional`` (its preparation of QEMU builds and
images included, seconds when cached) with ``JOB_RESULTS=OUT/run-NN``;
``--suite`` runs Avocado on those files instead, without the preparation.
``--hog-runs K`` of the runs, spread evenly among them (every other one
for half), have harness/tools/cpu_hog.py's ``--hog-threads`` busy workers
beside them, started before the run and killed after it.

Every process of the soak carries a ``MPQEMU_SUITE_TOKEN`` of its own
(harness/base/leftovers.py): one still there ``LEFTOVER_WAIT_S`` after a
run has returned is killed and reported.

From each run's ``results.json``, per test: how many runs ended in each
status, the pass rate (PASS / runs), and what is *unexpected*: a FAIL,
ERROR or INTERRUPTED in any run, a status that differs between runs (PASS
in one, CANCEL in another: flaky either way), a run that left no result
for it.  A test that fails once in N is a defect to fix, not to retry.
Per numeric figure of each test's whiteboard (harness/testing.py
``record()``; nested dicts such as a spread become ``name.key``) and its
duration (``time_s``): median, min, max and spread over all runs
(harness/base/figures.py), the median of the quiet runs and of the hog
runs, and their ratio.

Writes ``soak.json`` and ``soak.md`` under ``--out`` (build/soak), prints
the table, and the report of the runs side by side (``report/index.html``,
harness/tools/report.py); exit status 1 if anything is unexpected.
"""

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from typing import Dict, List, Optional, Sequence

from ..base import leftovers, lifeline, paths
from ..base.figures import spread, write_report
from ..report.results import read_tests
from . import report as report_tool
from .cpu_hog import CpuHog

DEFAULT_RUNS = 10
DEFAULT_HOG_THREADS = 2
DEFAULT_OUT = os.path.join(paths.REPO_DIR, 'build', 'soak')
RUN_TIMEOUT_S = 3600
LEFTOVER_WAIT_S = 5.0
FIGURE_DIGITS = 3
STATUSES = ('PASS', 'WARN', 'CANCEL', 'SKIP', 'FAIL', 'ERROR', 'INTERRUPTED')
FAILED = ('FAIL', 'ERROR', 'INTERRUPTED')
NOT_RUN = 'NOT RUN'
REASON_CHARS = 120


def hog_plan(runs: int, hog_runs: int) -> List[bool]:
    """Which runs have the hog: ``hog_runs`` of ``runs``, spread evenly,
    the first run quiet (half: every other run)."""
    return [(i + 1) * hog_runs // runs > i * hog_runs // runs for i in range(runs)]


def job_command(job_dir: str, tags: str, avocado_args: str,
                suite: Sequence[str] = ()) -> List[str]:
    """One run: ``make functional`` into ``job_dir``, or Avocado on ``suite``."""
    if not suite:
        return ['make', '--no-print-directory', 'functional', f'JOB_RESULTS={job_dir}',
                f'TAGS={tags}', f'AVOCADO_ARGS={avocado_args}']
    # As the Makefile's TAG_ARGS: each word one -t.
    tag_args = [arg for tag in tags.split() for arg in ('-t', tag)]
    return [os.path.join(paths.REPO_DIR, 'build', 'venv', 'bin', 'avocado'),
            '--config', os.path.join(paths.REPO_DIR, 'tests', 'functional', 'avocado.conf'),
            'run', '--job-results-dir', job_dir, *tag_args, *shlex.split(avocado_args), *suite]


def compare(values: Sequence[float], hog: Sequence[bool]) -> dict:
    """Spread of one figure over the runs that have it; quiet and hog medians."""
    out = spread(values, digits=FIGURE_DIGITS)
    quiet = [v for v, h in zip(values, hog) if not h]
    hogged = [v for v, h in zip(values, hog) if h]
    out['quiet_median'] = spread(quiet, digits=FIGURE_DIGITS)['median'] if quiet else None
    out['hog_median'] = spread(hogged, digits=FIGURE_DIGITS)['median'] if hogged else None
    out['hog_ratio'] = (round(out['hog_median'] / out['quiet_median'], 2)
                        if hogged and quiet and out['quiet_median'] else None)
    return out


def _runs_text(numbers: Sequence[int]) -> str:
    return ('run ' if len(numbers) == 1 else 'runs ') + ', '.join(map(str, numbers))


def aggregate_test(runs: Sequence[dict], name: str) -> dict:
    """One test over all runs (each ``{'run', 'hog', 'tests'}``)."""
    statuses = [run['tests'].get(name, {}).get('status', NOT_RUN) for run in runs]
    counts = {status: statuses.count(status) for status in STATUSES + (NOT_RUN,)
              if status in statuses}
    for other in set(statuses) - set(counts):
        counts[other] = statuses.count(other)
    unexpected = []
    for status in FAILED + (NOT_RUN,):
        where = [run['run'] for run, s in zip(runs, statuses) if s == status]
        if where:
            reasons = {run['tests'][name]['reason'] for run in runs
                       if run['tests'].get(name, {}).get('status') == status}
            reason = ' / '.join(sorted(r for r in reasons if r))
            unexpected.append(f"{status} in {_runs_text(where)}"
                              + (f": {reason[:REASON_CHARS]}" if reason else ''))
    if len(counts) > 1:
        unexpected.append('status changed between runs: '
                          + ', '.join(f'{s} {n}×' for s, n in counts.items()))
    values: Dict[str, list] = {}
    for run in runs:
        for figure, value in run['tests'].get(name, {}).get('figures', {}).items():
            values.setdefault(figure, []).append((value, run['hog']))
    figures = {figure: compare([v for v, _ in pairs], [h for _, h in pairs])
               for figure, pairs in sorted(values.items())}
    return {'statuses': statuses, 'counts': counts,
            'pass_rate': round(statuses.count('PASS') / len(runs), 3),
            'unexpected': unexpected, 'figures': figures}


def aggregate(runs: Sequence[dict], hog_threads: int = DEFAULT_HOG_THREADS) -> dict:
    """The soak's report from its runs: ``{'run', 'hog', 'tests'}`` each
    (read_tests()), with the run's own ``problems`` (no results, leftovers)."""
    names = sorted({name for run in runs for name in run['tests']})
    tests = {name: aggregate_test(runs, name) for name in names}
    jobs = [{key: run.get(key) for key in ('run', 'hog', 'hog_pids', 'dir', 'rc', 'wall_s')}
            | {'tests': len(run['tests']), 'problems': run.get('problems', [])} for run in runs]
    walls = [(run['wall_s'], run['hog']) for run in runs if run.get('wall_s') is not None]
    unexpected_tests = [name for name, test in tests.items() if test['unexpected']]
    problem_runs = [job['run'] for job in jobs if job['problems']]
    return {'runs': len(runs), 'hog_runs': sum(run['hog'] for run in runs),
            'hog_threads': hog_threads,
            'unexpected': len(unexpected_tests) + len(problem_runs),
            'unexpected_tests': unexpected_tests, 'problem_runs': problem_runs,
            'wall_s': compare([w for w, _ in walls], [h for _, h in walls]) if walls else None,
            'jobs': jobs, 'tests': tests}


def _num(value) -> str:
    return '–' if value is None else f'{value:g}'


def _short_name(name: str) -> str:
    """A test's name in the table: the suite's directory goes without saying."""
    return name.removeprefix('tests/functional/')


def markdown(report: dict) -> str:
    lines = [f"# Soak: {report['runs']} runs, {report['hog_runs']} beside a "
             f"{report['hog_threads']}-thread CPU hog: {report['unexpected']} unexpected "
             f"({len(report['unexpected_tests'])} tests, {len(report['problem_runs'])} runs)",
             '']
    if report['wall_s']:
        wall = report['wall_s']
        lines += [f"Run wall time: median {_num(wall['median'])} s (min {_num(wall['min'])}, "
                  f"max {_num(wall['max'])}); quiet {_num(wall['quiet_median'])} s, hog "
                  f"{_num(wall['hog_median'])} s, ratio {_num(wall['hog_ratio'])}", '']
    lines += ['| run | hog | wall s | tests | rc | problems |', '|---|---|---|---|---|---|']
    for job in report['jobs']:
        lines.append(f"| {job['run']} | {'yes' if job['hog'] else ''} | {_num(job['wall_s'])} "
                     f"| {job['tests']} | {_num(job['rc'])} | {'; '.join(job['problems'])} |")
    columns = STATUSES + (NOT_RUN,)
    lines += ['', '| test | ' + ' | '.join(columns) + ' | pass rate | unexpected |',
              '|---' * (len(columns) + 3) + '|']
    for name, test in report['tests'].items():
        name = _short_name(name)
        counts = ' | '.join(str(test['counts'].get(s, '')) for s in columns)
        lines.append(f"| {name} | {counts} | {test['pass_rate'] * 100:.0f}% "
                     f"| {'<br>'.join(test['unexpected'])} |")
    lines += ['', '## Figures', '',
              '| test | figure | n | median | min | max | p10–p90 | quiet | hog | hog/quiet |',
              '|---|---|---|---|---|---|---|---|---|---|']
    for name, test in report['tests'].items():
        for figure, f in test['figures'].items():
            lines.append(f"| {_short_name(name)} | {figure} | {f['n']} | {_num(f['median'])} "
                         f"| {_num(f['min'])} | {_num(f['max'])} "
                         f"| {_num(f['p10'])}–{_num(f['p90'])} | {_num(f['quiet_median'])} "
                         f"| {_num(f['hog_median'])} | {_num(f['hog_ratio'])} |")
    return '\n'.join(lines) + '\n'


def run_once(number: int, hog: bool, out_dir: str, tags: str, avocado_args: str,
             suite: Sequence[str], hog_threads: int, log=print) -> dict:
    """One run of the suite (beside the hog if ``hog``): its tests and problems."""
    job_dir = os.path.join(out_dir, f'run-{number:02d}')
    # An earlier soak's results must never stand in for a run that left none.
    shutil.rmtree(job_dir, ignore_errors=True)
    os.makedirs(job_dir)
    token = f'soak-{uuid.uuid4().hex[:12]}'
    env = dict(os.environ, **{leftovers.TOKEN_VARIABLE: token})
    cmd = job_command(job_dir, tags, avocado_args, suite)
    log(f"soak: run {number}{' beside the CPU hog' if hog else ''}: {shlex.join(cmd)}")
    run = {'run': number, 'hog': hog, 'dir': job_dir, 'rc': None, 'wall_s': None,
           'hog_pids': [], 'tests': {}, 'problems': []}
    hog_proc = CpuHog(hog_threads, RUN_TIMEOUT_S + 60, env=env).start() if hog else None
    try:
        started = time.monotonic()
        # Its own session, so that a run past its deadline goes down with
        # every process it started.
        with subprocess.Popen(cmd, cwd=paths.REPO_DIR, env=env, stdin=subprocess.DEVNULL,
                              start_new_session=True) as job:
            try:
                run['rc'] = job.wait(timeout=RUN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait()
                run['problems'].append(f'killed after {RUN_TIMEOUT_S} s')
            except BaseException:
                os.killpg(job.pid, signal.SIGKILL)
                raise
        run['wall_s'] = round(time.monotonic() - started, 1)
    finally:
        if hog_proc:
            hog_proc.stop()
            run['hog_pids'] = hog_proc.killed
    left = leftovers.wait_none(token, LEFTOVER_WAIT_S)
    if left:
        log(f'soak: run {number} left processes behind:\n{leftovers.describe(left)}')
        run['problems'].append(f'{len(left)} process(es) left {LEFTOVER_WAIT_S:g} s after the run')
        lifeline.wait_gone(lifeline.kill_trees(left))
    results = os.path.join(job_dir, 'latest', 'results.json')
    if os.path.exists(results):
        run['tests'] = read_tests(results)
        if run['rc'] and not any(t['status'] in FAILED for t in run['tests'].values()):
            run['problems'].append(f"exit status {run['rc']} without a failed test")
    else:
        run['problems'].append(f'no results.json (exit status {run["rc"]})')
    log(f"soak: run {number}: {len(run['tests'])} tests in {run['wall_s']} s, exit status "
        f"{run['rc']}")
    return run


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m harness.tools.soak', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', type=int, default=DEFAULT_RUNS)
    parser.add_argument('--hog-runs', type=int, default=None, metavar='K',
                        help='runs beside the CPU hog (default: half of --runs)')
    parser.add_argument('--hog-threads', type=int, default=DEFAULT_HOG_THREADS)
    parser.add_argument('--tags', default='', help="as make's TAGS: each word one -t")
    parser.add_argument('--avocado-args', default='', help="as make's AVOCADO_ARGS")
    parser.add_argument('--suite', action='append', default=[], metavar='PATH',
                        help='run Avocado on PATH instead of make functional (repeatable)')
    parser.add_argument('--out', default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    hog_runs = args.runs // 2 if args.hog_runs is None else args.hog_runs
    if args.runs < 1 or not 0 <= hog_runs <= args.runs or args.hog_threads < 1:
        parser.error(f'--runs {args.runs} --hog-runs {hog_runs} --hog-threads '
                     f'{args.hog_threads}: need runs ≥ 1, 0 ≤ hog runs ≤ runs, threads ≥ 1')
    out_dir = os.path.abspath(args.out)
    # A soak stopped by SIGTERM goes the way of Ctrl-C: the running job's
    # session and the hog are killed (run_once), the runs done are reported.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    runs: List[dict] = []
    try:
        for number, hog in enumerate(hog_plan(args.runs, hog_runs), start=1):
            runs.append(run_once(number, hog, out_dir, args.tags, args.avocado_args, args.suite,
                                 args.hog_threads))
    except KeyboardInterrupt:
        print(f'soak: interrupted during run {len(runs) + 1} of {args.runs}', file=sys.stderr)
        if not runs:
            return 130
        runs[-1]['problems'].append(f'the soak was interrupted after this run, of {args.runs}')
    report = aggregate(runs, args.hog_threads)
    write_report(out_dir, 'soak', report, markdown(report))
    finished = [run for run in runs if run['tests']]
    if finished:        # the runs side by side, their figures pooled (harness/report/)
        index = report_tool.write([os.path.join(run['dir'], 'latest') for run in finished],
                                  os.path.join(out_dir, 'report'),
                                  [f"run {run['run']}{' (hog)' if run['hog'] else ''}"
                                   for run in finished])
        print(f'soak: report {index}')
    print(f"soak: {report['unexpected']} unexpected in {len(runs)} runs "
          f"({len(report['unexpected_tests'])} tests, {len(report['problem_runs'])} runs); "
          f"{os.path.join(out_dir, 'soak.md')}")
    return 1 if report['unexpected'] else 0


if __name__ == '__main__':
    sys.exit(main())
