"""The qualification matrix end to end, cheaply: small variants files
(the QEMU under test, TCG, a machine-type axis) expanded by Avocado's
multiplexer into one real nested Avocado job, whose results become a table
in Markdown, HTML and JSON: the build tests, which cancel without
``qemu_src``, a QEMU that does not exist (a fail cell; the job runs the
others), and the topology scenarios over each transport on pc and q35."""

import json
import os
import subprocess
import sys

from harness.base import deadlines, params, paths
from harness.qemu import subject
from harness.testing import MultiprocessTest
from harness.tools import vfio_user_roles

MATRIX_TIMEOUT_S = 240
MISSING_QEMU = '/nonexistent/qemu-system-x86_64'


class MatrixRunner(MultiprocessTest):
    """
    :avocado: enable
    :avocado: tags=matrix
    """

    timeout = deadlines.test_timeout(waits_s=MATRIX_TIMEOUT_S)

    def run_matrix(self, tags: str, suite: str, qemus: dict, machines=('pc',)) -> tuple:
        """The matrix of ``qemus`` ({leaf: qemu_bin}) × TCG × ``machines``:
        (exit status, matrix.json, matrix.md)."""
        out = os.path.join(self.workdir, 'matrix-' + tags)
        os.makedirs(out, exist_ok=True)
        variants = os.path.join(out, 'variants.yaml')
        with open(variants, 'w', encoding='utf-8') as f:
            f.write('qemu: !mux\n' + ''.join(f'    {leaf}:\n        qemu_bin: {what}\n'
                                             for leaf, what in qemus.items()))
            f.write('accel: !mux\n    tcg:\n        accel: tcg\nmachine: !mux\n'
                    + ''.join(f'    {m}:\n        machine: {m}\n' for m in machines))
        cmd = [sys.executable, '-m', 'harness.tools.matrix', '--out', out, '--tags', tags,
               '--suite', suite, '--variants', variants]
        run = subprocess.run(cmd, cwd=paths.REPO_DIR, capture_output=True, text=True,
                             timeout=MATRIX_TIMEOUT_S, check=False)
        self.log.info('%s\n%s', run.stdout, run.stderr)
        with open(os.path.join(out, 'matrix.json'), encoding='utf-8') as f:
            table = json.load(f)
        with open(os.path.join(out, 'matrix.md'), encoding='utf-8') as f:
            text = f.read()
        self.assertTrue(os.path.isfile(os.path.join(out, 'matrix.html')))
        self.log.info('%s', text)
        return run.returncode, table, text

    def vfio_user_roles_played(self) -> list:
        """The vfio-user roles the QEMU under test plays; cancels if it
        plays one whose partner is not prepared (a build inside the test)."""
        lacks = vfio_user_roles.roles_of(self.caps)
        playing = [role for role, lack in lacks.items() if lack is None]
        partners = [params.get(f'vfio_user_{role}') for role in lacks if role not in playing]
        if playing and not all(subject.ready(p) for p in partners):
            self.cancel(f"this QEMU plays the vfio-user {'+'.join(playing)}; its partner "
                        f"{' '.join(partners)} is not prepared (make functional "
                        f"TAGS=vfio-user prepares it)")
        return playing

    @property
    def leaf(self) -> str:
        return f'qemu-{".".join(map(str, self.caps.version))}'

    def test_one_job_over_the_variants_and_a_qemu_that_fails(self):
        """The QEMU under test and one that does not exist: the first's
        column has a row per test, each a skip that carries its reason;
        the other is one fail cell naming the cause, and the exit status
        says so."""
        status, table, text = self.run_matrix('build', 'tests/functional/test_build.py',
                                              {self.leaf: self.caps.path,
                                               'missing': MISSING_QEMU})
        self.assertEqual(status, 1)
        column, missing = f'{self.leaf}-tcg-pc', 'missing-tcg-pc'
        self.assertEqual([c['label'] for c in table['columns']], [column, missing])
        self.assertEqual(table['columns'][0]['params'],
                         {'qemu_bin': self.caps.path, 'accel': 'tcg', 'machine': 'pc'})
        self.assertIn('test_build:BuiltQemu.test_remote_and_proxy_start_and_device_is_visible',
                      table['rows'])
        for row in table['rows']:
            cell = table['cells'][row][column]
            if row == '(prepare)':
                self.assertEqual(cell['kind'], 'not-run')
                failed = table['cells'][row][missing]
                self.assertEqual(failed['kind'], 'fail')
                self.assertIn(f'{MISSING_QEMU} does not exist', failed['detail'])
                continue
            self.assertEqual(cell['kind'], 'skip', row)
            self.assertIn('no qemu_src given', cell['detail'])
            self.assertEqual(table['cells'][row][missing]['kind'], 'not-run', row)
        self.assertIn('| test_build:BuiltQemu.test_built_binary_is_cached_and_complete | '
                      'proxy<br>`BuiltQemu` |', text)

    def test_scenarios_by_transport_on_both_machine_types(self):
        """The topology scenarios, each a proxy row and a vfio-user row, in
        a pc and a q35 column: the proxy tests run on both; the vfio-user
        ones run where the QEMU under test plays a role, and are skips
        naming what it lacks (the variant's vfio_user_skip) where it plays
        none."""
        playing = self.vfio_user_roles_played()
        status, table, text = self.run_matrix('topology', 'tests/functional/test_topology.py',
                                              {self.leaf: self.caps.path},
                                              machines=('pc', 'q35'))
        columns = [f'{self.leaf}-tcg-pc', f'{self.leaf}-tcg-q35']
        self.assertEqual([c['label'] for c in table['columns']], columns)
        scenario = 'test_topology:Topology.test_two_remotes_one_proxy'
        rows = {table['row_info'][r]['transport']: r for r in table['rows']
                if table['row_info'][r]['scenario'] == scenario}
        self.assertEqual(sorted(rows), ['proxy', 'vfio-user'])
        for column in columns:
            self.assertIn(table['cells'][rows['proxy']][column]['kind'], ('pass', 'known'))
            vfio_user = table['cells'][rows['vfio-user']][column]
            if playing:
                self.assertIn(vfio_user['kind'], ('pass', 'known'), vfio_user)
            else:
                self.assertEqual(vfio_user['kind'], 'skip')
                self.assertIn('no x-vfio-user-server, no vfio-user-pci', vfio_user['text'])
                self.assertIsNone(table['columns'][0]['vfio_user']['plays'])
        if not playing:
            self.assertEqual(status, 0)
        self.assertIn(f'| {scenario} | proxy<br>`Topology` |', text)
        self.assertIn('|  | vfio-user<br>`TopologyOverVfioUser` |', text)
