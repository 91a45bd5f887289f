"""Assemble an initramfs from unpacked Debian packages: programs with the
libraries they need, busybox applet links, kernel modules in dependency
order, and an overlay of guest-side files from the recipe.

The tree is kept in memory and written as a gzip'd newc cpio with fixed
timestamps and sorted entries, so the same inputs give the same bytes.
"""

import gzip
import os
import posixpath
from typing import Dict, Iterable, List, Tuple

from ..base.errors import HarnessError

from ..base.hosttools import run_tool
from .cpio import CpioWriter
from .elf import ElfFile

# Where a Debian loader looks without an ld.so.cache (multiarch first).
LIBRARY_DIRS = ('lib/x86_64-linux-gnu', 'usr/lib/x86_64-linux-gnu', 'lib64',
                'lib', 'usr/lib')
SYMLINK_HOPS_MAX = 40
GZIP_LEVEL = 6


class InitramfsError(HarnessError):
    """The initramfs could not be assembled from the recipe's packages."""


def stage_realpath(root: str, path: str) -> str:
    """Resolve ``path`` (absolute inside the unpacked tree ``root``) the way
    the guest will, i.e. with absolute symlinks relative to ``root``, not to
    the host's /.  Returns a path relative to ``root``."""
    rel = path.lstrip('/')
    for _ in range(SYMLINK_HOPS_MAX):
        host = os.path.join(root, rel)
        if not os.path.islink(host):
            return rel
        target = os.readlink(host)
        rel = (target.lstrip('/') if target.startswith('/')
               else posixpath.normpath(posixpath.join(posixpath.dirname(rel), target)))
    raise InitramfsError(f"symlink loop at {path} under {root}")


class Tree:
    """Files of the initramfs to be, keyed by their guest path (no leading /)."""

    def __init__(self):
        self.entries: Dict[str, Tuple] = {}

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        path = path.strip('/')
        if not path:
            return
        parent = posixpath.dirname(path)
        if parent and parent not in self.entries:
            self.add_dir(parent)
        self.entries[path] = ('dir', mode)

    def _add(self, path: str, entry: Tuple) -> None:
        path = path.strip('/')
        parent = posixpath.dirname(path)
        if parent and parent not in self.entries:
            self.add_dir(parent)
        self.entries[path] = entry

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._add(path, ('file', data, mode))

    def add_host_file(self, path: str, host_path: str, mode: int = None) -> None:
        if mode is None:
            mode = 0o755 if os.stat(host_path).st_mode & 0o111 else 0o644
        with open(host_path, 'rb') as f:
            self.add_file(path, f.read(), mode)

    def add_symlink(self, path: str, target: str) -> None:
        self._add(path, ('symlink', target))

    def add_char_device(self, path: str, major: int, minor: int, mode: int) -> None:
        self._add(path, ('chr', major, minor, mode))

    def add_overlay(self, host_dir: str) -> None:
        """Copy a directory of guest-side sources; the executable bit decides
        between modes 0755 and 0644 (owner is always root)."""
        for dirpath, dirnames, filenames in os.walk(host_dir):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, host_dir)
            if rel_dir != '.':
                self.add_dir(rel_dir)
            for name in sorted(filenames):
                self.add_host_file(os.path.normpath(os.path.join(rel_dir, name)),
                                   os.path.join(dirpath, name))

    def write_cpio_gz(self, out_path: str) -> None:
        raw_path = out_path + '.cpio'
        with open(raw_path, 'wb') as raw:
            writer = CpioWriter(raw)
            for path in sorted(self.entries):
                kind, *rest = self.entries[path]
                if kind == 'dir':
                    writer.add_dir(path, *rest)
                elif kind == 'file':
                    writer.add_file(path, *rest)
                elif kind == 'symlink':
                    writer.add_symlink(path, *rest)
                else:
                    writer.add_char_device(path, *rest)
            writer.close()
        with open(raw_path, 'rb') as raw:
            data = raw.read()
        os.unlink(raw_path)
        # mtime=0 keeps the gzip header, hence the file's sha256, reproducible.
        with open(out_path, 'wb') as out:
            out.write(gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0))


def _find_library(root: str, soname: str) -> str:
    for libdir in LIBRARY_DIRS:
        candidate = posixpath.join(libdir, soname)
        if os.path.lexists(os.path.join(root, candidate)):
            return candidate
    raise InitramfsError(f"no {soname} in the unpacked packages under {root}: add the "
                         f"package that ships it to the recipe's [userland] packages")


