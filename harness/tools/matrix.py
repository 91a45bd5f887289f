"""Run the functional suite against several QEMUs and tabulate the results.

    python -m harness.tools.matrix                                  # the default list
    python -m harness.tools.matrix --tags 'protocol qtest agent' --accel tcg,kvm \\
        --qemu debian-7.2=qemu-system-x86_64 --qemu deb-11.1=deb:trixie-backports

Columns are QEMU × accelerator: each ``--qemu LABEL=WHAT`` under each
accelerator of ``--accel`` (``LABEL-ACCEL``, the job run with ``-p
accel=ACCEL``).  WHAT is a subject (harness/qemu/subject.py): ``deb:SUITE``
(Debian's package from trixie or trixie-backports, run from a cached root:
``qemu_deb``), a source for harness/qemu/build.py (``debian:SUITE[+FEATURE]``,
``src:SPEC``, a tree with ``configure``, a git URL: ``qemu_src``, built first
so that the build's progress shows) or a binary (path or name on $PATH:
``qemu_bin``).

Rows are scenarios × transports (harness/report/scenarios.py): a test method
as its class family tells it, once per transport its classes run it over,
``proxy`` (x-pci-proxy-dev), ``vfio-user`` or ``in-process`` (the control),
read from each test's own tags and class.

A vfio-user test runs two QEMUs, the client (``vfio-user-pci``, the
guest's) and the server (``x-vfio-user-server``, the remote).  The column's
QEMU, as probed (harness/qemu/binary.py), plays whichever of them it can:
the server if it has ``x-vfio-user-server`` (``-p vfio_user_server=`` it,
the client being ``vfio_user_client``'s, by default ``deb:trixie-backports``),
the client if it has ``vfio-user-pci`` (``-p vfio_user_client=`` it, the
server ``vfio_user_server``'s, by default
``src:debian:trixie+vfio-user-server``), both if it has both.  The other
role's QEMU is named in the column's header; ``$VFIO_USER_CLIENT`` and
``$VFIO_USER_SERVER`` choose it.  A QEMU that can play neither role does
not run the column's vfio-user tests: their cells say ``skip:`` with what
it lacks.  Both multi-process roles need ``x-remote`` as well
(harness/testing.py and harness/mpqemu/topology.py check it).

For each column one Avocado job runs the tag selection; its
``results.json`` gives one cell per test:

  pass             PASS
  pass, fixed?     WARN from a known-issue guard: the entry's bug did not
                   reproduce (fixed upstream? update the entry)
  known issue: ID  CANCEL whose reason is a known-issue entry
  skip: reason     SKIP or CANCEL for another reason (missing capability…),
                   the ERROR of a test whose guest the column's KVM cannot
                   run (a Linux guest on a PVM host), or a vfio-user test
                   whose roles the column's QEMU can play neither of
  fail: reason     FAIL, ERROR, INTERRUPTED; a QEMU that could not be
                   built, prepared or probed; a partner QEMU that cannot
                   play its vfio-user role
  not run          the test did not exist in that column's job

Writes ``matrix.md`` (the table, then each known issue met with its
observed/expected behaviour and evidence), ``matrix.html`` (the table as
coloured cells, harness/report/page.py) and ``matrix.json`` under
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
import tempfile
import time
from typing import Dict, List, Optional, Sequence

from ..base import known_issues, paths
from ..base.errors import HarnessError
from ..base.figures import write_report
from ..qemu import binary as qemu_binary
from ..qemu import debroot, subject
from ..qemu.buildcache import BuildError
from ..qemu.source import GIT_URL_RE
from ..report import page, scenarios
from ..report.cells import Cell, read_results, row_info, short as _short, test_row_name
from .vfio_user_roles import CLIENT, SERVER, prepare, vfio_user_plan

DEFAULT_QEMUS = ('debian-7.2=qemu-system-x86_64', 'src-10.0=debian:trixie',
                 'src-10.0+vfu=debian:trixie+vfio-user-server',
                 'deb-11.1=deb:trixie-backports')
DEFAULT_TAGS = 'topology protocol qtest build agent vfio-user'
DEFAULT_ACCELS = 'tcg,kvm'
JOB_TIMEOUT_S = 3600
LIST_TIMEOUT_S = 120
# What a column decides; its jobs take them from its own -p, never from the
# environment (harness/base/params.py would prefer $QEMU_SRC to -p qemu_bin).
COLUMN_PARAMS = ('qemu_bin', 'qemu_src', 'qemu_deb', 'vfio_user_client', 'vfio_user_server',
                 'accel')
PARAM_KEYS = {'bin': 'qemu_bin', 'src': 'qemu_src', 'deb': 'qemu_deb'}


@dataclasses.dataclass
class Column:
    label: str
    what: str
    kind: str                   # 'bin', 'src', 'deb', or 'results' (--from-results)
    accel: Optional[str] = None  # -p accel=, None: the suite's default (auto)
    # Once the QEMU is probed (vfio_user_plan): which vfio-user role it
    # plays, the QEMUs of both roles, or why it plays none.
    vfio_user: Optional[dict] = None

    @property
    def subject(self) -> str:
        """The QEMU as harness/qemu/subject.py spells it."""
        return {'src': subject.SRC, 'deb': subject.DEB}.get(self.kind, '') + self.what

    def avocado_params(self) -> List[str]:
        result = ['-p', f'{PARAM_KEYS.get(self.kind, "qemu_bin")}={self.what}']
        if self.vfio_user and self.vfio_user.get('plays'):
            result += ['-p', f"vfio_user_client={self.vfio_user['client']}",
                       '-p', f"vfio_user_server={self.vfio_user['server']}"]
        return result + (['-p', f'accel={self.accel}'] if self.accel else [])

    def under(self, accel: str) -> 'Column':
        return Column(f'{self.label}-{accel}', self.what, self.kind, accel)


def parse_column(text: str) -> Column:
    """``LABEL=WHAT`` as a column; ValueError naming what is wrong."""
    label, sep, what = text.partition('=')
    if not sep or not label or not what:
        raise ValueError(f"--qemu {text!r}: expected LABEL=WHAT, WHAT a binary, a source or "
                         f"deb:SUITE (e.g. src-10.0=debian:trixie, deb-11.1=deb:trixie-backports)")
    if what.startswith(subject.DEB):
        suite = what[len(subject.DEB):]
        try:
            debroot.check_suite(suite)
        except HarnessError as err:
            raise ValueError(f"--qemu {text!r}: {err}") from None
        return Column(label, suite, 'deb')
    if what.startswith(subject.SRC):
        if not what[len(subject.SRC):]:
            raise ValueError(f"--qemu {text!r}: src: needs a source (src:debian:trixie)")
        return Column(label, what[len(subject.SRC):], 'src')
    if (what.startswith('debian:') or GIT_URL_RE.search(what)
            or os.path.isfile(os.path.join(what, 'configure'))):
        return Column(label, what, 'src')
    try:
        qemu_binary.find_binary(what)
    except HarnessError as err:
        raise ValueError(f"--qemu {text!r}: not a source, not deb:SUITE, and {err}") from None
    return Column(label, what, 'bin')


def check_avocado_args(extra: Sequence[str]) -> None:
    """ValueError for an extra Avocado argument that sets what a column decides."""
    for arg in extra:
        match = re.match(rf"(?:-p\s*)?({'|'.join(COLUMN_PARAMS)})=", arg.strip())
        if match:
            how = ('choose the partner of a column that plays one vfio-user role with '
                   '$VFIO_USER_CLIENT / $VFIO_USER_SERVER' if match.group(1).startswith('vfio')
                   else 'use --qemu and --accel')
            raise ValueError(f"--avocado-arg {arg!r}: each column sets {match.group(1)}; {how}")


def _avocado(*args: str) -> List[str]:
    return [os.path.join(paths.REPO_DIR, 'build', 'venv', 'bin', 'avocado'),
            '--config', os.path.join(paths.REPO_DIR, 'tests', 'functional', 'avocado.conf'),
            *args]


def tag_filters(tags: str, vfio_user: Optional[bool] = None) -> List[str]:
    """Avocado's tag options for ``tags`` (each word one filter: either),
    narrowed to the vfio-user tests (True) or to the others (False).  The
    ``=`` form, since ``-t -vfio-user`` would read as an option."""
    words = tags.split() or ['']
    extra = {None: '', True: scenarios.VFIO_USER_TAG, False: '-' + scenarios.VFIO_USER_TAG}
    return [f"--filter-by-tags={','.join(filter(None, (word, extra[vfio_user])))}"
            for word in words if word or vfio_user is not None]


def list_tests(tags: str, suite: Sequence[str], vfio_user: bool) -> List[str]:
    """Avocado names of the tests the selection holds, vfio-user ones or the others."""
    with tempfile.TemporaryDirectory(prefix='mpqemu-matrix-') as tmp:
        listing = os.path.join(tmp, 'list.json')
        cmd = _avocado('list', '--json', listing, *tag_filters(tags, vfio_user), *suite)
        run = subprocess.run(cmd, cwd=paths.REPO_DIR, capture_output=True, text=True,
                             timeout=LIST_TIMEOUT_S, check=False)
        if run.returncode != 0 or not os.path.exists(listing):
            raise HarnessError(f"{shlex.join(cmd)} failed (exit {run.returncode}): "
                               f"{run.stderr.strip()[-500:]}")
        with open(listing, encoding='utf-8') as f:
            return [entry['Test'] for entry in json.load(f)]


def _prepare_failed(column: Column, err: Exception) -> Cell:
    what = 'build failed' if isinstance(err, BuildError) else f'{column.subject} not usable'
    return Cell('fail', f'{what}: {_short(str(err), 90)}', str(err),
                row=row_info('(prepare)', ''))


@dataclasses.dataclass
class Selection:
    """The Avocado names of the tests the tags select, vfio-user or not."""
    vfio_user: List[str]
    others: List[str]

    @classmethod
    def listed(cls, tags: str, suite: Sequence[str]) -> 'Selection':
        return cls(list_tests(tags, suite, vfio_user=True),
                   list_tests(tags, suite, vfio_user=False))


def run_column(column: Column, tags: str, out_dir: str, extra_args: Sequence[str],
               selection: Selection, log=print,
               suite: Sequence[str] = ('tests/functional',)) -> Dict[str, Cell]:
    """Prepare and probe its QEMU, decide its vfio-user role, run the
    Avocado job, classify its results.  The selection's vfio-user tests
    become skip (or fail) cells where they cannot run."""
    try:
        caps = prepare(column.subject, log)
        column.vfio_user = vfio_user_plan(caps, column.subject, log)
    except HarnessError as err:
        log(f"{column.label}: {err}")
        return {'(prepare)': _prepare_failed(column, err)}
    cells: Dict[str, Cell] = {}
    plan = column.vfio_user
    blocked = plan.get('partner_error') or (None if plan['plays'] else plan['reason'])
    if blocked and selection.vfio_user:
        detail = plan.get('partner_error') or plan['detail']
        log(f"{column.label}: vfio-user tests not run: {detail}")
        kind = 'fail' if plan.get('partner_error') else 'skip'
        for name in selection.vfio_user:
            cells[test_row_name(name)] = Cell(kind, f'{kind}: {_short(blocked, 90)}', detail,
                                              row=row_info(name, scenarios.VFIO_USER))
    if blocked and not selection.others:
        return cells
    filters = tag_filters(tags, False if blocked else None)
    cells.update(_run_job(column, filters, out_dir, extra_args, log, suite))
    return cells


def _job_env() -> Dict[str, str]:
    env = dict(os.environ)
    for name in COLUMN_PARAMS:
        env.pop(name.upper(), None)
    return env


def _run_job(column: Column, filters: Sequence[str], out_dir: str, extra_args: Sequence[str],
             log, suite: Sequence[str]) -> Dict[str, Cell]:
    job_dir = os.path.join(out_dir, 'jobs', column.label)
    os.makedirs(job_dir, exist_ok=True)
    results = os.path.join(job_dir, 'latest', 'results.json')
    # An earlier run's results must never stand in for a job that left none.
    if os.path.lexists(os.path.dirname(results)):
        os.unlink(os.path.dirname(results))
    cmd = _avocado('run', '--job-results-dir', job_dir, *filters, *column.avocado_params(),
                   *extra_args, *suite)
    log(f"{column.label}: {shlex.join(cmd)}")
    started = time.monotonic()
    # Its own session, so that a job past its deadline goes down with
    # every process it started, not just the avocado front end.
    with subprocess.Popen(cmd, cwd=paths.REPO_DIR, stdin=subprocess.DEVNULL, env=_job_env(),
                          start_new_session=True) as job:
        try:
            job.wait(timeout=JOB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
            return {'(job)': Cell('fail', f'job overran {JOB_TIMEOUT_S} s',
                                  f'{shlex.join(cmd)} was killed after {JOB_TIMEOUT_S} s',
                                  row=row_info('(job)', ''))}
    if not os.path.exists(results):
        return {'(job)': Cell('fail', 'no results.json', f'{shlex.join(cmd)} left none',
                              row=row_info('(job)', ''))}
    cells = read_results(results)
    log(f"{column.label}: {len(cells)} tests in {time.monotonic() - started:.0f} s")
    return cells


CELL_MARK = {'pass': '✅', 'fixed?': '⚠️', 'known': '🐞', 'skip': '⏭️', 'fail': '❌',
             'not-run': '·'}


def _row_order(info: dict, name: str) -> tuple:
    transport = info['transport']
    rank = scenarios.TRANSPORTS.index(transport) if transport in scenarios.TRANSPORTS else -1
    return (bool(transport), info['scenario'], rank, name)


def table(columns: List[Column], results: Dict[str, Dict[str, Cell]]) -> dict:
    """Rows (tests, grouped by scenario, then transport) × columns, missing
    cells filled in as not run; ``row_info`` names each row's scenario,
    transport and test class."""
    info = {}
    for cells in results.values():
        for name, cell in cells.items():
            info.setdefault(name, cell.row or row_info(name, scenarios.PROXY))
    rows = sorted(info, key=lambda name: _row_order(info[name], name))
    grid = {row: {c.label: results[c.label].get(row, Cell('not-run', 'not run'))
                  for c in columns} for row in rows}
    return {'columns': [dict(dataclasses.asdict(c), subject=c.subject) for c in columns],
            'rows': rows,
            'row_info': {row: info[row] for row in rows},
            'cells': {row: {label: cell.to_json() for label, cell in cells.items()}
                      for row, cells in grid.items()}}


def _vfio_user_role(column: dict) -> str:
    plan = column.get('vfio_user')
    if not plan:
        return ''
    if not plan.get('plays'):
        return 'vfio-user: neither role'
    if plan['plays'] == f'{SERVER}+{CLIENT}':
        return 'vfio-user: client and server'
    other = CLIENT if plan['plays'] == SERVER else SERVER
    return f"vfio-user: {plan['plays']}, {other} `{plan[other]}`"


def _header(column: dict) -> str:
    parts = [column['label'], f"`{column.get('subject') or column['what']}`"]
    if column.get('accel'):
        parts.append(f"accel={column['accel']}")
    role = _vfio_user_role(column)
    return '<br>'.join(parts + ([role] if role else []))


def _role_notes(columns: Sequence[dict]) -> List[str]:
    """One line per QEMU: the vfio-user role it plays and why."""
    labels: Dict[str, List[str]] = {}
    plans = {}
    for column in columns:
        if column.get('vfio_user'):
            key = column.get('subject') or column['what']
            key += json.dumps(column['vfio_user'], sort_keys=True)
            labels.setdefault(key, []).append(column['label'])
            plans[key] = (column.get('subject') or column['what'], column['vfio_user'])
    lines = []
    for key, (what, plan) in plans.items():
        if plan.get('plays'):
            text = (f"plays the {plan['plays'].replace('+', ' and the ')}: client "
                    f"`{plan[CLIENT]}`, server `{plan[SERVER]}`")
            if plan.get('partner_error'):
                text += f"; not run: {plan['partner_error']}"
        else:
            text = f"vfio-user tests not run: {plan['detail']}"
        lines.append(f"- `{what}` ({', '.join(labels[key])}): {text}")
    return lines


def markdown(matrix: dict, issues: Sequence[known_issues.KnownIssue]) -> str:
    labels = [c['label'] for c in matrix['columns']]
    lines = ['# Multi-process QEMU test matrix', '',
             f"Generated {matrix['generated']}; tags: `{matrix['tags']}`.", '',
             '| scenario | transport | ' + ' | '.join(_header(c) for c in matrix['columns'])
             + ' |', '|---|---|' + '---|' * len(labels)]
    met, previous = set(), None
    for row in matrix['rows']:
        info = matrix.get('row_info', {}).get(row) or {'scenario': row, 'transport': '',
                                                        'test_class': ''}
        cells = []
        for label in labels:
            cell = matrix['cells'][row][label]
            cells.append(f"{CELL_MARK.get(cell['kind'], '')} {cell['text']}".replace('|', '\\|'))
            if cell.get('issue'):
                met.add(cell['issue'])
        scenario = info['scenario'] if info['scenario'] != previous else ''
        previous = info['scenario']
        transport = info['transport'] or '—'
        if info.get('test_class'):
            transport += f"<br>`{info['test_class']}`"
        lines.append(f'| {scenario} | {transport} | ' + ' | '.join(cells) + ' |')
    lines += ['', 'Legend: ✅ pass · 🐞 known issue (CANCEL with the entry) · ⚠️ known issue '
              'did not reproduce (fixed upstream?) · ⏭️ skip/cancel with reason · ❌ fail · '
              '· not run.  Transport: `proxy` x-pci-proxy-dev to a remote, `vfio-user` '
              'vfio-user-pci to an x-vfio-user-server remote, `in-process` the control.', '']
    notes = _role_notes(matrix['columns'])
    if notes:
        lines += ["## The columns' QEMUs in the vfio-user tests", ''] + notes + ['']
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
                        help="Avocado tags, each word one filter (either), 'a,b' both; "
                             f"default {DEFAULT_TAGS!r} or $MATRIX_TAGS")
    parser.add_argument('--accel', default=os.environ.get('MATRIX_ACCELS') or DEFAULT_ACCELS,
                        help="accelerators, each a column per QEMU (comma list, 'auto' for "
                             f"the suite's choice); default {DEFAULT_ACCELS!r} or $MATRIX_ACCELS")
    parser.add_argument('--out', default=os.path.join(paths.build_dir(), 'matrix'))
    parser.add_argument('--avocado-arg', action='append', default=[],
                        help='extra argument for every Avocado job (e.g. -p machine=q35); '
                             'not the parameters a column sets: ' + ', '.join(COLUMN_PARAMS))
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
            check_avocado_args(args.avocado_arg)
            columns = [parse_column(text).under(accel)
                       for text in (args.qemu or DEFAULT_QEMUS)
                       for accel in args.accel.replace(',', ' ').split()]
            selection = Selection.listed(args.tags, args.suite)
            if not selection.vfio_user and not selection.others:
                raise ValueError(f"--tags {args.tags!r} select no test in "
                                 f"{' '.join(args.suite)}")
        except (ValueError, HarnessError) as err:
            parser.error(str(err))
        labels = [c.label for c in columns]
        if len(set(labels)) != len(labels) or not columns:
            parser.error(f"columns {labels}: each --qemu needs a label of its own, "
                         f"and --accel at least one accelerator")
        for column in columns:
            results[column.label] = run_column(column, args.tags, args.out, args.avocado_arg,
                                               selection, log=say, suite=args.suite)
    matrix = table(columns, results)
    matrix.update(generated=time.strftime('%Y-%m-%d %H:%M:%S %Z'), tags=args.tags)
    write_report(args.out, 'matrix', matrix, markdown(matrix, known_issues.load()))
    page.render_matrix(matrix, args.out)
    say(f"written: {os.path.join(args.out, 'matrix.md')}, {os.path.join(args.out, 'matrix.json')}, "
        f"{os.path.join(args.out, 'matrix.html')}")
    failed = any(cell['kind'] == 'fail' for cells in matrix['cells'].values()
                 for cell in cells.values())
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
