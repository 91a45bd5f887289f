"""What every step of a QEMU source build shares: the error it raises,
where the build cache keeps things, its locks, and how a step runs a short
command.

The cache is ``~/.cache/mpqemu-tests/qemu/`` (harness/base/paths.py
``machine_cache_dir``: shared by every checkout on the machine, so a fresh
clone finds its builds): ``src/`` holds fetched sources
(harness/qemu/source.py), ``tools/`` a newer meson when a tree needs one
(harness/qemu/configure.py), and each build has its key directory
(harness/qemu/build.py).
"""

import hashlib
import os
from typing import Dict, Optional, Sequence

from ..base import locking, paths
from ..base.errors import HarnessError
from ..base.hosttools import run_tool

LOCK_TIMEOUT_S = 3600       # another process building the same key


class BuildError(HarnessError):
    """A QEMU source cannot be fetched, configured or built."""


def cache_dir(*parts: str) -> str:
    """A path in the QEMU build cache."""
    return os.path.join(paths.machine_cache_dir('qemu'), *parts)


def locked(path: str, timeout_s: float = LOCK_TIMEOUT_S):
    """Two tests asking for the same build wait for one build."""
    return locking.exclusive(path, timeout_s, BuildError, 'another build of the same QEMU')


def digest(*parts: str) -> str:
    """A SHA-256 hex digest of ``parts``, each one delimited."""
    sha = hashlib.sha256()
    for part in parts:
        sha.update(part.encode())
        sha.update(b'\0')
    return sha.hexdigest()


def run_step(cmd: Sequence[str], *, cwd: Optional[str] = None, timeout_s: float = 60,
             env: Optional[Dict[str, str]] = None, what: str = '') -> str:
    """Run a short command, return stdout; a BuildError names what failed."""
    return run_tool(cmd, error=BuildError, timeout_s=timeout_s, cwd=cwd, env=env, what=what)
