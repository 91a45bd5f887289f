"""harness/tools/matrix.py: Avocado's multiplexer expands the variants file
(a real ``avocado variants``), each variant's QEMU plays the vfio-user role
it can and its variant says so, Avocado results become cells, rows are
scenarios × transports, and the table and its known-issue section come out
of them (tests/functional/test_matrix.py runs real matrix jobs)."""

import dataclasses
import json
import os

import pytest
from avocado.core.safeloader import find_avocado_tests
from conftest import functional_tests

from harness.base import known_issues, params, paths
from harness.base.errors import HarnessError
from harness.mpqemu import topology
from harness.qemu import subject
from harness.qemu.buildcache import BuildError
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


SMALL = """
qemu: !mux
    debian-7.2:
        qemu_bin: qemu-system-x86_64
    src-10.0:
        qemu_src: debian:trixie
accel: !mux
    tcg:
        accel: tcg
    kvm:
        accel: kvm
"""


def variants_file(tmp_path, text=SMALL):
    path = tmp_path / 'variants.yaml'
    path.write_text(text)
    return str(path)


def test_avocados_multiplexer_expands_the_axes_into_columns(tmp_path):
    """Each variant a column named by its leaves, the QEMU's first, with
    the parameters its leaves set."""
    variants = matrix.expand(variants_file(tmp_path))
    columns = matrix.columns_of(variants)
    assert [c.label for c in columns] == ['debian-7.2-tcg', 'debian-7.2-kvm', 'src-10.0-tcg',
                                          'src-10.0-kvm']
    assert columns[0].params == {'qemu_bin': 'qemu-system-x86_64', 'accel': 'tcg'}
    assert columns[0].settings == 'accel=tcg'
    assert columns[3].params == {'qemu_src': 'debian:trixie', 'accel': 'kvm'}
    assert all(c.variant_id == v['variant_id'] for c, v in zip(columns, variants))
    only = matrix.expand(variants_file(tmp_path), only=['/run/accel/tcg'])
    assert [matrix.label_of(v) for v in only] == ['debian-7.2-tcg', 'src-10.0-tcg']
    out_of = matrix.expand(variants_file(tmp_path), out_of=['/run/qemu/src-10.0'])
    assert [matrix.label_of(v) for v in out_of] == ['debian-7.2-tcg', 'debian-7.2-kvm']


def test_the_qualification_matrix_is_qemu_by_accelerator_by_machine():
    columns = matrix.columns_of(matrix.expand(os.path.join(paths.REPO_DIR,
                                                           matrix.DEFAULT_VARIANTS)))
    assert len(columns) == 5 * 2 * 2
    assert {c.params['machine'] for c in columns} == {'pc', 'q35'}
    assert {c.params['accel'] for c in columns} == {'tcg', 'kvm'}
    assert {subject.under_test(c.params.get) for c in columns} == \
        {'qemu-system-x86_64', 'src:debian:trixie', 'src:debian:trixie+vfio-user-server',
         'deb:trixie-backports', 'src:seed:v8'}
    assert 'debian-7.2-tcg-pc' in [c.label for c in columns]


@pytest.mark.parametrize('text, cause', [
    (None, 'no such variants file'),
    ('qemu: !mux\n  a: [unclosed\n', 'Avocado could not expand its variants'),
    ('qemu: !mux\n  a:\n    qemu_bin: x\n  b:\n    qemu_bin: y\n', 'no variants left'),
])
def test_a_bad_variants_file_names_its_cause(tmp_path, text, cause):
    path = variants_file(tmp_path, text) if text else str(tmp_path / 'missing.yaml')
    with pytest.raises(HarnessError, match=cause) as err:
        matrix.expand(path, out_of=['/run/qemu'] if text and 'qemu_bin: y' in text else ())
    assert path in str(err.value)


def test_a_filter_that_names_no_node_is_refused(tmp_path):
    """A typo in --only would otherwise leave its axis empty: columns of
    the default QEMU under a misleading name."""
    with pytest.raises(HarnessError, match='--only /run/qemu/nope: no such node') as err:
        matrix.expand(variants_file(tmp_path), only=['/run/qemu/nope'])
    assert '/run/qemu/debian-7.2' in str(err.value)
    with pytest.raises(HarnessError, match='--out-of /run/acel: no such node'):
        matrix.expand(variants_file(tmp_path), out_of=['/run/acel'])


