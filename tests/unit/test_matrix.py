"""harness/tools/matrix.py: Avocado results become cells, rows are scenarios
× transports, each column's QEMU plays the vfio-user role it can, and the
table and its known-issue section come out of them (no Avocado job is run
here)."""

import dataclasses
import glob
import importlib.util
import json
import os

import pytest
from avocado.core.safeloader import find_avocado_tests

from harness.base import known_issues, paths
from harness.mpqemu import topology
from harness.report import cells, page, scenarios
from harness.tools import matrix, vfio_user_roles

CRASH = ('KNOWN ISSUE proxy-realize-crash-without-kvm on QEMU 10.0.13: x-pci-proxy-dev '
         'crashes (SIGSEGV) at realize when KVM is not in use. Observed: …')
TOPOLOGY = 'test_topology.py:Topology.test_two_remotes_one_proxy'
TOPOLOGY_VFU = 'test_topology.py:TopologyOverVfioUser.test_two_remotes_one_proxy'
AGENT = 'test_agent.py:ProxiedAgent.test_agent_drives_the_lsi'
AGENT_CONTROL = 'test_agent.py:InProcessAgent.test_agent_drives_the_lsi'
AGENT_VFU = 'test_agent.py:VfioUserAgent.test_agent_drives_the_lsi'


def result(name, status, reason='<unknown>', whiteboard=None, tags=None):
    return {'name': f'tests/functional/{name}', 'status': status, 'fail_reason': reason,
            'whiteboard': json.dumps(whiteboard or {}),
            'tags': tags if tags is not None else _tags_of(name)}


def _tags_of(name):
    """The tags Avocado gives a real functional test (results.json's form)."""
    path, _, rest = name.partition(':')
    cls, _, method = rest.partition('.')
    path = os.path.join(paths.REPO_DIR, 'tests', 'functional', path)
    found, _ = find_avocado_tests(path) if os.path.exists(path) else ({}, None)
    for test_method, tags, _ in found.get(cls, []):
        if test_method == method:
            return {tag: sorted(values) if values else None for tag, values in tags.items()}
    return {}


def write_results(tmp_path, label, tests):
    path = tmp_path / f'{label}.json'
    path.write_text(json.dumps({'tests': tests}))
    return str(path)


def test_statuses_become_cells():
    assert cells.classify(result('t.py:A.a', 'PASS')).kind == 'pass'
    known = cells.classify(result('t.py:A.a', 'CANCEL', CRASH))
    assert (known.kind, known.issue) == ('known', 'proxy-realize-crash-without-kvm')
    assert known.text == 'known issue: proxy-realize-crash-without-kvm'
    skip = cells.classify(result('t.py:A.a', 'CANCEL', 'QEMU at X has no qtest accelerator'))
    assert skip.kind == 'skip' and 'no qtest' in skip.text
    fixed = cells.classify(result('t.py:A.a', 'WARN',
                                   whiteboard={'known_issue_not_reproduced': 'x'}))
    assert fixed.kind == 'fixed?'
    fail = cells.classify(result('t.py:A.a', 'FAIL', 'AssertionError: 1 != 2'))
    assert fail.kind == 'fail' and '1 != 2' in fail.text


