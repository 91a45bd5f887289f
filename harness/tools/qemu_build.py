"""Build QEMU from source with multi-process support, cached (what
``make qemu`` and ``make functional`` run).

    python -m harness.tools.qemu_build debian:bookworm      # 7.2 from Debian's source package
    python -m harness.tools.qemu_build debian:trixie        # 10.0 from trixie's
    python -m harness.tools.qemu_build ~/src/qemu           # a developer's tree
    python -m harness.tools.qemu_build https://gitlab.com/qemu-project/qemu.git#v9.2.0

The path of each binary goes to stdout, progress to stderr.  Before
building, the Debian packages a build needs are installed (as root) or
named in the exact apt-get line to run.  What a job's parameters name is
built before the job by harness/tools/prepare.py.
"""

import argparse
import json
import logging
import os
import subprocess
import sys
from typing import Optional, Sequence

from ..base import paths
from ..base.errors import HarnessError
from ..qemu import build as qemu_build
from ..qemu.buildcache import BuildError

# What a build needs on a Debian host (besides a C compiler, which
# build-essential brings).
BUILD_PACKAGES = ('build-essential', 'ninja-build', 'pkg-config', 'meson', 'libglib2.0-dev',
                  'libpixman-1-dev', 'libslirp-dev', 'libfdt-dev', 'zlib1g-dev', 'flex',
                  'bison', 'python3-venv', 'dpkg-dev', 'ccache', 'git',
                  # run time of the built binary: firmware found with -L
                  'seabios', 'qemu-system-data')


def ensure_host_packages(extra: Sequence[str] = ()) -> None:
    """Install the build dependencies (as root) or say which to install."""
    packages = list(BUILD_PACKAGES) + [p for p in extra if p not in BUILD_PACKAGES]
    script = os.path.join(paths.REPO_DIR, 'scripts', 'ensure-host-packages')
    status = subprocess.run(['sh', script, *packages], check=False).returncode
    if status != 0:
        raise BuildError("the Debian packages needed to build QEMU are missing (see above): "
                         f"apt-get install -y --no-install-recommends {' '.join(packages)}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m harness.tools.qemu_build',
        description='Build qemu-system-x86_64 with multi-process support (cached).')
    parser.add_argument('spec', nargs='*',
                        help='debian:bookworm, debian:trixie, a source dir or a git URL[#ref]')
    parser.add_argument('--configure-arg', action='append', default=[],
                        help='extra configure argument (part of the cache key)')
    parser.add_argument('--force', action='store_true', help='rebuild even if cached')
    parser.add_argument('--no-host-packages', action='store_true',
                        help='do not check/install the Debian build dependencies')
    parser.add_argument('--json', action='store_true', help='print the results as JSON')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    specs = list(args.spec)
    if not specs:
        parser.error('name a source to build')

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results = []
    try:
        if not args.no_host_packages:
            ensure_host_packages([p for spec in specs for p in qemu_build.feature_packages(spec)])
        for spec in specs:
            results.append(qemu_build.build(spec, args.configure_arg, log=say, force=args.force))
    except HarnessError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    for result in results:
        if args.json:
            print(json.dumps(dict(result.to_json(), cached=result.cached,
                                  request_s=result.request_s), indent=2))
        else:
            print(result.binary)
    return 0


if __name__ == '__main__':
    sys.exit(main())
