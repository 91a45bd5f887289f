"""Where the harness keeps what it builds and caches.

Everything lives under the repository's git-ignored ``build/`` directory
unless ``MPQEMU_BUILD_DIR`` points elsewhere (e.g. a CI cache volume).
"""

import os

# harness/base/paths.py -> the repository
REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_dir() -> str:
    return os.environ.get('MPQEMU_BUILD_DIR') or os.path.join(REPO_DIR, 'build')


def machine_cache_dir(*parts: str) -> str:
    """Return (and create) a directory for slow inputs that every checkout
    on this machine may share (QEMU source builds, their ccache):
    ``$MPQEMU_CACHE_DIR``, else ``~/.cache/mpqemu-tests`` (XDG), so that a
    fresh clone, as CI makes, finds them.  With ``MPQEMU_BUILD_DIR`` set
    (and no cache dir), everything stays under that build directory."""
    root = os.environ.get('MPQEMU_CACHE_DIR')
    if not root and os.environ.get('MPQEMU_BUILD_DIR'):
        root = build_dir()
    if not root:
        xdg = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
        root = os.path.join(xdg, 'mpqemu-tests')
    path = os.path.join(root, *parts)
    os.makedirs(path, exist_ok=True)
    return path


def cache_dir(*parts: str) -> str:
    """Return (and create) a directory under ``build/cache``."""
    path = os.path.join(build_dir(), 'cache', *parts)
    os.makedirs(path, exist_ok=True)
    return path
