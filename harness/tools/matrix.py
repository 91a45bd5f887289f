"""Run the functional suite against several QEMUs and tabulate the results.

    python -m harness.tools.matrix                                  # the default list
    python -m harness.tools.matrix --tags 'protocol qtest agent' --accel tcg,kvm \\
        --qemu debian-7.2=qemu-system-x86_64 --qemu src-10.0=debian:trixie

Each ``--qemu LABEL=WHAT`` under each accelerator of ``--accel`` is a column
(``LABEL-ACCEL``, the job run with ``-p accel=ACCEL``): WHAT is a QEMU binary (path or
name on $PATH, passed as ``qemu_bin``) or a source for harness/qemu/build.py
(``debian:SUITE``, a tree with ``configure``, a git URL: passed as
``qemu_src``, built first so that the build's progress is visible).  For
each, one Avocado job runs the tag selection; its ``results.json`` gives
one cell per test:

  pass             PASS
  pass, fixed?     WARN from a known-issue guard: the entry's bug did not
                   reproduce (fixed upstream? update the entry)
  known issue: ID  CANCEL whose reason is a known-issue entry
  skip: reason     SKIP or CANCEL for another reason (missing capability…),
                   or the ERROR of a test whose guest the column's KVM cannot
                   run (a Linux guest on a PVM host)
  fail: reason     FAIL, ERROR, INTERRUPTED
  not run          the test did not exist in that column's job

Writes ``matrix.md`` (the table, then each known issue met with its
observed/expected behaviour and evidence) and ``matrix.json`` under
``build/matrix/``; each column's Avocado job is in ``build/matrix/jobs/``.
Exit status 1 if any cell is a failure, 0 otherwise.
"""

import argparse
import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from ..base import known_issues, paths
from ..base.figures import write_report
from ..qemu import build as qemu_build
from ..qemu.buildcache import BuildError
from ..qemu.source import GIT_URL_RE

DEFAULT_QEMUS = ('debian-7.2=qemu-system-x86_64', 'src-7.2=debian:bookworm',
                 'src-10.0=debian:trixie')
DEFAULT_TAGS = 'topology protocol qtest build agent'
DEFAULT_ACCELS = 'tcg,kvm'
# harness/qemu/accel.py select_accel: the column asked for an accelerator
# that cannot run this test's guest here, a capability, not a failure.
ACCEL_MISSING = 'accel=kvm requested but KVM cannot run'
JOB_TIMEOUT_S = 3600
REASON_CHARS = 160


@dataclasses.dataclass
class Column:
    label: str
    what: str
    kind: str                   # 'bin' or 'src'
    accel: Optional[str] = None  # -p accel=, None: the suite's default (auto)

    def avocado_params(self) -> List[str]:
        params = ['-p', f"{'qemu_src' if self.kind == 'src' else 'qemu_bin'}={self.what}"]
        return params + (['-p', f'accel={self.accel}'] if self.accel else [])

    def under(self, accel: str) -> 'Column':
        return Column(f'{self.label}-{accel}', self.what, self.kind, accel)


def parse_column(text: str) -> Column:
    label, sep, what = text.partition('=')
    if not sep or not label or not what:
        raise ValueError(f"--qemu {text!r}: expected LABEL=BINARY or LABEL=SOURCE "
                         f"(e.g. src-7.2=debian:bookworm)")
    is_source = (what.startswith('debian:') or bool(GIT_URL_RE.search(what))
                 or os.path.isfile(os.path.join(what, 'configure')))
    return Column(label, what, 'src' if is_source else 'bin')


@dataclasses.dataclass
class Cell:
    kind: str                   # pass, fixed?, known, skip, fail, not-run
    text: str
    detail: str = ''
    issue: Optional[str] = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _short(text: str, limit: int = REASON_CHARS) -> str:
    text = ' '.join((text or '').split())
    return text if len(text) <= limit else text[:limit - 1] + '…'


def _whiteboard(test: dict) -> dict:
    try:
        return json.loads(test.get('whiteboard') or '{}')
    except ValueError:
        return {}


