"""The known-issue registry (tests/known_issues/*.json): every entry
loads, version ranges and "when" conditions, matching a guarded block's
error, and the texts a test result carries."""

import json

import pytest

from harness.base import known_issues
from harness.base.errors import HarnessError


def entry(tmp_path, **fields):
    data = {'id': 'x-issue', 'title': 'a thing breaks', 'qemu': {'min': '10.0'},
            'match': {'error': r'exit status -11'}, 'observed': 'it broke',
            'expected': 'it works', 'evidence': {'qemu': '10.0.13'}}
    data.update(fields)
    (tmp_path / f"{data['id']}.json").write_text(json.dumps(data))
    return known_issues.load(str(tmp_path))


def test_every_registered_entry_loads_and_has_the_fields_a_report_needs():
    issues = known_issues.load()
    assert issues
    for issue in issues:
        for key in ('observed', 'expected', 'evidence'):
            assert key in issue.data, f'{issue.path} lacks {key}'
    assert len({i.id for i in issues}) == len(issues)


def test_version_range_and_accel_condition(tmp_path):
    issue, = entry(tmp_path, qemu={'min': '10.0', 'fixed_in': '10.2'},
                   when={'accel': ['tcg', 'qtest']})
    assert not known_issues.applies(issue, (7, 2, 22), accel='tcg')
    assert known_issues.applies(issue, (10, 0, 13), accel='tcg')
    assert known_issues.applies(issue, (10, 1, 0), accel='qtest')
    assert not known_issues.applies(issue, (10, 0, 13), accel='kvm')
    assert not known_issues.applies(issue, (10, 2, 0), accel='tcg')


def test_unknown_condition_is_an_error(tmp_path):
    issue, = entry(tmp_path, when={'machine': ['q35']})
    with pytest.raises(HarnessError, match="'when' knows"):
        known_issues.applies(issue, (10, 0, 0), accel='tcg')


def test_error_match_against_a_guarded_exception(tmp_path):
    issue, = entry(tmp_path)
    crash = known_issues.error_result(RuntimeError('proxy did not start (exit status -11)'))
    assert crash == {'outcome': 'error',
                     'error': 'RuntimeError: proxy did not start (exit status -11)'}
    assert issue.matches(crash)
    assert not issue.matches(known_issues.error_result(AssertionError('1 != 2')))
    assert known_issues.error_result(AssertionError('x'))['outcome'] == 'fail'


def test_report_texts_name_the_entry_and_its_evidence(tmp_path):
    issue, = entry(tmp_path)
    text = known_issues.explain(issue, (10, 0, 13))
    assert text.startswith('KNOWN ISSUE x-issue on QEMU 10.0.13: a thing breaks.')
    assert 'Observed: it broke' in text and 'Expected: it works' in text
    assert 'qemu: 10.0.13' in text
    note = known_issues.fixed_note(issue, (10, 0, 13))
    assert note.startswith('FIXED UPSTREAM? known issue x-issue') and 'fixed_in' in note


def test_lookup_by_id_and_by_test_name():
    crash = known_issues.by_id('proxy-realize-crash-without-kvm')
    assert crash.data['guard'] == 'launch'
    with pytest.raises(HarnessError, match='no known issue'):
        known_issues.by_id('no-such-issue')
    ids = [i.id for i in known_issues.for_test(
        'tests/functional/test_qtest.py:ProxiedLsiOverQtest.test_interrupt_reaches_the_ioapic')]
    assert 'proxy-intx-needs-kvm' in ids


def test_fuzz_results_still_match_fuzz_entries_only():
    issues = known_issues.load()
    hang = {'outcome': 'hang', 'notes': 'resamplefd=dev-zero', 'signal': '', 'log': '',
            'transport': 'proxy'}
    assert known_issues.lookup(issues, hang, (7, 2, 22)).id == \
        'remote-resamplefd-dev-zero-busy-loop'
    # An entry found over one transport does not explain the other's findings.
    assert known_issues.lookup(issues, dict(hang, transport='vfio-user'), (7, 2, 22)) is None
    abort = {'outcome': 'crash', 'signal': 'SIGABRT', 'notes': 'cfg write 7@0xf9',
             'log': 'Bail out! ERROR:include/qemu/bswap.h:428:ldn_le_p: code should not be reached',
             'transport': 'vfio-user'}
    assert known_issues.lookup(issues, abort, (10, 0, 13)).id == \
        'vfio-user-server-aborts-on-odd-config-access'
    assert known_issues.lookup(issues, dict(abort, transport='proxy'), (10, 0, 13)) is None


def test_test_patterns_limit_which_tests_an_entry_covers():
    intx = known_issues.by_id('proxy-intx-needs-kvm')
    proxied = '6-tests/functional/test_qtest.py:ProxiedLsiOverQtest.' \
              'test_interrupt_reaches_the_ioapic'
    assert known_issues.covers(intx, proxied)
    assert not known_issues.covers(intx, proxied.replace('Proxied', 'InProcess'))
    # The same test in one variant of a varianter job (the matrix).
    assert known_issues.covers(intx, f'{proxied};run-accel-tcg-machine-pc-qemu-debian-7.2-924c')
    assert known_issues.for_test(f'{proxied};v1') == known_issues.for_test(proxied) != []
    fuzz_entry = known_issues.by_id('remote-resamplefd-dev-zero-busy-loop')
    assert known_issues.covers(fuzz_entry, 'anything')


def test_avocado_test_fail_counts_as_a_failure():
    from avocado.core.exceptions import TestFail
    assert known_issues.error_result(TestFail('Tuples differ: (0, 0) != (4096, 18)')) == \
        {'outcome': 'fail', 'error': 'TestFail: Tuples differ: (0, 0) != (4096, 18)'}
    issue = known_issues.by_id('proxy-query-pci-shows-local-ids')
    assert issue.matches(known_issues.error_result(
        TestFail('Tuples differ: (0, 0) != (4096, 18)\n\nFirst differing element 0:')))
