"""The qualification matrix: one Avocado job over the variants of a file.

    make matrix                               # tests/matrix/qualification.yaml
    python -m harness.tools.matrix --variants tests/matrix/qualification.yaml \\
        --only /run/qemu/debian-7.2 /run/accel/tcg --tags 'topology protocol'

The variants are described once, in a YAML file for Avocado's multiplexer
(avocado-framework-plugin-varianter-yaml-to-mux): each ``!mux`` node is an
axis (the QEMU, the accelerator, the machine type), each of its leaves one
value, the test parameters it sets (harness/base/params.py).  Avocado
expands them (``avocado variants --json-variants-dump``; ``--only`` and
``--out-of`` are its ``--mux-filter-only`` and ``--mux-filter-out``), and
each variant is a column, named by its leaves (``debian-7.2-tcg-pc``).  The
QEMU of a variant is a subject (harness/qemu/subject.py): ``qemu_bin`` (a
binary, or itself a subject), ``qemu_src`` (built from source) or
``qemu_deb`` (Debian's package, run from a cached root).

Before the job, each variant's QEMU is prepared and probed, so that a build
shows its progress and a QEMU that fails to build or probe is a fail cell
for its variants, which the job leaves out, not a lost job.  What it plays
in the vfio-user tests is then added to its variant
(harness/tools/vfio_user_roles.py): a vfio-user test runs two QEMUs, the
client (``vfio-user-pci``, the guest's) and the server
(``x-vfio-user-server``, the remote).  The variant's QEMU plays whichever
it can, as probed; the other role's QEMU, its partner, is the variant's
``vfio_user_client`` or ``vfio_user_server``, else the parameter's
default (``$VFIO_USER_CLIENT``, ``$VFIO_USER_SERVER``).  A QEMU that plays
neither gets ``vfio_user_skip``, with what it lacks: its vfio-user tests
cancel with it.

Then one Avocado job runs the tag selection over every prepared variant
(``--json-variants-load``), and its ``results.json`` gives a cell per test
and variant.  Rows are scenarios × transports (harness/report/scenarios.py):
a test method as its class family tells it, once per transport its classes
run it over, ``proxy`` (x-pci-proxy-dev), ``vfio-user`` or ``in-process``
(the control), read from each test's own tags and class.  The cells
(harness/report/cells.py):

  pass             PASS
  pass, fixed?     WARN from a known-issue guard: the entry's bug did not
                   reproduce (fixed upstream? update the entry)
  known issue: ID  CANCEL whose reason is a known-issue entry
  skip: reason     SKIP or CANCEL for another reason (missing capability,
                   a vfio-user test whose roles the variant's QEMU plays
                   neither of), or the ERROR of a test whose guest the
                   variant's KVM cannot run (a Linux guest on a PVM host)
  fail: reason     FAIL, ERROR, INTERRUPTED; a QEMU that could not be
                   built, prepared or probed; a partner QEMU that cannot
                   play its vfio-user role
  not run          the test did not run in that variant

Writes ``matrix.md`` (the table, then each known issue met with its
observed/expected behaviour and evidence), ``matrix.html`` (the table as
coloured cells, harness/report/page.py), ``matrix.json`` and the variants
the job ran (``variants.json``) under ``build/matrix/``; the job itself is
in ``build/matrix/job/``.  Exit status 1 if any cell is a failure.
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

from ..base import known_issues, params, paths
from ..base.errors import HarnessError
from ..base.figures import write_report
from ..qemu import subject
from ..qemu.buildcache import BuildError
from ..report import page, scenarios
from ..report.cells import Cell, classify, row_info, short as _short, test_row_name
from .vfio_user_roles import CLIENT, SERVER, prepare, vfio_user_plan

DEFAULT_VARIANTS = os.path.join('tests', 'matrix', 'qualification.yaml')
DEFAULT_TAGS = 'topology protocol qtest build agent vfio-user'
JOB_TIMEOUT_S = 3600            # per variant
VARIANTS_TIMEOUT_S = 120
# Parameters that name a variant's QEMUs: set per variant only.  Its jobs
# never take them from the environment (harness/base/params.py would
# prefer $QEMU_SRC to a variant's qemu_bin), nor from -p.
QEMU_PARAMS = ('qemu_bin', 'qemu_src', 'qemu_deb', 'vfio_user_client', 'vfio_user_server',
               'vfio_user_skip')
# The node the vfio-user facts are added under; the multiplexer's paths
# (/run/*) must find it.
MATRIX_NODE = '/run/matrix'


@dataclasses.dataclass
class Column:
    """One variant: its parameters, its QEMU, and what came of preparing it."""
    label: str
    variant_id: str
    params: Dict[str, str]
    subject: str = ''
    # Once the QEMU is probed (vfio_user_plan): which vfio-user role it
    # plays, the QEMUs of both roles, or why it plays none.
    vfio_user: Optional[dict] = None
    error: Optional[Cell] = dataclasses.field(default=None, compare=False)

    @property
    def settings(self) -> str:
        """The variant's parameters other than its QEMUs: ``accel=tcg machine=q35``."""
        return ' '.join(f'{name}={value}' for name, value in sorted(self.params.items())
                        if name not in QEMU_PARAMS)

    def to_json(self) -> dict:
        return {'label': self.label, 'variant_id': self.variant_id, 'params': self.params,
                'subject': self.subject, 'settings': self.settings, 'vfio_user': self.vfio_user}