def test_two_variants_with_the_same_leaves_are_refused():
    variant = {'variant_id': 'v', 'variant': [['/run/q/a', [['/run/q/a', 'accel', 'tcg']]]]}
    with pytest.raises(HarnessError, match='the same leaves'):
        matrix.columns_of([variant, dict(variant, variant_id='w')])


def test_avocado_args_may_not_set_what_the_variants_decide():
    matrix.check_avocado_args(['-p', 'machine=q35', '--max-parallel-tasks=1'])
    for arg in ('qemu_deb=trixie', 'vfio_user_server=x'):
        with pytest.raises(ValueError, match='the variants decide'):
            matrix.check_avocado_args(['-p', arg])
    with pytest.raises(ValueError, match='the variants decide machine'):
        matrix.check_avocado_args(['-p', 'machine=q35'], matrix.QEMU_PARAMS + ('machine',))


def test_tag_filters():
    assert matrix.tag_filters('topology agent,kvm') == \
        ['--filter-by-tags=topology', '--filter-by-tags=agent,kvm']
    assert matrix.tag_filters('') == []


def test_each_prepared_variant_carries_its_vfio_user_parameters(tmp_path, caps, monkeypatch):
    """A QEMU is prepared once for all its variants; one that fails to
    prepare is a fail cell and its variants are left out of the job; the
    others carry their partner or the reason their vfio-user tests cancel."""
    variants = matrix.expand(variants_file(tmp_path))
    columns = matrix.columns_of(variants)
    prepared = []

    def prepare(spec, log):
        prepared.append(spec)
        if spec.startswith('src:'):
            raise BuildError('configure failed: see build.log')
        return caps
    monkeypatch.setattr(matrix, 'prepare', prepare)
    matrix.prepare_columns(columns, log=lambda message: None)
    assert prepared == ['qemu-system-x86_64', 'src:debian:trixie']
    failed = 'build failed: configure failed: see build.log'
    assert [c.error.text if c.error else None for c in columns] == [None, None, failed, failed]
    assert columns[0].vfio_user['plays'] is None
    ready = matrix.job_variants(variants, columns)
    assert [v['variant_id'] for v in ready] == [c.variant_id for c in columns[:2]]
    added = ready[0]['variant'][-1]
    assert added[0] == matrix.MATRIX_NODE
    skip = params.of_variant(ready[0])['vfio_user_skip']
    assert 'no x-vfio-user-server, no vfio-user-pci' in skip and '--enable-vfio-user-server' in skip
    assert params.of_variant(ready[0])['qemu_bin'] == 'qemu-system-x86_64'
    assert matrix.column_cells(columns[2], {}, None)['(prepare)'].kind == 'fail'


def test_a_job_s_results_are_grouped_by_variant(tmp_path):
    tests = [dict(result(TOPOLOGY, 'PASS'), name=f'tests/functional/{TOPOLOGY};v1'),
             dict(result(TOPOLOGY_VFU, 'CANCEL', 'vfio-user tests do not run here: x'),
                  name=f'tests/functional/{TOPOLOGY_VFU};v1'),
             dict(result(TOPOLOGY, 'FAIL', 'boom'), name=f'tests/functional/{TOPOLOGY};v2')]
    job = matrix.read_job(write_results(tmp_path, 'job', tests))
    row, row_vfu = 'test_topology:Topology.test_two_remotes_one_proxy', \
        'test_topology:TopologyOverVfioUser.test_two_remotes_one_proxy'
    assert sorted(job) == ['v1', 'v2']
    assert job['v1'][row].kind == 'pass' and job['v2'][row].kind == 'fail'
    assert job['v1'][row_vfu].row['transport'] == 'vfio-user'
    plays = matrix.Column('a', 'v1', {}, vfio_user={'plays': None})
    assert matrix.column_cells(plays, job, None)[row_vfu].kind == 'skip'
    # A partner that cannot play its part: the tests it made cancel fail.
    broken = matrix.Column('a', 'v1', {}, vfio_user={'plays': 'server', 'partner_error':
                                                     'vfio_user_client=x cannot be the client'})
    cell = matrix.column_cells(broken, matrix.read_job(write_results(tmp_path, 'job', tests)),
                               None)[row_vfu]
    assert (cell.kind, cell.detail) == ('fail', 'vfio_user_client=x cannot be the client')
    lost = matrix.Column('a', 'v1', {})
    assert matrix.column_cells(lost, job, cells.Cell('fail', 'no results.json')) == \
        {'(job)': cells.Cell('fail', 'no results.json')}


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


