"""Where the harness keeps what it builds and caches.

Everything lives under the repository's git-ignored ``build/`` directory
unless ``MPQEMU_BUILD_DIR`` points elsewhere (e.g. a CI cache volume).
"""

import os

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_dir() -> str:
    return os.environ.get('MPQEMU_BUILD_DIR') or os.path.join(REPO_DIR, 'build')


def cache_dir(*parts: str) -> str:
    """Return (and create) a directory under ``build/cache``."""
    path = os.path.join(build_dir(), 'cache', *parts)
    os.makedirs(path, exist_ok=True)
    return path