def classify(test: dict) -> Cell:
    """One Avocado result (an entry of results.json's "tests") as a cell."""
    status = test.get('status', '')
    reason = test.get('fail_reason') or ''
    if reason == '<unknown>':
        reason = ''
    board = _whiteboard(test)
    if status == 'PASS':
        return Cell('pass', 'pass')
    if status == 'WARN':
        if board.get('known_issue_not_reproduced'):
            issue = board['known_issue_not_reproduced']
            return Cell('fixed?', f'pass, fixed upstream? ({issue})', issue=issue)
        return Cell('pass', 'pass (warnings)')
    if status in ('CANCEL', 'SKIP'):
        match = re.match(rf'{known_issues.KNOWN_ISSUE_PREFIX} (\S+)', reason)
        if match:
            return Cell('known', f'known issue: {match.group(1)}', _short(reason, 400),
                        match.group(1))
        return Cell('skip', f'skip: {_short(reason, 90)}', reason)
    if status == 'ERROR' and ACCEL_MISSING in reason:
        return Cell('skip', f'skip: {_short(reason[reason.index(ACCEL_MISSING):], 90)}', reason)
    return Cell('fail', f'{status.lower()}: {_short(reason, 90)}', reason)


def test_row_name(name: str) -> str:
    """``tests/functional/test_x.py:Class.test_y`` → ``test_x:Class.test_y``."""
    path, _, rest = name.partition(':')
    return f'{os.path.splitext(os.path.basename(path))[0]}:{rest}' if rest else name


def read_results(path: str) -> Dict[str, Cell]:
    with open(path, encoding='utf-8') as f:
        data = json.load(f)
    return {test_row_name(t['name']): classify(t) for t in data.get('tests', [])}


