"""The suite's Avocado plugin (entry point ``avocado.plugins.job.prepost``
in setup.cfg): before a job whose tests include this suite's, prepare what
they need (harness/tools/prepare.py), so that no build runs inside a test.

A preparation that fails ends the job before its first test, with the
reason ("Avocado job failed: JobError: ..."), and loses nothing cached.
"""

import os
import sys

from avocado.core.exceptions import JobError
from avocado.core.plugin_interfaces import JobPre

from ..base import params, paths
from ..base.errors import HarnessError
from .prepare import prepare

TESTS_DIR = os.path.join(paths.REPO_DIR, 'tests')
VFIO_USER_TAG = 'vfio-user'


def _ours(uri: str) -> bool:
    path = os.path.abspath(str(uri).split(':', 1)[0])
    return path.startswith(TESTS_DIR + os.sep)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class PrepareSuite(JobPre):
    name = 'mpqemu-prepare'
    description = ("Prepares the QEMUs, guest images and agent that a job's "
                   "multi-process QEMU tests need, before the first test")

    def pre(self, job):
        runnables = [r for suite in job.test_suites for r in (suite.tests or [])
                     if _ours(r.uri)]
        if not runnables:
            return
        given = dict(job.config.get('run.test_parameters') or [])
        # One preparation per set of parameters: -p's, and each variant's
        # (any varianter: --json-variants-load, CIT; one QEMU, accelerator... each).
        plans = {}
        for runnable in runnables:
            wanted = given | params.of_variant(getattr(runnable, 'variant', None))
            key = tuple(sorted(wanted.items()))
            # A variant may say its vfio-user tests cancel (vfio_user_skip):
            # their QEMUs are not needed.
            vfio_user = VFIO_USER_TAG in (runnable.tags or {}) and not wanted.get('vfio_user_skip')
            plans[key] = plans.get(key, False) or vfio_user
        try:
            for key, vfio_user in plans.items():
                prepare(dict(key), vfio_user, say=_say)
        except HarnessError as err:
            raise JobError(f'preparing the tests: {err}') from None