def _avocado(*args: str) -> List[str]:
    return [os.path.join(paths.REPO_DIR, 'build', 'venv', 'bin', 'avocado'),
            '--config', os.path.join(paths.REPO_DIR, 'tests', 'functional', 'avocado.conf'),
            *args]


def _dump(variants_file: str, filters: Sequence[str] = ()) -> List[dict]:
    with tempfile.TemporaryDirectory(prefix='mpqemu-matrix-') as tmp:
        dump = os.path.join(tmp, 'variants.json')
        cmd = _avocado('variants', '--mux-yaml', os.path.abspath(variants_file), *filters,
                       '--json-variants-dump', dump)
        run = subprocess.run(cmd, cwd=paths.REPO_DIR, capture_output=True, text=True,
                             timeout=VARIANTS_TIMEOUT_S, check=False)
        if run.returncode != 0 or not os.path.exists(dump):
            why = (run.stderr.strip() or run.stdout.strip())[-500:]
            raise HarnessError(f'{variants_file}: Avocado could not expand its variants '
                               f'(exit {run.returncode}): {why}')
        with open(dump, encoding='utf-8') as f:
            return json.load(f)


def _nodes(variants: Sequence[dict]) -> List[str]:
    """Every node path the variants hold, and their parents."""
    found = set()
    for variant in variants:
        for path, _ in variant['variant']:
            while path not in ('', '/'):
                found.add(path)
                path = os.path.dirname(path)
    return sorted(found)


def expand(variants_file: str, only: Sequence[str] = (),
           out_of: Sequence[str] = ()) -> List[dict]:
    """The variants Avocado's multiplexer makes of ``variants_file``, as
    its JSON variants (HarnessError naming the file when it cannot, or a
    filter that names no node of it)."""
    if not os.path.isfile(variants_file):
        raise HarnessError(f'{variants_file}: no such variants file')
    variants = _dump(variants_file)
    nodes = _nodes(variants)
    for option, given in (('--only', only), ('--out-of', out_of)):
        for path in given:
            if path.rstrip('/') not in nodes:
                raise HarnessError(f'{option} {path}: no such node in {variants_file}; '
                                   f'its nodes: {" ".join(nodes)}')
    if only or out_of:
        variants = _dump(variants_file, [*(['--mux-filter-only', *only] if only else []),
                                         *(['--mux-filter-out', *out_of] if out_of else [])])
    # Filtered to nothing, the multiplexer still gives one variant: empty.
    if not any(leaves for variant in variants for _, leaves in variant['variant']):
        raise HarnessError(f'{variants_file}: no variants' + (' left by --only/--out-of'
                                                              if only or out_of else ''))
    return variants


