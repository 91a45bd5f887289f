"""Prepare what a job's tests need before its first test starts: the QEMUs
they test (source builds, Debian roots: harness/qemu/subject.py), the guest
images and the agent (harness/tools/images.py).  Each is cached, so a
prepared job spends well under a second here; an unprepared one shows the
progress of each build on the terminal, and no test's timeout pays for it.

harness/tools/avocado_plugin.py calls :func:`prepare` before every
Avocado job that runs this suite's tests, whoever started it: ``make
functional``, ``make soak``, ``make matrix`` or a plain ``avocado run``.
By hand, for the QEMUs and images a job with these parameters would use:

    python -m harness.tools.prepare [-p qemu_src=debian:trixie ...] [--vfio-user]
"""

import argparse
import sys
import time
from typing import Callable, List, Mapping, Optional, Sequence

from ..base import params
from ..base.errors import HarnessError
from ..qemu import build as qemu_build
from ..qemu import subject
from . import images as images_tool
from . import qemu_build as qemu_build_tool


class PrepareError(HarnessError):
    """Something a job's tests need could not be prepared."""


def subjects(given: Mapping[str, str], vfio_user: bool) -> List[str]:
    """The QEMUs (harness/qemu/subject.py) to prepare for a job whose test
    parameters are ``given`` (Avocado's -p, or a variant's): its qemu_src
    or qemu_deb ($QEMU_SRC, $QEMU_DEB), or a qemu_bin that names a subject
    still to build or unpack, and with ``vfio_user`` the vfio-user tests'
    client and server."""
    def lookup(name):
        return given.get(name)
    spec = subject.under_test(lookup)
    # A plain binary needs nothing; qemu_bin may itself name a subject.
    found = [] if spec == params.get('qemu_bin', lookup) and subject.ready(spec) else [spec]
    if vfio_user:
        found += [params.get('vfio_user_client', lookup), params.get('vfio_user_server', lookup)]
    return found


def prepare(given: Mapping[str, str], vfio_user: bool,
            say: Callable[[str], None] = print) -> None:
    """Build or find every QEMU of :func:`subjects`, then the guest images
    and the agent.  Raises PrepareError naming what failed."""
    specs = subjects(given, vfio_user)
    builds = [s[len(subject.SRC):] for s in specs if s.startswith(subject.SRC)]
    try:
        if not all(subject.ready(subject.SRC + b) for b in builds):
            qemu_build_tool.ensure_host_packages(
                [p for b in builds for p in qemu_build.feature_packages(b)])
        for spec in specs:
            started = time.monotonic()
            where = subject.binary(spec, log=say)
            say(f'{spec}: {where} ({time.monotonic() - started:.2f} s)')
        if images_tool.build(['all']) != 0:
            raise PrepareError('the agent did not build (see above)')
    except PrepareError:
        raise
    except HarnessError as err:
        raise PrepareError(str(err)) from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m harness.tools.prepare',
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('-p', dest='params', action='append', default=[], metavar='NAME=VALUE',
                        help="a test parameter, as Avocado's -p")
    parser.add_argument('--vfio-user', action='store_true',
                        help="also the vfio-user tests' client and server")
    args = parser.parse_args(argv)
    given = {}
    for item in args.params:
        name, sep, value = item.partition('=')
        if not sep:
            parser.error(f'-p {item}: give NAME=VALUE')
        given[name] = value
    try:
        prepare(given, args.vfio_user, say=lambda m: print(m, file=sys.stderr, flush=True))
    except PrepareError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
