"""harness/tools/matrix.py: Avocado results become cells, and the table and its
known-issue section come out of them (no Avocado job is run here)."""

import json

from harness.base import known_issues
from harness.tools import matrix

CRASH = ('KNOWN ISSUE proxy-realize-crash-without-kvm on QEMU 10.0.13: x-pci-proxy-dev '
         'crashes (SIGSEGV) at realize when KVM is not in use. Observed: …')


def result(name, status, reason='<unknown>', whiteboard=None):
    return {'name': f'tests/functional/{name}', 'status': status, 'fail_reason': reason,
            'whiteboard': json.dumps(whiteboard or {})}


def test_statuses_become_cells():
    assert matrix.classify(result('t.py:A.a', 'PASS')).kind == 'pass'
    known = matrix.classify(result('t.py:A.a', 'CANCEL', CRASH))
    assert (known.kind, known.issue) == ('known', 'proxy-realize-crash-without-kvm')
    assert known.text == 'known issue: proxy-realize-crash-without-kvm'
    skip = matrix.classify(result('t.py:A.a', 'CANCEL', 'QEMU at X has no qtest accelerator'))
    assert skip.kind == 'skip' and 'no qtest' in skip.text
    fixed = matrix.classify(result('t.py:A.a', 'WARN',
                                   whiteboard={'known_issue_not_reproduced': 'x'}))
    assert fixed.kind == 'fixed?'
    fail = matrix.classify(result('t.py:A.a', 'FAIL', 'AssertionError: 1 != 2'))
    assert fail.kind == 'fail' and '1 != 2' in fail.text


def test_a_guest_the_columns_kvm_cannot_run_is_a_skip_not_a_failure():
    cell = matrix.classify(result('t.py:A.a', 'ERROR', "AccelError: accel=kvm requested but "
                                  "KVM cannot run a linux guest here: this host's KVM is the "
                                  "PVM flavour"))
    assert cell.kind == 'skip' and 'PVM' in cell.detail


def test_one_column_per_accelerator():
    column = matrix.parse_column('d=qemu-system-x86_64').under('kvm')
    assert column.label == 'd-kvm'
    assert column.avocado_params() == ['-p', 'qemu_bin=qemu-system-x86_64', '-p', 'accel=kvm']


def test_columns_from_labels():
    assert matrix.parse_column('d=qemu-system-x86_64').kind == 'bin'
    assert matrix.parse_column('s=debian:trixie').kind == 'src'
    assert matrix.parse_column('s=debian:trixie').avocado_params() == \
        ['-p', 'qemu_src=debian:trixie']


def test_table_and_markdown_with_evidence(tmp_path):
    for label, status, reason in (('a', 'PASS', ''), ('b', 'CANCEL', CRASH)):
        data = {'tests': [result('test_build.py:BuiltQemu.test_x', status, reason)]}
        (tmp_path / f'{label}.json').write_text(json.dumps(data))
    columns = [matrix.Column('a', 'qemu-a', 'bin'), matrix.Column('b', 'qemu-b', 'src')]
    results = {c.label: matrix.read_results(str(tmp_path / f'{c.label}.json'))
               for c in columns}
    results['a']['test_qtest:Only.here'] = matrix.Cell('pass', 'pass')
    table = matrix.table(columns, results)
    table.update(generated='now', tags='build')
    assert table['rows'] == ['test_build:BuiltQemu.test_x', 'test_qtest:Only.here']
    assert table['cells']['test_qtest:Only.here']['b']['kind'] == 'not-run'
    text = matrix.markdown(table, known_issues.load())
    assert '| test_build:BuiltQemu.test_x | ✅ pass | 🐞 known issue: ' \
           'proxy-realize-crash-without-kvm |' in text
    assert '## Known issue `proxy-realize-crash-without-kvm`' in text
    assert 'tests/known_issues/proxy-realize-crash-without-kvm.json' in text