def label_of(variant: dict) -> str:
    """The variant's leaves, the QEMU's first: ``debian-7.2-tcg-pc``."""
    nodes = [(path, {name for _, name, _ in leaves}) for path, leaves in variant['variant']]
    nodes.sort(key=lambda node: not node[1] & {'qemu_bin', 'qemu_src', 'qemu_deb'})
    return '-'.join(os.path.basename(path.rstrip('/')) for path, _ in nodes) or 'default'


def columns_of(variants: Sequence[dict]) -> List[Column]:
    columns = []
    for variant in variants:
        values = {name: str(value) for name, value in params.of_variant(variant).items()}
        columns.append(Column(label_of(variant), variant['variant_id'], values))
    labels = [c.label for c in columns]
    if len(set(labels)) != len(labels):
        raise HarnessError(f'variants {labels}: two have the same leaves; name each leaf '
                           f'of an axis differently')
    return columns


def check_avocado_args(extra: Sequence[str], decided: Sequence[str] = QEMU_PARAMS) -> None:
    """ValueError for an extra Avocado argument that sets a parameter the
    variants decide (their QEMUs, and whatever their leaves set)."""
    for arg in extra:
        match = re.match(r"(?:-p\s*)?(\w+)=", arg.strip())
        if match and match.group(1) in decided:
            raise ValueError(f"--avocado-arg {arg!r}: the variants decide {match.group(1)}; "
                             f"set it in the variants file (the vfio-user partners also "
                             f"through $VFIO_USER_CLIENT / $VFIO_USER_SERVER)")


def tag_filters(tags: str) -> List[str]:
    """Avocado's tag options for ``tags`` (each word one filter: either).
    The ``=`` form, since ``-t -vfio-user`` would read as an option."""
    return [f'--filter-by-tags={word}' for word in tags.split()]


def _prepare_failed(column: Column, err: Exception) -> Cell:
    what = 'build failed' if isinstance(err, BuildError) else f'{column.subject} not usable'
    return Cell('fail', f'{what}: {_short(str(err), 90)}', str(err),
                row=row_info('(prepare)', ''))


def prepare_columns(columns: Sequence[Column], log=print) -> None:
    """Prepare and probe each variant's QEMU (once per QEMU) and decide
    its vfio-user roles; a QEMU that fails sets ``error`` on its columns."""
    probed: dict = {}
    for column in columns:
        lookup = column.params.get
        try:
            column.subject = subject.under_test(lookup)
            if column.subject not in probed:
                try:
                    probed[column.subject] = prepare(column.subject, log)
                except HarnessError as err:
                    probed[column.subject] = err
            caps = probed[column.subject]
            if isinstance(caps, HarnessError):
                raise caps
            column.vfio_user = vfio_user_plan(caps, column.subject, log, lookup)
        except HarnessError as err:
            log(f'{column.label}: {err}')
            column.error = _prepare_failed(column, err)


def vfio_user_params(plan: dict) -> Dict[str, str]:
    """What a variant's vfio-user plan adds to its parameters."""
    if plan.get('partner_error'):
        return {'vfio_user_skip': plan['partner_error']}
    if not plan.get('plays'):
        return {'vfio_user_skip': f"{plan['reason']} ({plan['detail']})"}
    return {'vfio_user_client': plan[CLIENT], 'vfio_user_server': plan[SERVER]}