def run_column(column: Column, tags: str, out_dir: str, extra_args: Sequence[str],
               log=print, suite: Sequence[str] = ('tests/functional',)) -> Dict[str, Cell]:
    """Build (if a source), run the Avocado job, classify its results."""
    if column.kind == 'src':
        try:
            qemu_build.build(column.what, log=log)
        except BuildError as err:
            log(f"{column.label}: build failed: {err}")
            return {'(build)': Cell('fail', f'build failed: {_short(str(err), 90)}', str(err))}
    job_dir = os.path.join(out_dir, 'jobs', column.label)
    os.makedirs(job_dir, exist_ok=True)
    cmd = [os.path.join(paths.REPO_DIR, 'build', 'venv', 'bin', 'avocado'),
           '--config', os.path.join(paths.REPO_DIR, 'tests', 'functional', 'avocado.conf'),
           'run', '--job-results-dir', job_dir]
    for tag in tags.split():
        cmd += ['-t', tag]
    cmd += column.avocado_params() + list(extra_args) + list(suite)
    log(f"{column.label}: {shlex.join(cmd)}")
    started = time.monotonic()
    # Its own session, so that a job past its deadline goes down with
    # every process it started, not just the avocado front end.
    with subprocess.Popen(cmd, cwd=paths.REPO_DIR, stdin=subprocess.DEVNULL,
                          start_new_session=True) as job:
        try:
            job.wait(timeout=JOB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
            return {'(job)': Cell('fail', f'job overran {JOB_TIMEOUT_S} s',
                                  f'{shlex.join(cmd)} was killed after {JOB_TIMEOUT_S} s')}
    results = os.path.join(job_dir, 'latest', 'results.json')
    if not os.path.exists(results):
        return {'(job)': Cell('fail', 'no results.json', f'{shlex.join(cmd)} left none')}
    cells = read_results(results)
    log(f"{column.label}: {len(cells)} tests in {time.monotonic() - started:.0f} s")
    return cells


CELL_MARK = {'pass': '✅', 'fixed?': '⚠️', 'known': '🐞', 'skip': '⏭️', 'fail': '❌',
             'not-run': '·'}


def table(columns: List[Column], results: Dict[str, Dict[str, Cell]]) -> dict:
    """rows × columns, missing cells filled in as not run."""
    rows = sorted({name for cells in results.values() for name in cells})
    grid = {row: {c.label: results[c.label].get(row, Cell('not-run', 'not run'))
                  for c in columns} for row in rows}
    return {'columns': [dataclasses.asdict(c) for c in columns], 'rows': rows,
            'cells': {row: {label: cell.to_json() for label, cell in cells.items()}
                      for row, cells in grid.items()}}


def markdown(matrix: dict, issues: Sequence[known_issues.KnownIssue]) -> str:
    labels = [c['label'] for c in matrix['columns']]
    lines = ['# Multi-process QEMU test matrix', '',
             f"Generated {matrix['generated']}; tags: `{matrix['tags']}`.", '',
             '| test | ' + ' | '.join(f"{c['label']}<br>`{c['what']}`"
                                       + (f"<br>accel={c['accel']}" if c.get('accel') else '')
                                       for c in matrix['columns']) + ' |',
             '|---|' + '---|' * len(labels)]
    met = set()
    for row in matrix['rows']:
        cells = []
        for label in labels:
            cell = matrix['cells'][row][label]
            cells.append(f"{CELL_MARK.get(cell['kind'], '')} {cell['text']}".replace('|', '\\|'))
            if cell.get('issue'):
                met.add(cell['issue'])
        lines.append(f'| {row} | ' + ' | '.join(cells) + ' |')
    lines += ['', 'Legend: ✅ pass · 🐞 known issue (CANCEL with the entry) · ⚠️ known issue '
              'did not reproduce (fixed upstream?) · ⏭️ skip/cancel with reason · ❌ fail · '
              '· not run', '']
    by_id = {i.id: i for i in issues}
    for issue_id in sorted(met):
        issue = by_id.get(issue_id)
        if not issue:
            continue
        data = issue.data
        lines += [f'## Known issue `{issue_id}`', '', f'**{issue.title}**', '',
                  f"- QEMU: >= {data.get('qemu', {}).get('min', '?')}, fixed in "
                  f"{data.get('qemu', {}).get('fixed_in') or 'not yet'}"
                  + (f"; when {data['when']}" if data.get('when') else ''),
                  f"- observed: {data.get('observed', '')}",
                  f"- expected: {data.get('expected', '')}"]
        if data.get('cause'):
            lines.append(f"- cause: {data['cause']}")
        for key, value in (data.get('evidence') or {}).items():
            lines.append(f'- evidence, {key}: `{value}`' if '\n' not in str(value)
                         else f'- evidence, {key}:\n\n```\n{value}\n```')
        lines += [f"- entry: `{os.path.relpath(issue.path, paths.REPO_DIR)}`", '']
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m harness.tools.matrix',
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('--qemu', action='append', metavar='LABEL=WHAT',
                        help=f"a column (repeat); default: {' '.join(DEFAULT_QEMUS)}")
    parser.add_argument('--tags', default=os.environ.get('MATRIX_TAGS') or DEFAULT_TAGS,
                        help="Avocado tags, each word one -t (either), 'a,b' both; "
                             f"default {DEFAULT_TAGS!r} or $MATRIX_TAGS")
    parser.add_argument('--accel', default=os.environ.get('MATRIX_ACCELS') or DEFAULT_ACCELS,
                        help="accelerators, each a column per QEMU (comma list, 'auto' for "
                             f"the suite's choice); default {DEFAULT_ACCELS!r} or $MATRIX_ACCELS")
    parser.add_argument('--out', default=os.path.join(paths.build_dir(), 'matrix'))
    parser.add_argument('--avocado-arg', action='append', default=[],
                        help='extra argument for every Avocado job (e.g. -p accel=tcg)')
    parser.add_argument('--suite', nargs='+', default=['tests/functional'],
                        help='test files or directories to run (default tests/functional)')
    parser.add_argument('--from-results', nargs='+', metavar='LABEL=RESULTS_JSON',
                        help='tabulate existing results.json files instead of running jobs')
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results: Dict[str, Dict[str, Cell]] = {}
    if args.from_results:
        columns = []
        for item in args.from_results:
            label, _, path = item.partition('=')
            columns.append(Column(label, path, 'results'))
            results[label] = read_results(path)
    else:
        try:
            columns = [parse_column(text).under(accel)
                       for text in (args.qemu or DEFAULT_QEMUS)
                       for accel in args.accel.replace(',', ' ').split()]
        except ValueError as err:
            parser.error(str(err))
        for column in columns:
            results[column.label] = run_column(column, args.tags, args.out,
                                               args.avocado_arg, log=say, suite=args.suite)
    matrix = table(columns, results)
    matrix.update(generated=time.strftime('%Y-%m-%d %H:%M:%S %Z'), tags=args.tags)
    write_report(args.out, 'matrix', matrix, markdown(matrix, known_issues.load()))
    say(f"written: {os.path.join(args.out, 'matrix.md')}, {os.path.join(args.out, 'matrix.json')}")
    failed = any(cell['kind'] == 'fail' for cells in matrix['cells'].values()
                 for cell in cells.values())
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
