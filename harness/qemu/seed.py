"""The original multi-process series as a QEMU source: ``seed:v8``.

"[PATCH v8 00/20] Initial support for multi-process qemu" (Jagannathan
Raman, Elena Ufimtseva, John G Johnson; qemu-devel, July 2020) is the
design this suite started from: ``--enable-mpqemu``, ``-machine remote``,
``-device pci-proxy-dev``, ``-object remote-object``, a proxy heartbeat.
It was posted against QEMU master of the time (about 5.1).  Its tree is
made here from:

1. Debian bullseye's QEMU 5.2 source, fetched as ``debian:SUITE`` is
   (harness/qemu/source.py: ``apt-get source``, Debian's patches applied);
2. the 20 patches as posted (``seeds/v8/series/``), in order, with
   ``patch -p1 -F3``, leaving out their make-system hunks (5.2 builds with
   meson) and exec.c (moved to softmmu/physmem.c in 5.2);
3. the project's port of what does not apply or compile on 5.2
   (``seeds/v8/port/``, each patch saying why it exists).

The patched tree is cached under the source cache, keyed by the Debian
version and every byte of the patches, and harness/qemu/build.py builds it
like any other tree (configure finds ``--enable-mpqemu`` in its help).
"""

import dataclasses
import glob
import os
import re
import shutil
import subprocess
from typing import Callable, Dict, List

from .buildcache import BuildError, cache_dir, digest, locked

SEEDS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'seeds')
PATCH_TIMEOUT_S = 120


@dataclasses.dataclass(frozen=True)
class Seed:
    name: str
    base_suite: str             # the Debian suite whose qemu source it starts from
    # Files of the series' patches that are left out (the port redoes them).
    left_out: str               # a regular expression on the path

    @property
    def directory(self) -> str:
        return os.path.join(SEEDS_DIR, self.name)

    def patches(self, part: str) -> List[str]:
        """``series`` or ``port``: the patch files, in order."""
        return sorted(glob.glob(os.path.join(self.directory, part, '*.patch')))

    def fingerprint(self, debian_version: str) -> str:
        """Names the patched tree: its base version and every patch byte."""
        contents = []
        for path in self.patches('series') + self.patches('port'):
            with open(path, 'rb') as f:
                contents.append(f'{os.path.basename(path)}:{digest(f.read().hex())}')
        return f'seed:{self.name}:{debian_version}:{digest(self.left_out, *contents)[:12]}'


SEEDS: Dict[str, Seed] = {
    'v8': Seed('v8', 'bullseye', r'(^|/)Makefile\.objs$|^exec\.c$'),
}


def by_name(name: str) -> Seed:
    if name not in SEEDS:
        raise BuildError(f"qemu_src=seed:{name}: no such seed; known: "
                         f"{', '.join('seed:' + s for s in SEEDS)}")
    return SEEDS[name]


def split_files(patch_text: str) -> List[tuple]:
    """(path, text) of each file's part of a ``git diff``-style patch; the
    text before the first file has path ''."""
    parts = re.split(r'(?m)^(?=diff --git )', patch_text)
    result = []
    for part in parts:
        match = re.match(r'diff --git a/(\S+) b/(\S+)', part)
        result.append((match.group(2) if match else '', part))
    return result


def _apply(tree: str, text: str, what: str) -> None:
    run = subprocess.run(['patch', '-p1', '-F3', '--no-backup-if-mismatch', '--forward',
                          '-s', '-d', tree], input=text, capture_output=True, text=True,
                         timeout=PATCH_TIMEOUT_S, check=False)
    if run.returncode != 0:
        raise BuildError(f"{what} does not apply to {tree}: "
                         f"{(run.stdout + run.stderr).strip()[-800:]}")


def patched_tree(seed: Seed, base_tree: str, debian_version: str,
                 log: Callable[[str], None]) -> str:
    """The base tree with the series and the port applied (made once)."""
    fingerprint = seed.fingerprint(debian_version)
    root = cache_dir('src', f'seed-{seed.name}-{digest(fingerprint)[:12]}')
    tree = os.path.join(root, os.path.basename(base_tree))
    done = os.path.join(root, '.patched')
    with locked(root + '.lock'):
        if not os.path.exists(done):
            shutil.rmtree(root, ignore_errors=True)
            os.makedirs(root)
            log(f"seed:{seed.name}: {base_tree} + {len(seed.patches('series'))} patches of "
                f"the series + {len(seed.patches('port'))} of the port into {tree}")
            shutil.copytree(base_tree, tree, symlinks=True)
            left_out = []
            for path in seed.patches('series'):
                with open(path, encoding='utf-8') as f:
                    parts = split_files(f.read())
                dropped = [name for name, _ in parts if name and re.search(seed.left_out, name)]
                left_out += [f'{os.path.basename(path)}: {name}' for name in dropped]
                _apply(tree, ''.join(text for name, text in parts if name not in dropped),
                       os.path.basename(path))
            for path in seed.patches('port'):
                with open(path, encoding='utf-8') as f:
                    _apply(tree, f.read(), f'port {os.path.basename(path)}')
            with open(done, 'w', encoding='utf-8') as f:
                f.write(fingerprint + '\n' + ''.join(f'left out {x}\n' for x in left_out))
    return tree


def new_file(seed: Seed, path: str) -> str:
    """The text of a file that one of the series' patches creates (such as
    v8's scripts/mpqemu-launcher.py), as posted."""
    for patch in seed.patches('series'):
        with open(patch, encoding='utf-8') as f:
            for name, text in split_files(f.read()):
                if name == path and '\n--- /dev/null\n' in text:
                    body = text.split('\n@@ ', 1)[1].split('\n', 1)[1]
                    return ''.join(line[1:] + '\n' for line in body.splitlines()
                                   if line.startswith('+'))
    raise BuildError(f"seed:{seed.name}: no patch of the series creates {path}")