def job_variants(variants: Sequence[dict], columns: Sequence[Column]) -> List[dict]:
    """The prepared columns' variants, each with its vfio-user parameters."""
    by_id = {c.variant_id: c for c in columns}
    result = []
    for variant in variants:
        column = by_id[variant['variant_id']]
        if column.error:
            continue
        extra = vfio_user_params(column.vfio_user)
        variant = json.loads(json.dumps(variant))
        variant['variant'] = [[path, [leaf for leaf in leaves if leaf[1] not in extra]]
                              for path, leaves in variant['variant']]
        variant['variant'].append([MATRIX_NODE, [[MATRIX_NODE, name, value]
                                                 for name, value in extra.items()]])
        result.append(variant)
    return result


def _job_env(columns: Sequence[Column]) -> Dict[str, str]:
    env = dict(os.environ)
    for name in set(QEMU_PARAMS).union(*(c.params for c in columns)):
        env.pop(name.upper(), None)
    return env


def run_job(columns: Sequence[Column], variants: Sequence[dict], tags: str, out_dir: str,
            extra_args: Sequence[str], log=print,
            suite: Sequence[str] = ('tests/functional',)) -> Optional[Cell]:
    """One Avocado job over ``variants``; its results.json is
    ``out_dir/job/latest/results.json``.  A Cell when it left none."""
    job_dir = os.path.join(out_dir, 'job')
    os.makedirs(job_dir, exist_ok=True)
    latest = os.path.join(job_dir, 'latest')
    # An earlier run's results must never stand in for a job that left none.
    if os.path.lexists(latest):
        os.unlink(latest)
    variants_file = os.path.join(out_dir, 'variants.json')
    with open(variants_file, 'w', encoding='utf-8') as f:
        json.dump(list(variants), f, indent=1)
    cmd = _avocado('run', '--job-results-dir', job_dir, '--json-variants-load', variants_file,
                   *tag_filters(tags), *extra_args, *suite)
    log(shlex.join(cmd))
    limit = JOB_TIMEOUT_S * len(variants)
    # Its own session, so that a job past its deadline goes down with
    # every process it started, not just the avocado front end.
    with subprocess.Popen(cmd, cwd=paths.REPO_DIR, stdin=subprocess.DEVNULL,
                          env=_job_env(columns), start_new_session=True) as job:
        try:
            job.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
            return Cell('fail', f'job overran {limit} s',
                        f'{shlex.join(cmd)} was killed after {limit} s', row=row_info('(job)', ''))
    if not os.path.exists(os.path.join(latest, 'results.json')):
        return Cell('fail', 'no results.json', f'{shlex.join(cmd)} left none',
                    row=row_info('(job)', ''))
    return None


def read_job(path: str) -> Dict[str, Dict[str, Cell]]:
    """{variant id ('' for a test without one): {row: cell}} of a job's results.json."""
    with open(path, encoding='utf-8') as f:
        data = json.load(f)
    cells: Dict[str, Dict[str, Cell]] = {}
    for test in data.get('tests', []):
        name, _, variant_id = test['name'].partition(';')
        cells.setdefault(variant_id, {})[test_row_name(name)] = classify(dict(test, name=name))
    return cells


