"""Debian's QEMU from any suite, run on this host: ``qemu_deb=SUITE``.

Debian 12 ships QEMU 7.2; newer QEMUs (trixie's 10.0, trixie-backports'
11.1 with the vfio-user client) come as binaries built for newer libraries.
``prepare()`` makes a root with mmdebstrap (cached, once per machine) that
holds the package and everything it links, and a wrapper
``qemu-system-x86_64`` that runs that binary through the root's own dynamic
loader and libraries, with the root's firmware and modules.

Why not chroot into it: the harness hands QEMU paths (images, sockets,
logs, work directories) and fds.  Run through the root's loader, QEMU sees
the host's file system at the same paths and inherits its fds exactly as a
host binary does, with no bind mounts to set up or clean up, and without
needing root to run.  Only the loader, the libraries, the modules and the
data directory come from the root.
"""

import json
import os
import shlex
import shutil
import time
from typing import List, Optional

from ..base import locking, paths
from ..base.errors import HarnessError
from ..base.hosttools import run_tool

MIRROR = 'http://deb.debian.org/debian'
# suite -> (apt release to resolve against, [sources suites]); a backports
# suite takes its QEMU from backports and the rest from its release.
SUITES = {
    'trixie': ('trixie', ['trixie']),
    'trixie-backports': ('trixie', ['trixie', 'trixie-backports']),
}
# The module packages too: QEMU looks for a module in QEMU_MODULE_DIR, then
# in its built-in directory, which is the host's; a module the root lacks
# would be loaded from the host's QEMU and refused ("Only modules from the
# same build can be loaded"), e.g. by -device help.
PACKAGES = ('qemu-system-x86', 'qemu-system-common', 'qemu-system-data',
            'qemu-system-modules-opengl', 'qemu-system-modules-spice', 'seabios', 'ipxe-qemu')
BACKPORTED = ('qemu-system-x86', 'qemu-system-common', 'qemu-system-data',
              'qemu-system-modules-opengl', 'qemu-system-modules-spice', 'seabios')
MMDEBSTRAP_TIMEOUT_S = 1200
ROOT_FORMAT = 2
LOADER = 'usr/lib64/ld-linux-x86-64.so.2'
LIBRARY_DIRS = ('usr/lib/x86_64-linux-gnu', 'usr/lib')
MODULE_DIR = 'usr/lib/x86_64-linux-gnu/qemu'
# -L order: the root's own firmware files first (qemu's data dir holds
# absolute symlinks into /usr/share/seabios, which would be the host's).
DATA_DIRS = ('usr/share/seabios', 'usr/share/qemu', 'usr/lib/ipxe/qemu')
BINARY = 'qemu-system-x86_64'


class DebRootError(HarnessError):
    pass


def check_suite(suite: str) -> str:
    if suite not in SUITES:
        raise DebRootError(f"qemu_deb={suite}: not a suite this harness prepares; use one of "
                           f"{', '.join(SUITES)}")
    return suite


def suite_dir(suite: str) -> str:
    """Where ``suite``'s root (``rootfs/``), wrapper and manifest live; the
    wrapper sits outside the root, whose /bin is /usr/bin."""
    return os.path.join(paths.machine_cache_dir('debroots'), check_suite(suite))


def wrapper_path(suite: str) -> str:
    return os.path.join(suite_dir(suite), BINARY)


def prepared(suite: str) -> Optional[dict]:
    """The manifest of a complete root for ``suite``, or None."""
    try:
        with open(os.path.join(suite_dir(suite), 'manifest.json'), encoding='utf-8') as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    root = os.path.join(suite_dir(suite), 'rootfs')
    complete = (manifest.get('format') == ROOT_FORMAT and os.access(wrapper_path(suite), os.X_OK)
                and all(os.path.isfile(os.path.join(root, p))
                        for p in (LOADER, os.path.join('usr/bin', BINARY))))
    return manifest if complete else None