def add_program(tree: Tree, root: str, program: str) -> List[str]:
    """Copy ``program`` (absolute path inside ``root``), its loader and the
    DT_NEEDED closure of its libraries; return the guest paths added."""
    added = []
    todo = [program.lstrip('/')]
    seen = set()
    while todo:
        guest_path = todo.pop(0)
        if guest_path in seen:
            continue
        seen.add(guest_path)
        real_rel = stage_realpath(root, guest_path)
        real = os.path.join(root, real_rel)
        if not os.path.isfile(real):
            raise InitramfsError(f"{guest_path} is not in the unpacked packages under "
                                 f"{root}: fix the recipe's binaries or packages")
        # Keep the packages' links (/lib64/ld-linux-x86-64.so.2,
        # libfoo.so.1 -> libfoo.so.1.2.3) as links, flattened to one hop.
        if real_rel != guest_path:
            tree.add_symlink(guest_path, '/' + real_rel)
            added.append('/' + guest_path)
            todo.append(real_rel)
            continue
        tree.add_host_file(guest_path, real, 0o755)
        added.append('/' + guest_path)
        elf = ElfFile(real)
        if elf.interpreter:
            todo.append(elf.interpreter.lstrip('/'))
        todo.extend(_find_library(root, soname) for soname in elf.needed)
    return added


def add_busybox_applets(tree: Tree, busybox_host_path: str) -> int:
    """Link every applet the static busybox knows to /bin/busybox."""
    out = _tool([busybox_host_path, '--list-full'], 'busybox-static')
    applets = [line.strip() for line in out.splitlines() if line.strip()]
    for applet in applets:
        if applet.strip('/') not in tree.entries:
            tree.add_symlink(applet, '/bin/busybox')
    return len(applets)


def _tool(argv: List[str], package: str) -> str:
    return run_tool(argv, f'apt-get install {package}', InitramfsError)


def resolve_modules(kernel_root: str, kernel_version: str,
                    names: Iterable[str]) -> List[str]:
    """Paths (relative to ``kernel_root``) of the .ko files that load
    ``names``, dependencies first, each once, as kmod resolves them."""
    _tool(['depmod', '-b', kernel_root, kernel_version], 'kmod')
    ordered: List[str] = []
    prefix = os.path.abspath(kernel_root) + '/'
    for name in names:
        out = _tool(['modprobe', '-d', kernel_root, '-S', kernel_version,
                     '--show-depends', name], 'kmod')
        for line in out.splitlines():
            words = line.split()
            # "builtin NAME" lines need nothing loaded.
            if words[:1] == ['insmod']:
                rel = os.path.abspath(words[1])[len(prefix):]
                if rel not in ordered:
                    ordered.append(rel)
    return ordered


def kernel_version_of(kernel_root: str) -> str:
    versions = sorted(os.listdir(os.path.join(kernel_root, 'lib', 'modules')))
    if len(versions) != 1:
        raise InitramfsError(f"expected one kernel under {kernel_root}/lib/modules, "
                             f"found {versions}")
    return versions[0]


def add_module_groups(tree: Tree, kernel_root: str, kernel_version: str,
                      groups: Dict[str, List[str]]) -> Dict[str, List[str]]:
    """Copy each group's modules and write /etc/mpqemu/modules.<group>."""
    lists = {}
    for group, names in groups.items():
        rel_paths = resolve_modules(kernel_root, kernel_version, names)
        for rel in rel_paths:
            tree.add_host_file(rel, os.path.join(kernel_root, rel), 0o644)
        lists[group] = ['/' + rel for rel in rel_paths]
        tree.add_file(f'etc/mpqemu/modules.{group}',
                      ''.join(p + '\n' for p in lists[group]).encode())
    return lists


def add_base_layout(tree: Tree) -> None:
    """Mount points and the console node the kernel needs before devtmpfs."""
    for path in ('dev', 'proc', 'sys', 'tmp', 'run', 'mnt', 'var/log', 'etc'):
        tree.add_dir(path)
    tree.add_dir('tmp', 0o1777)
    tree.add_dir('root', 0o700)
    tree.add_char_device('dev/console', 5, 1, 0o600)
    # Daemons write pid files there (haveged exits when it cannot).
    tree.add_symlink('var/run', '/run')
    tree.add_symlink('init', '/bin/busybox')