def test_a_guest_the_columns_kvm_cannot_run_is_a_skip_not_a_failure():
    cell = cells.classify(result('t.py:A.a', 'ERROR', "AccelError: accel=kvm requested but "
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
    vfu = matrix.parse_column('s=src:debian:trixie+vfio-user-server')
    assert (vfu.kind, vfu.what, vfu.subject) == \
        ('src', 'debian:trixie+vfio-user-server', 'src:debian:trixie+vfio-user-server')
    deb = matrix.parse_column('n=deb:trixie-backports')
    assert (deb.kind, deb.subject) == ('deb', 'deb:trixie-backports')
    assert deb.avocado_params() == ['-p', 'qemu_deb=trixie-backports']


@pytest.mark.parametrize('text, cause', [
    ('no-label', 'expected LABEL=WHAT'),
    ('=qemu-system-x86_64', 'expected LABEL=WHAT'),
    ('s=src:', 'src: needs a source'),
    ('n=deb:sid', 'qemu_deb=sid: not a suite this harness prepares; use one of trixie'),
    ('b=/no/such/qemu-system-x86_64', '/no/such/qemu-system-x86_64 does not exist'),
    ('b=no-such-qemu', 'no-such-qemu is not on $PATH'),
])
def test_a_bad_column_names_its_cause(text, cause):
    with pytest.raises(ValueError, match='--qemu') as err:
        matrix.parse_column(text)
    assert cause in str(err.value)


def test_avocado_args_may_not_set_what_a_column_decides():
    matrix.check_avocado_args(['-p', 'machine=q35'])
    for arg in ('qemu_deb=trixie', '-p accel=tcg', 'vfio_user_server=x'):
        with pytest.raises(ValueError, match='each column sets'):
            matrix.check_avocado_args(['-p', arg])


def test_tag_filters_narrow_to_vfio_user_or_the_rest():
    assert matrix.tag_filters('topology agent,kvm') == \
        ['--filter-by-tags=topology', '--filter-by-tags=agent,kvm']
    assert matrix.tag_filters('topology agent', vfio_user=False) == \
        ['--filter-by-tags=topology,-vfio-user', '--filter-by-tags=agent,-vfio-user']
    assert matrix.tag_filters('', vfio_user=True) == ['--filter-by-tags=vfio-user']
    assert matrix.tag_filters('') == []


def test_transport_from_tags_and_scenario_from_the_class_family():
    assert scenarios.transport({'topology': None, 'vfio-user': None}) == topology.VFIO_USER
    assert scenarios.transport({'agent': None, 'control': None}) == topology.IN_PROCESS
    assert scenarios.transport({'protocol': None}) == topology.PROXY
    for name in (AGENT, AGENT_CONTROL, AGENT_VFU):
        assert scenarios.scenario(f'tests/functional/{name}') == \
            'test_agent:ProxiedAgent.test_agent_drives_the_lsi'
    assert scenarios.scenario('tests/functional/test_qtest.py:InProcessLsiOverQtest.'
                              'test_register_round_trips') == \
        'test_qtest:LsiOverQtest.test_register_round_trips'
    # A twin that overrides the method still tells its parent's story.
    classes = {'Base': (('MultiprocessTest',), frozenset({'test_a'})),
               'Twin': (('Base',), frozenset({'test_a', 'setUp'})),
               'Own': (('Base',), frozenset({'test_b'}))}
    assert scenarios.defining_root(classes, 'Twin', 'test_a') == 'Base'
    assert scenarios.defining_root(classes, 'Own', 'test_b') == 'Own'
    assert scenarios.scenario('(prepare)') == '(prepare)'


def _functional_classes():
    for path in sorted(glob.glob(os.path.join(paths.REPO_DIR, 'tests', 'functional',
                                              'test_*.py'))):
        name = 'functional_' + os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found, _ = find_avocado_tests(path)
        for cls, methods in found.items():
            for method, tags, _ in methods:
                yield f'{os.path.basename(path)}:{cls}.{method}', getattr(module, cls), tags


def test_every_functional_tests_tags_name_its_placement():
    """The matrix reads a test's transport from its tags: they must say
    what its class's placement is."""
    checked = 0
    for name, cls, tags in _functional_classes():
        assert scenarios.transport(tags) == cls.placement, \
            f'{name}: placement {cls.placement!r} but tags {sorted(tags)}'
        checked += 1
    assert checked > 50


def test_rows_are_scenarios_by_transport(tmp_path):
    """Twins share a scenario; its rows come proxy, vfio-user, in-process."""
    tests = [result(AGENT_VFU, 'PASS'), result(AGENT_CONTROL, 'PASS'), result(AGENT, 'PASS'),
             result(TOPOLOGY_VFU, 'PASS'), result(TOPOLOGY, 'CANCEL', CRASH)]
    column = matrix.Column('deb-11.1-kvm', 'trixie-backports', 'deb', 'kvm')
    results = {column.label: cells.read_results(write_results(tmp_path, 'a', tests))}
    table = matrix.table([column], results)
    assert table['rows'] == ['test_agent:ProxiedAgent.test_agent_drives_the_lsi',
                             'test_agent:VfioUserAgent.test_agent_drives_the_lsi',
                             'test_agent:InProcessAgent.test_agent_drives_the_lsi',
                             'test_topology:Topology.test_two_remotes_one_proxy',
                             'test_topology:TopologyOverVfioUser.test_two_remotes_one_proxy']
    info = table['row_info']
    assert [info[r]['transport'] for r in table['rows']] == \
        ['proxy', 'vfio-user', 'in-process', 'proxy', 'vfio-user']
    assert info['test_topology:TopologyOverVfioUser.test_two_remotes_one_proxy'] == \
        {'scenario': 'test_topology:Topology.test_two_remotes_one_proxy',
         'transport': 'vfio-user', 'test_class': 'TopologyOverVfioUser'}
    table.update(generated='now', tags='agent topology')
    text = matrix.markdown(table, known_issues.load())
    assert '| scenario | transport | deb-11.1-kvm<br>`deb:trixie-backports`<br>accel=kvm |' \
        in text
    assert ('| test_topology:Topology.test_two_remotes_one_proxy | proxy<br>`Topology` | '
            '🐞 known issue: proxy-realize-crash-without-kvm |\n'
            '|  | vfio-user<br>`TopologyOverVfioUser` | ✅ pass |') in text


def test_table_and_markdown_with_evidence(tmp_path):
    for label, status, reason in (('a', 'PASS', ''), ('b', 'CANCEL', CRASH)):
        write_results(tmp_path, label, [result('test_build.py:BuiltQemu.test_x', status, reason)])
    columns = [matrix.Column('a', 'qemu-a', 'bin'), matrix.Column('b', 'qemu-b', 'src')]
    results = {c.label: cells.read_results(str(tmp_path / f'{c.label}.json'))
               for c in columns}
    results['a']['test_qtest:Only.here'] = cells.Cell('pass', 'pass')
    table = matrix.table(columns, results)
    table.update(generated='now', tags='build')
    assert table['rows'] == ['test_build:BuiltQemu.test_x', 'test_qtest:Only.here']
    assert table['cells']['test_qtest:Only.here']['b']['kind'] == 'not-run'
    text = matrix.markdown(table, known_issues.load())
    assert '| test_build:BuiltQemu.test_x | proxy<br>`BuiltQemu` | ✅ pass | 🐞 known issue: ' \
           'proxy-realize-crash-without-kvm |' in text
    assert '## Known issue `proxy-realize-crash-without-kvm`' in text
    assert 'tests/known_issues/proxy-realize-crash-without-kvm.json' in text
    html = open(page.render_matrix(table, str(tmp_path)), encoding='utf-8').read()
    assert ('<td>test_build:BuiltQemu.test_x</td><td>proxy (BuiltQemu)</td>'
            '<td class="pass" title="pass">pass</td><td class="known" title="KNOWN ISSUE '
            'proxy-realize-crash-without-kvm') in html
    assert '<td class="not-run" title="not run">not run</td>' in html


def test_a_qemu_plays_the_vfio_user_roles_its_probe_shows(caps, monkeypatch):
    """Debian 12's 7.2 plays neither role; a server build plays the server
    with the client the parameters name, a client the client."""
    neither = vfio_user_roles.vfio_user_plan(caps, caps.path)
    assert neither['plays'] is None
    assert 'no x-vfio-user-server, no vfio-user-pci' in neither['reason']
    assert '--enable-vfio-user-server' in neither['detail']
    assert 'QEMU 10.1 and later' in neither['detail']

    server = dataclasses.replace(caps, vfio_user_server=True)
    client = dataclasses.replace(caps, vfio_user_client=True)
    partners = {'/partner/client': client, '/partner/server': server}
    monkeypatch.setattr(vfio_user_roles, 'prepare', lambda spec, log: partners[spec])
    monkeypatch.setenv('VFIO_USER_CLIENT', '/partner/client')
    monkeypatch.setenv('VFIO_USER_SERVER', '/partner/server')
    assert vfio_user_roles.vfio_user_plan(server, 'src:x') == \
        {'plays': 'server', 'server': 'src:x', 'client': '/partner/client'}
    assert vfio_user_roles.vfio_user_plan(client, 'deb:y') == \
        {'plays': 'client', 'client': 'deb:y', 'server': '/partner/server'}
    both = dataclasses.replace(server, vfio_user_client=True)
    assert vfio_user_roles.vfio_user_plan(both, 'z')['plays'] == 'server+client'
    # A partner that cannot play its part is named: the column's vfio-user cells fail.
    monkeypatch.setenv('VFIO_USER_CLIENT', '/partner/server')
    broken = vfio_user_roles.vfio_user_plan(server, 'src:x')
    assert broken['partner_error'].startswith('vfio_user_client=/partner/server cannot be '
                                              'the client: QEMU 7.2.')

    column = matrix.Column('c', 'debian:trixie+vfio-user-server', 'src', 'tcg',
                           vfio_user={'plays': 'server', 'server': 'src:x', 'client': 'deb:y'})
    assert column.avocado_params() == ['-p', 'qemu_src=debian:trixie+vfio-user-server',
                                       '-p', 'vfio_user_client=deb:y',
                                       '-p', 'vfio_user_server=src:x', '-p', 'accel=tcg']


def test_vfio_user_tests_a_column_cannot_play_are_skips_not_runs(caps, monkeypatch, tmp_path):
    monkeypatch.setattr(matrix, 'prepare', lambda spec, log: caps)
    monkeypatch.setattr(matrix, '_run_job', lambda *a, **k: pytest.fail('a job was run'))
    selection = matrix.Selection(vfio_user=[f'tests/functional/{TOPOLOGY_VFU}'], others=[])
    column = matrix.Column('debian-7.2-tcg', caps.path, 'bin', 'tcg')
    cells = matrix.run_column(column, 'vfio-user', str(tmp_path), [], selection,
                              log=lambda message: None)
    cell = cells['test_topology:TopologyOverVfioUser.test_two_remotes_one_proxy']
    assert cell.kind == 'skip'
    assert cell.text.startswith('skip: QEMU 7.2.') and 'no vfio-user-pci' in cell.text
    assert cell.row['scenario'] == 'test_topology:Topology.test_two_remotes_one_proxy'
    assert column.vfio_user['plays'] is None


def test_make_matrix_defaults_are_the_tools():
    """``make matrix`` and ``python -m harness.tools.matrix`` run the same matrix."""
    with open(os.path.join(paths.REPO_DIR, 'Makefile'), encoding='utf-8') as f:
        text = f.read().replace('\\\n', ' ')
    defaults = dict(line.split(' ?= ', 1) for line in text.splitlines()
                    if line.startswith('MATRIX_') and ' ?= ' in line)
    assert defaults['MATRIX_QEMUS'].split() == list(matrix.DEFAULT_QEMUS)
    assert defaults['MATRIX_TAGS'].split() == matrix.DEFAULT_TAGS.split()
    assert defaults['MATRIX_ACCELS'].strip() == matrix.DEFAULT_ACCELS