def mmdebstrap_command(suite: str, target: str) -> List[str]:
    release, sources = SUITES[suite]
    include = [f'{p}/{suite}' if suite.endswith('-backports') and p in BACKPORTED else p
               for p in PACKAGES]
    cmd = ['mmdebstrap', '--variant=apt', '--quiet', f'--include={",".join(include)}',
           f'--aptopt=APT::Default-Release "{release}"',
           '--dpkgopt=path-exclude=/usr/share/doc/*', '--dpkgopt=path-exclude=/usr/share/man/*',
           release, target]
    return cmd + [f'deb {MIRROR} {s} main' for s in sources]


def wrapper_text(root: str) -> str:
    libs = ':'.join(os.path.join(root, d) for d in LIBRARY_DIRS)
    data = ' '.join(f'-L {shlex.quote(os.path.join(root, d))}' for d in DATA_DIRS)
    return (f'#!/bin/sh\n'
            f'# Debian QEMU from {root} (harness/qemu/debroot.py): its loader, libraries,\n'
            f'# modules and firmware; the host\'s paths and fds.\n'
            f'QEMU_MODULE_DIR={shlex.quote(os.path.join(root, MODULE_DIR))} \\\n'
            f'exec {shlex.quote(os.path.join(root, LOADER))} --library-path {shlex.quote(libs)} '
            f'{shlex.quote(os.path.join(root, "usr/bin", BINARY))} {data} "$@"\n')


def package_versions(root: str) -> dict:
    status = os.path.join(root, 'var/lib/dpkg/status')
    versions, name = {}, None
    with open(status, encoding='utf-8') as f:
        for line in f:
            if line.startswith('Package: '):
                name = line.split(None, 1)[1].strip()
            elif line.startswith('Version: ') and name in PACKAGES:
                versions[name] = line.split(None, 1)[1].strip()
    return versions


def prepare(suite: str, log=print) -> str:
    """The wrapper for ``suite``'s QEMU, preparing its root first if needed
    (a partial root from a killed run is removed and made again)."""
    top = suite_dir(suite)
    root = os.path.join(top, 'rootfs')
    with locking.exclusive(top + '.lock', MMDEBSTRAP_TIMEOUT_S, DebRootError,
                           f'another preparation of the Debian root for {suite}'):
        manifest = prepared(suite)
        if manifest:
            return wrapper_path(suite)
        if shutil.which('mmdebstrap') is None:
            raise DebRootError("qemu_deb needs mmdebstrap: apt-get install mmdebstrap")
        shutil.rmtree(top, ignore_errors=True)         # a partial one, if any
        os.makedirs(top)
        partial = root + '.partial'
        started = time.monotonic()
        log(f"qemu_deb={suite}: mmdebstrap of {', '.join(PACKAGES)} into {root} "
            f"(minutes, once per machine)")
        run_tool(mmdebstrap_command(suite, partial), 'apt-get install mmdebstrap',
                 DebRootError, MMDEBSTRAP_TIMEOUT_S, what=f'mmdebstrap of {suite}')
        os.rename(partial, root)
        wrapper = wrapper_path(suite)
        with open(wrapper, 'w', encoding='utf-8') as f:
            f.write(wrapper_text(root))
        os.chmod(wrapper, 0o755)
        manifest = {'format': ROOT_FORMAT, 'suite': suite, 'packages': package_versions(root)}
        # Written last, and whole or not at all: it marks the root complete.
        tmp = os.path.join(top, f'manifest.json.{os.getpid()}')
        with open(tmp, 'w', encoding='utf-8') as f:
            json.dump(manifest, f, indent=2)
        os.replace(tmp, os.path.join(top, 'manifest.json'))
        log(f"qemu_deb={suite}: {manifest['packages'].get('qemu-system-x86')} at {wrapper} "
            f"after {time.monotonic() - started:.0f} s")
    return wrapper
