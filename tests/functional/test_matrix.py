"""The matrix runner end to end, cheaply: one column (the QEMU under test),
in real nested Avocado jobs whose results become a table in Markdown and
JSON: the build tests, which cancel without ``qemu_src``, and the topology
scenarios over each transport."""

import json
import os
import subprocess
import sys

from harness.base import deadlines, params, paths
from harness.qemu import subject
from harness.testing import MultiprocessTest
from harness.tools import vfio_user_roles

MATRIX_TIMEOUT_S = 240


class MatrixRunner(MultiprocessTest):
    """
    :avocado: enable
    :avocado: tags=matrix
    """

    timeout = deadlines.test_timeout(waits_s=MATRIX_TIMEOUT_S)

    def run_matrix(self, tags: str, suite: str) -> tuple:
        """The matrix of the QEMU under test under TCG: (exit status,
        matrix.json, matrix.md, its column's label)."""
        out = os.path.join(self.workdir, 'matrix-' + tags)
        label = f'qemu-{".".join(map(str, self.caps.version))}'
        cmd = [sys.executable, '-m', 'harness.tools.matrix', '--out', out, '--tags', tags,
               '--suite', suite, '--accel', 'tcg', '--qemu', f'{label}={self.caps.path}']
        run = subprocess.run(cmd, cwd=paths.REPO_DIR, capture_output=True, text=True,
                             timeout=MATRIX_TIMEOUT_S, check=False)
        self.log.info('%s\n%s', run.stdout, run.stderr)
        with open(os.path.join(out, 'matrix.json'), encoding='utf-8') as f:
            table = json.load(f)
        with open(os.path.join(out, 'matrix.md'), encoding='utf-8') as f:
            text = f.read()
        self.log.info('%s', text)
        return run.returncode, table, text, f'{label}-tcg'

    def test_one_column_table_from_a_real_job(self):
        """A nested job against qemu_bin yields a row per test, each cell
        a skip that carries its reason, and both output files."""
        status, table, text, column = self.run_matrix('build', 'tests/functional/test_build.py')
        self.assertEqual(status, 0)
        self.assertEqual([c['label'] for c in table['columns']], [column])
        self.assertIn('test_build:BuiltQemu.test_remote_and_proxy_start_and_device_is_visible',
                      table['rows'])
        for row in table['rows']:
            cell = table['cells'][row][column]
            self.assertEqual(cell['kind'], 'skip', row)
            self.assertIn('no qemu_src given', cell['detail'])
        self.assertIn('| test_build:BuiltQemu.test_built_binary_is_cached_and_complete | '
                      'proxy<br>`BuiltQemu` |', text)

    def test_scenarios_by_transport_from_a_real_job(self):
        """The topology scenarios, each a proxy row and a vfio-user row: the
        proxy tests run; the vfio-user ones run where the QEMU under test
        plays a role, and are skips naming what it lacks where it plays none."""
        lacks = vfio_user_roles.roles_of(self.caps)
        playing = [role for role, lack in lacks.items() if lack is None]
        partners = [params.get(f'vfio_user_{role}') for role in lacks if role not in playing]
        if playing and not all(subject.ready(p) for p in partners):
            self.cancel(f"this QEMU plays the vfio-user {'+'.join(playing)}; its partner "
                        f"{' '.join(partners)} is not prepared (make functional "
                        f"TAGS=vfio-user prepares it)")
        status, table, text, column = self.run_matrix('topology',
                                                      'tests/functional/test_topology.py')
        scenario = 'test_topology:Topology.test_two_remotes_one_proxy'
        rows = {table['row_info'][r]['transport']: r for r in table['rows']
                if table['row_info'][r]['scenario'] == scenario}
        self.assertEqual(sorted(rows), ['proxy', 'vfio-user'])
        self.assertIn(table['cells'][rows['proxy']][column]['kind'], ('pass', 'known'))
        vfio_user = table['cells'][rows['vfio-user']][column]
        if playing:
            self.assertIn(vfio_user['kind'], ('pass', 'known'), vfio_user)
        else:
            self.assertEqual(vfio_user['kind'], 'skip')
            self.assertIn('no x-vfio-user-server, no vfio-user-pci', vfio_user['text'])
            self.assertIsNone(table['columns'][0]['vfio_user']['plays'])
            self.assertEqual(status, 0)
        self.assertIn(f'| {scenario} | proxy<br>`Topology` |', text)
        self.assertIn('|  | vfio-user<br>`TopologyOverVfioUser` |', text)