def test_every_functional_tests_tags_name_its_placement():
    """The matrix reads a test's transport from its tags: they must say
    what its class's placement is."""
    checked = 0
    for name, cls, tags in functional_tests():
        assert scenarios.transport(tags) == cls.placement, \
            f'{name}: placement {cls.placement!r} but tags {sorted(tags)}'
        checked += 1
    assert checked > 50


def test_rows_are_scenarios_by_transport(tmp_path):
    """Twins share a scenario; its rows come proxy, vfio-user, in-process."""
    tests = [result(AGENT_VFU, 'PASS'), result(AGENT_CONTROL, 'PASS'), result(AGENT, 'PASS'),
             result(TOPOLOGY_VFU, 'PASS'), result(TOPOLOGY, 'CANCEL', CRASH)]
    column = matrix.Column('deb-11.1-kvm', 'v', {'qemu_deb': 'trixie-backports', 'accel': 'kvm'},
                           'deb:trixie-backports')
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
    table.update(generated='now', tags='agent topology', variants='v.yaml')
    text = matrix.markdown(table, known_issues.load())
    assert '| scenario | transport | deb-11.1-kvm<br>`deb:trixie-backports`<br>accel=kvm |' \
        in text
    assert ('| test_topology:Topology.test_two_remotes_one_proxy | proxy<br>`Topology` | '
            '🐞 known issue: proxy-realize-crash-without-kvm |\n'
            '|  | vfio-user<br>`TopologyOverVfioUser` | ✅ pass |') in text


def test_table_and_markdown_with_evidence(tmp_path):
    for label, status, reason in (('a', 'PASS', ''), ('b', 'CANCEL', CRASH)):
        write_results(tmp_path, label, [result('test_build.py:BuiltQemu.test_x', status, reason)])
    columns = [matrix.Column('a', 'va', {'qemu_bin': 'qemu-a'}, 'qemu-a'),
               matrix.Column('b', 'vb', {'qemu_src': 'qemu-b'}, 'src:qemu-b')]
    results = {c.label: cells.read_results(str(tmp_path / f'{c.label}.json'))
               for c in columns}
    results['a']['test_qtest:Only.here'] = cells.Cell('pass', 'pass')
    table = matrix.table(columns, results)
    table.update(generated='now', tags='build', variants='v.yaml')
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

    assert matrix.vfio_user_params(broken) == {'vfio_user_skip': broken['partner_error']}
    # The variant's own partner comes before the environment's.
    lookup = {'vfio_user_client': '/partner/client'}.get
    assert matrix.vfio_user_params(vfio_user_roles.vfio_user_plan(server, 'src:x',
                                                                  lookup=lookup)) == \
        {'vfio_user_client': '/partner/client', 'vfio_user_server': 'src:x'}


def test_make_matrix_defaults_are_the_tools():
    """``make matrix`` and ``python -m harness.tools.matrix`` run the same matrix."""
    with open(os.path.join(paths.REPO_DIR, 'Makefile'), encoding='utf-8') as f:
        text = f.read().replace('\\\n', ' ')
    defaults = dict(line.split(' ?=', 1) for line in text.splitlines()
                    if line.startswith('MATRIX') and ' ?=' in line)
    assert defaults['MATRIX'].strip() == matrix.DEFAULT_VARIANTS
    assert defaults['MATRIX_TAGS'].split() == matrix.DEFAULT_TAGS.split()