def column_cells(column: Column, job: Dict[str, Dict[str, Cell]],
                 job_error: Optional[Cell]) -> Dict[str, Cell]:
    """A column's cells: its preparation's failure, the job's, or its
    tests'; a partner that cannot play its vfio-user role fails the
    tests it made cancel."""
    if column.error:
        return {'(prepare)': column.error}
    if job_error:
        return {'(job)': job_error}
    cells = job.get(column.variant_id, {})
    partner_error = (column.vfio_user or {}).get('partner_error')
    if partner_error:
        for name, cell in cells.items():
            if cell.row and cell.row['transport'] == scenarios.VFIO_USER and cell.kind == 'skip':
                cells[name] = Cell('fail', f'fail: {_short(partner_error, 90)}', partner_error,
                                   row=cell.row)
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
    return {'columns': [c.to_json() for c in columns],
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
    parts = [column['label']]
    if column.get('subject'):
        parts.append(f"`{column['subject']}`")
    if column.get('settings'):
        parts.append(column['settings'])
    role = _vfio_user_role(column)
    return '<br>'.join(parts + ([role] if role else []))


def _role_notes(columns: Sequence[dict]) -> List[str]:
    """One line per QEMU: the vfio-user role it plays and why."""
    labels: Dict[str, List[str]] = {}
    plans = {}
    for column in columns:
        if column.get('vfio_user'):
            key = column['subject'] + json.dumps(column['vfio_user'], sort_keys=True)
            labels.setdefault(key, []).append(column['label'])
            plans[key] = (column['subject'], column['vfio_user'])
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
             f"Generated {matrix['generated']} from `{matrix['variants']}`; "
             f"tags: `{matrix['tags']}`.", '',
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
    parser.add_argument('--variants', default=os.environ.get('MATRIX') or DEFAULT_VARIANTS,
                        help='YAML file for Avocado\'s multiplexer, each !mux node an axis; '
                             f'default {DEFAULT_VARIANTS} or $MATRIX')
    parser.add_argument('--only', nargs='+', default=[], metavar='PATH',
                        help='keep only these leaves of their axes (--mux-filter-only), '
                             'e.g. /run/qemu/debian-7.2 /run/accel/tcg')
    parser.add_argument('--out-of', nargs='+', default=[], metavar='PATH',
                        help='leave these leaves out (--mux-filter-out)')
    parser.add_argument('--tags', default=os.environ.get('MATRIX_TAGS') or DEFAULT_TAGS,
                        help="Avocado tags, each word one filter (either), 'a,b' both; "
                             f"default {DEFAULT_TAGS!r} or $MATRIX_TAGS")
    parser.add_argument('--out', default=os.path.join(paths.build_dir(), 'matrix'))
    parser.add_argument('--avocado-arg', action='append', default=[],
                        help='extra argument for the Avocado job (e.g. --max-parallel-tasks=1); '
                             'not the parameters of the QEMUs: ' + ', '.join(QEMU_PARAMS))
    parser.add_argument('--suite', nargs='+', default=['tests/functional'],
                        help='test files or directories to run (default tests/functional)')
    parser.add_argument('--from-results', metavar='RESULTS_JSON',
                        help="tabulate a matrix job's results.json instead of running one")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.from_results:
        job = read_job(args.from_results)
        columns = [Column(variant_id or 'default', variant_id, {}) for variant_id in job]
        results = {c.label: column_cells(c, job, None) for c in columns}
    else:
        try:
            variants = expand(args.variants, args.only, args.out_of)
            columns = columns_of(variants)
            check_avocado_args(args.avocado_arg,
                               set(QEMU_PARAMS).union(*(c.params for c in columns)))
        except (ValueError, HarnessError) as err:
            parser.error(str(err))
        say(f"{args.variants}: {len(columns)} variants: {' '.join(c.label for c in columns)}")
        prepare_columns(columns, log=say)
        ready = job_variants(variants, columns)
        job_error, job = None, {}
        if ready:
            started = time.monotonic()
            job_error = run_job(columns, ready, args.tags, args.out, args.avocado_arg,
                                log=say, suite=args.suite)
            if not job_error:
                job = read_job(os.path.join(args.out, 'job', 'latest', 'results.json'))
                say(f'{sum(map(len, job.values()))} tests in '
                    f'{time.monotonic() - started:.0f} s')
        results = {c.label: column_cells(c, job, job_error) for c in columns}
    matrix = table(columns, results)
    matrix.update(generated=time.strftime('%Y-%m-%d %H:%M:%S %Z'), tags=args.tags,
                  variants=args.from_results or args.variants)
    write_report(args.out, 'matrix', matrix, markdown(matrix, known_issues.load()))
    page.render_matrix(matrix, args.out)
    say(f"written: {os.path.join(args.out, 'matrix.md')}, {os.path.join(args.out, 'matrix.json')}, "
        f"{os.path.join(args.out, 'matrix.html')}")
    failed = any(cell['kind'] == 'fail' for cells in matrix['cells'].values()
                 for cell in cells.values())
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
