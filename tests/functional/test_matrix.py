"""The matrix runner end to end, cheaply: one column (the QEMU under test),
the build tests only, which cancel without ``qemu_src``: a real nested
Avocado job whose results become a table in Markdown and JSON."""

import json
import os
import subprocess
import sys

from harness.base import deadlines, paths
from harness.testing import MultiprocessTest

MATRIX_TIMEOUT_S = 240


class MatrixRunner(MultiprocessTest):
    """
    :avocado: enable
    :avocado: tags=matrix
    """

    timeout = deadlines.test_timeout(waits_s=MATRIX_TIMEOUT_S)

    def test_one_column_table_from_a_real_job(self):
        """A nested job against qemu_bin yields a row per test, each cell
        a skip that carries its reason, and both output files."""
        out = os.path.join(self.workdir, 'matrix')
        label = f'qemu-{".".join(map(str, self.caps.version))}'
        cmd = [sys.executable, '-m', 'harness.tools.matrix', '--out', out, '--tags', 'build',
               '--suite', 'tests/functional/test_build.py',
               '--accel', 'tcg', '--qemu', f'{label}={self.caps.path}']
        run = subprocess.run(cmd, cwd=paths.REPO_DIR, capture_output=True, text=True,
                             timeout=MATRIX_TIMEOUT_S, check=False,
                             env=dict(os.environ, QEMU_SRC=''))
        self.log.info('%s\n%s', run.stdout, run.stderr)
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])
        with open(os.path.join(out, 'matrix.json'), encoding='utf-8') as f:
            table = json.load(f)
        self.assertEqual([c['label'] for c in table['columns']], [f'{label}-tcg'])
        self.assertIn('test_build:BuiltQemu.test_remote_and_proxy_start_and_device_is_visible',
                      table['rows'])
        for row in table['rows']:
            cell = table['cells'][row][f'{label}-tcg']
            self.assertEqual(cell['kind'], 'skip', row)
            self.assertIn('no qemu_src given', cell['detail'])
        with open(os.path.join(out, 'matrix.md'), encoding='utf-8') as f:
            self.assertIn('| test_build:BuiltQemu.test_built_binary_is_cached_and_complete |',
                          f.read())
