"""Build a QEMU with multi-process support, once per source and options.

    python -m harness.qemu.build debian:bookworm      # 7.2 from Debian's source package
    python -m harness.qemu.build debian:trixie        # 10.0 from trixie's
    python -m harness.qemu.build ~/src/qemu           # a developer's tree
    python -m harness.qemu.build https://gitlab.com/qemu-project/qemu.git#v9.2.0

A source spec (``qemu_src`` parameter / ``$QEMU_SRC``) is one of:
  - ``debian:SUITE`` or ``debian:SUITE=VERSION``: ``apt-get source qemu``
    from that suite (``dpkg-source -x`` applies Debian's patches, which a
    plain tarball lacks); the deb-src entries are added when missing;
  - a local directory holding QEMU's ``configure``;
  - a git URL, optionally ``#ref`` (needs network).

Only ``qemu-system-x86_64`` is built (``ninja qemu-system-x86_64``), for
``x86_64-softmmu``, with every optional feature off except what the suite
uses: the multi-process option (``--enable-multiprocess`` upstream,
``--enable-mpqemu`` in trees with the v8 series: read from
``configure --help``), slirp, KVM and TCG; qtest is always built in.
Results live in ``~/.cache/mpqemu-tests/qemu/<key>/`` (harness/base/paths.py
``machine_cache_dir``: shared by every checkout on the machine, so a fresh
clone finds them) where the key hashes the source's
fingerprint (Debian version, git commit + local changes, or a tree walk)
and the options, so a second request for the same thing returns in well
under a second.  Compilation goes through ccache (``…/mpqemu-tests/ccache``),
so even a new key rebuilds quickly.  ``build.log`` keeps the whole output;
progress (ninja's ``[N/M]``) is reported every few seconds.

A built binary finds no firmware of its own (Debian's source drops the
blobs): :func:`harness.qemu.binary.probe` adds ``-L`` for Debian's
``seabios`` and ``qemu-system-data``, and the build checks that it did.
"""

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..base import locking, paths
from ..base.errors import HarnessError
from ..base.hosttools import run_tool
from . import binary as qemu_binary
from ..base import lifeline

LOG = logging.getLogger(__name__)

# Bumped whenever the build recipe changes in a way that changes binaries.
BUILD_FORMAT = 1
TARGET_LIST = 'x86_64-softmmu'
NINJA_TARGET = 'qemu-system-x86_64'
DEBIAN_SUITES = ('bookworm', 'trixie')
DEBIAN_SOURCE_PACKAGE = 'qemu'
# Debian's own meson (bookworm); trees that need newer get it from PyPI.
MESON_PYPI_PACKAGE = 'meson'
PROGRESS_INTERVAL_S = 5.0
CONFIGURE_TIMEOUT_S = 300
COMPILE_TIMEOUT_S = 1800
APT_TIMEOUT_S = 600
CCACHE_MAX_SIZE = '5G'
# Debian's Python: the one that sees Debian's meson (not a venv's, nor pyenv's).
SYSTEM_PYTHON = '/usr/bin/python3'
LOCK_TIMEOUT_S = 3600       # another process building the same key

# What a build needs on a Debian host (besides a C compiler, which
# build-essential brings).
BUILD_PACKAGES = ('build-essential', 'ninja-build', 'pkg-config', 'meson', 'libglib2.0-dev',
                  'libpixman-1-dev', 'libslirp-dev', 'libfdt-dev', 'zlib1g-dev', 'flex',
                  'bison', 'python3-venv', 'dpkg-dev', 'ccache', 'git',
                  # run time of the built binary: firmware found with -L
                  'seabios', 'qemu-system-data')

# Features the suite needs; everything else optional is switched off.
REQUIRED_FEATURES = ('kvm', 'tcg', 'slirp')
# For old trees without --without-default-features: what to switch off
# by name (each only if that configure knows it).
UNNEEDED_FEATURES = ('docs', 'gtk', 'sdl', 'vnc', 'opengl', 'spice', 'curses', 'gnutls',
                     'nettle', 'gcrypt', 'libusb', 'usb-redir', 'xkbcommon', 'vte',
                     'virglrenderer', 'tools', 'guest-agent', 'capstone', 'bpf', 'libudev',
                     'rbd', 'glusterfs', 'libiscsi', 'libnfs', 'smartcard', 'brlapi',
                     'cocoa', 'alsa', 'pa', 'jack', 'oss', 'sndio', 'pipewire', 'vde',
                     'netmap', 'libssh', 'curl', 'selinux', 'seccomp', 'cap-ng', 'attr',
                     'libpmem', 'libdaxctl', 'xen', 'virtfs', 'vhost-user-blk-server',
                     'fuse', 'zstd', 'lzo', 'snappy', 'bzip2', 'lzfse', 'png', 'jpeg',
                     'vnc-jpeg', 'vnc-sasl', 'auth-pam', 'u2f', 'canokey', 'dbus-display',
                     'qed', 'parallels', 'vdi', 'vvfat', 'dmg', 'cloop', 'bochs', 'qcow1',
                     'vhdx', 'vmdk', 'vpc', 'install-blobs')
# install-blobs: Debian's +dfsg/+ds sources drop the firmware blobs that 10.0's
# pc-bios/meson.build otherwise insists on (firmware comes from -L instead).
ALWAYS_ARGS = ('--disable-werror', '--disable-docs', '--disable-install-blobs')


class BuildError(HarnessError):
    """A QEMU source cannot be fetched, configured or built."""


# ---------------------------------------------------------------- source specs

@dataclasses.dataclass(frozen=True)
class SourceSpec:
    kind: str                   # 'debian', 'local' or 'git'
    location: str               # suite, absolute path, or URL
    ref: Optional[str] = None   # Debian version or git ref, when pinned

    def __str__(self) -> str:
        if self.kind == 'debian':
            return f'debian:{self.location}' + (f'={self.ref}' if self.ref else '')
        if self.kind == 'git':
            return self.location + (f'#{self.ref}' if self.ref else '')
        return self.location


GIT_URL_RE = re.compile(r'^(https?://|git://|ssh://|git@|file://)|\.git(#.*)?$')


def parse_spec(text: str, cwd: Optional[str] = None) -> SourceSpec:
    """What ``qemu_src`` names, or a BuildError saying what it accepts."""
    text = text.strip()
    if not text:
        raise BuildError("qemu_src is empty: give debian:bookworm, debian:trixie, a QEMU source "
                         "directory or a git URL")
    if text.startswith('debian:'):
        suite, _, version = text[len('debian:'):].partition('=')
        if suite not in DEBIAN_SUITES:
            raise BuildError(f"qemu_src={text}: Debian suite {suite!r} is not one this suite "
                             f"builds from; use one of "
                             f"{', '.join('debian:' + s for s in DEBIAN_SUITES)}")
        return SourceSpec('debian', suite, version or None)
    if GIT_URL_RE.search(text) and not os.path.isdir(text):
        url, _, ref = text.partition('#')
        return SourceSpec('git', url, ref or None)
    path = os.path.abspath(os.path.join(cwd or os.getcwd(), os.path.expanduser(text)))
    if not os.path.isdir(path):
        raise BuildError(f"qemu_src={text}: {path} is not a directory, a git URL or "
                         f"debian:SUITE ({', '.join(DEBIAN_SUITES)})")
    if not os.path.isfile(os.path.join(path, 'configure')):
        raise BuildError(f"qemu_src={text}: {path} has no configure script: not a QEMU "
                         f"source tree")
    return SourceSpec('local', path)


# ---------------------------------------------------------------- helpers

def _run(cmd: Sequence[str], *, cwd: Optional[str] = None, timeout_s: float = 60,
         env: Optional[Dict[str, str]] = None, what: str = '') -> str:
    """Run a short command, return stdout; a BuildError names what failed."""
    return run_tool(cmd, error=BuildError, timeout_s=timeout_s, cwd=cwd, env=env, what=what)


def _sha(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b'\0')
    return digest.hexdigest()


def _locked(path: str, timeout_s: float = LOCK_TIMEOUT_S):
    """Two tests asking for the same build wait for one build."""
    return locking.exclusive(path, timeout_s, BuildError, 'another build of the same QEMU')


def qemu_build_dir(*parts: str) -> str:
    return os.path.join(paths.machine_cache_dir('qemu'), *parts)


# ---------------------------------------------------------------- Debian sources

DEB_SRC_FILE = '/etc/apt/sources.list.d/mpqemu-deb-src.sources'
DEB_SRC_TEXT = """\
# Added by the mpqemu test suite (harness/qemu/build.py): Debian source
# packages for building QEMU.  Source entries only: nothing installs from them.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
# Belt and braces: should anyone add a trixie *binary* entry, nothing
# from it is installed or upgraded unless asked for by name.
APT_PIN_FILE = '/etc/apt/preferences.d/mpqemu-trixie'
APT_PIN_TEXT = """\
# Added by the mpqemu test suite: trixie is there for source packages only.
Package: *
Pin: release n=trixie
Pin-Priority: 1
"""


def _dpkg_newer(a: str, b: str) -> bool:
    return subprocess.run(['dpkg', '--compare-versions', a, 'gt', b],
                          check=False).returncode == 0


def parse_madison(text: str, suite: str) -> List[str]:
    """Source versions of ``apt-cache madison`` output that belong to
    ``suite`` (its -updates and -security too, not -backports), newest
    first as madison lists them."""
    versions = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split('|')]
        if len(fields) != 3 or not fields[2].endswith('Sources'):
            continue
        dist = fields[2].split()[-2].split('/')[0]
        if dist in (suite, f'{suite}-updates', f'{suite}-security') \
                and fields[1] not in versions:
            versions.append(fields[1])
    return versions


def _deb_src_instructions() -> str:
    return (f"add Debian source entries as root: write {DEB_SRC_FILE} with\n"
            f"{DEB_SRC_TEXT}\nthen run: apt-get update")


def ensure_deb_src() -> None:
    """Make ``apt-get source`` find bookworm's and trixie's qemu."""
    madison = _run(['apt-cache', 'madison', DEBIAN_SOURCE_PACKAGE], what='apt-cache madison')
    if all(parse_madison(madison, suite) for suite in DEBIAN_SUITES):
        return
    if os.geteuid() != 0:
        raise BuildError("apt knows no source package qemu for "
                         f"{' and '.join(DEBIAN_SUITES)}: {_deb_src_instructions()}")
    LOG.info("adding deb-src entries (%s) and running apt-get update", DEB_SRC_FILE)
    with open(DEB_SRC_FILE, 'w', encoding='utf-8') as f:
        f.write(DEB_SRC_TEXT)
    with open(APT_PIN_FILE, 'w', encoding='utf-8') as f:
        f.write(APT_PIN_TEXT)
    _run(['apt-get', 'update', '-q'], timeout_s=APT_TIMEOUT_S, what='apt-get update')


def debian_version(spec: SourceSpec) -> str:
    """The source version ``spec`` resolves to (the newest of its suite)."""
    ensure_deb_src()
    madison = _run(['apt-cache', 'madison', DEBIAN_SOURCE_PACKAGE], what='apt-cache madison')
    versions = parse_madison(madison, spec.location)
    if spec.ref:
        if spec.ref not in versions:
            raise BuildError(f"{spec}: apt offers qemu {', '.join(versions) or 'nothing'} "
                             f"for {spec.location}, not {spec.ref}")
        return spec.ref
    if not versions:
        raise BuildError(f"{spec}: apt offers no qemu source for {spec.location}: "
                         f"{_deb_src_instructions()}")
    newest = versions[0]
    for version in versions[1:]:
        if _dpkg_newer(version, newest):
            newest = version
    return newest


def fetch_debian(spec: SourceSpec, version: str, log: Callable[[str], None]) -> str:
    """Unpacked, patched source of qemu ``version``; downloaded once."""
    safe = re.sub(r'[^A-Za-z0-9.+-]', '_', version)
    root = qemu_build_dir('src', f'debian-{spec.location}-{safe}')
    done = os.path.join(root, '.unpacked')
    with _locked(root + '.lock'):
        if not os.path.exists(done):
            shutil.rmtree(root, ignore_errors=True)
            os.makedirs(root)
            log(f"apt-get source qemu={version} into {root}")
            _run(['apt-get', 'source', '-q', '--only-source',
                  f'{DEBIAN_SOURCE_PACKAGE}={version}'], cwd=root, timeout_s=APT_TIMEOUT_S,
                 what=f'apt-get source qemu={version}')
            with open(done, 'w', encoding='utf-8') as f:
                f.write(version + '\n')
    trees = [d for d in sorted(os.listdir(root))
             if os.path.isfile(os.path.join(root, d, 'configure'))]
    if len(trees) != 1:
        raise BuildError(f"{root}: expected one unpacked QEMU tree, found {trees}; "
                         f"delete {root} and try again")
    return os.path.join(root, trees[0])


# ---------------------------------------------------------------- fingerprints

SKIP_DIRS = ('.git', 'build', '.cache', '__pycache__')


def tree_fingerprint(path: str) -> str:
    """What identifies the content of a local tree, cheaply: the git commit
    plus a hash of uncommitted changes, or else every file's path, size
    and mtime (build directories excluded)."""
    if os.path.isdir(os.path.join(path, '.git')) or os.path.isfile(os.path.join(path, '.git')):
        try:
            head = _run(['git', '-C', path, 'rev-parse', 'HEAD'], what='git rev-parse').strip()
            diff = _run(['git', '-C', path, 'diff', 'HEAD', '--binary'], timeout_s=120,
                        what='git diff')
            untracked = _run(['git', '-C', path, 'ls-files', '--others', '--exclude-standard'],
                             what='git ls-files')
            extra = []
            for name in untracked.splitlines():
                try:
                    st = os.stat(os.path.join(path, name))
                except OSError:
                    continue
                extra.append(f'{name}:{st.st_size}:{st.st_mtime_ns}')
            return f'git:{head}:' + _sha(diff, *extra)[:16]
        except BuildError as err:
            LOG.warning("%s looks like git but git failed (%s): hashing files instead",
                        path, err)
    entries = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in SKIP_DIRS and not d.startswith('build-'))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            entries.append(f'{os.path.relpath(full, path)}:{st.st_size}:{st.st_mtime_ns}')
    return 'files:' + _sha(*entries)[:16]


def git_checkout(spec: SourceSpec, log: Callable[[str], None]) -> Tuple[str, str]:
    """Clone (or update) a git source; returns (tree, commit)."""
    root = qemu_build_dir('src', 'git-' + _sha(spec.location)[:12])
    with _locked(root + '.lock'):
        if not os.path.isdir(os.path.join(root, '.git')):
            shutil.rmtree(root, ignore_errors=True)
            log(f"git clone {spec.location} into {root}")
            cmd = ['git', 'clone', '--depth', '1']
            if spec.ref:
                cmd += ['--branch', spec.ref]
            _run(cmd + [spec.location, root], timeout_s=APT_TIMEOUT_S,
                 what=f'git clone {spec.location} (needs network)')
        else:
            _run(['git', '-C', root, 'fetch', '--depth', '1', 'origin', spec.ref or 'HEAD'],
                 timeout_s=APT_TIMEOUT_S, what=f'git fetch {spec.location}')
            _run(['git', '-C', root, 'checkout', '-q', '--detach', 'FETCH_HEAD'],
                 what='git checkout')
        commit = _run(['git', '-C', root, 'rev-parse', 'HEAD'], what='git rev-parse').strip()
    return root, commit


# ---------------------------------------------------------------- configure

def configure_features(help_text: str) -> Tuple[set, set]:
    """(feature names, literal options) that ``configure --help`` offers.
    Meson-era configure lists features as two-space-indented names under
    "Optional features"; older ones spell out ``--enable-X``."""
    options = set(re.findall(r'(--[a-z][a-z0-9-]*)', help_text))
    features = set()
    _, header, section = help_text.partition('Optional features')
    if header:
        features.update(re.findall(r'^  ([a-z0-9][a-z0-9_-]*)  ', section, re.MULTILINE))
    for option in options:
        for prefix in ('--enable-', '--disable-'):
            if option.startswith(prefix):
                features.add(option[len(prefix):])
    return features, options


def multiprocess_option(help_text: str, tree: str = '') -> str:
    """``--enable-multiprocess`` (upstream) or ``--enable-mpqemu`` (v8
    series), whichever this configure offers."""
    features, _ = configure_features(help_text)
    if 'multiprocess' in features:
        return '--enable-multiprocess'
    if 'mpqemu' in features:
        return '--enable-mpqemu'
    raise BuildError(f"the QEMU tree {tree or '(unknown)'} has no multi-process support: its "
                     f"configure --help offers neither --enable-multiprocess (upstream, QEMU "
                     f">= 6.0) nor --enable-mpqemu (the v8 patch series); use a newer tree "
                     f"or one with the series applied")


def configure_args(help_text: str, tree: str = '',
                   extra: Sequence[str] = ()) -> List[str]:
    """Arguments for a minimal x86_64-softmmu build with multi-process."""
    features, options = configure_features(help_text)
    args = [f'--target-list={TARGET_LIST}', multiprocess_option(help_text, tree)]
    if '--without-default-features' in options:
        args.append('--without-default-features')
    else:
        args += [f'--disable-{name}' for name in UNNEEDED_FEATURES if name in features]
    args += [f'--enable-{name}' for name in REQUIRED_FEATURES if name in features]
    args += [a for a in ALWAYS_ARGS
             if a in options or a[len('--disable-'):] in features]
    return args + list(extra)


def required_meson(tree: str) -> Optional[Tuple[int, ...]]:
    """The minimum meson version the tree's meson.build asks for."""
    try:
        with open(os.path.join(tree, 'meson.build'), encoding='utf-8') as f:
            head = f.read(4096)
    except OSError:
        return None
    match = re.search(r"meson_version\s*:\s*'>=\s*([0-9.]+)'", head)
    return tuple(int(x) for x in match.group(1).split('.')) if match else None


def _version_tuple(text: str) -> Tuple[int, ...]:
    match = re.search(r'(\d+(?:\.\d+)+)', text)
    return tuple(int(x) for x in match.group(1).split('.')) if match else ()


def build_python(tree: str, log: Callable[[str], None]) -> str:
    """The Python that configure should use: the system one when Debian's
    meson is new enough for the tree, else a venv with meson from PyPI
    (QEMU's configure puts its own venv on top, which sees this one's
    packages)."""
    needed = required_meson(tree)
    system_meson = shutil.which('meson')
    have = _version_tuple(_run([system_meson, '--version'])) if system_meson else ()
    if needed is None or (have and have >= needed):
        return SYSTEM_PYTHON
    series = '.'.join(map(str, needed[:2]))
    venv = qemu_build_dir('tools', f'meson-{series}')
    python = os.path.join(venv, 'bin', 'python3')
    with _locked(venv + '.lock'):
        if not os.path.exists(os.path.join(venv, '.installed')):
            log(f"meson >= {series} needed (Debian has {'.'.join(map(str, have)) or 'none'}): "
                f"installing {MESON_PYPI_PACKAGE}~={series}.0 from PyPI into {venv}")
            shutil.rmtree(venv, ignore_errors=True)
            _run([SYSTEM_PYTHON, '-m', 'venv', venv], what='python3 -m venv')
            _run([python, '-m', 'pip', 'install', '-q', '--disable-pip-version-check',
                  f'{MESON_PYPI_PACKAGE}~={series}.0'], timeout_s=APT_TIMEOUT_S,
                 what=f'pip install meson~={series}.0 (needs PyPI)')
            open(os.path.join(venv, '.installed'), 'w', encoding='utf-8').close()
    return python


def python_args(tree: str, python: str) -> List[str]:
    """How to hand configure its Python and meson.  Since 8.1 configure
    makes a venv (python/scripts/mkvenv.py) from ``--python`` and finds
    meson in it; before, ``--python`` demands the embedded meson
    submodule, so a system or PyPI meson goes through ``--meson``."""
    with open(os.path.join(tree, 'configure'), encoding='utf-8', errors='replace') as f:
        uses_mkvenv = 'mkvenv' in f.read()
    if uses_mkvenv:
        return [f'--python={python}']
    if python == SYSTEM_PYTHON:
        return []
    return [f'--meson={os.path.join(os.path.dirname(python), "meson")}']


# ---------------------------------------------------------------- the build

@dataclasses.dataclass
class BuildResult:
    spec: str
    key: str
    binary: str
    version: str                # QEMU's -version banner
    fingerprint: str
    configure_args: List[str]
    build_log: str
    build_s: float              # of the build that made it
    firmware_dirs: List[str]
    has_qtest: bool
    multiprocess_option: str
    cached: bool = False        # this request was served from the cache
    request_s: float = 0.0

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        del data['cached'], data['request_s']
        return data


def cache_key(fingerprint: str, extra_args: Sequence[str] = ()) -> str:
    """Build directory name for a source fingerprint and options."""
    return _sha(str(BUILD_FORMAT), fingerprint, TARGET_LIST, NINJA_TARGET,
                *extra_args)[:16]


def resolve(spec: SourceSpec, log: Callable[[str], None]) -> Tuple[str, Optional[str]]:
    """(fingerprint, tree or None if not fetched yet) of a spec."""
    if spec.kind == 'debian':
        return f'debian:{debian_version(spec)}', None
    if spec.kind == 'local':
        return tree_fingerprint(spec.location), spec.location
    tree, commit = git_checkout(spec, log)
    return f'git:{commit}', tree


def _load_result(key_dir: str) -> Optional[BuildResult]:
    path = os.path.join(key_dir, 'result.json')
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
        result = BuildResult(**data)
    except (OSError, ValueError, TypeError):
        return None
    return result if os.access(result.binary, os.X_OK) else None


def cached_result(spec_text: str, extra_args: Sequence[str] = ()) -> Optional[BuildResult]:
    """The cached build for a spec, or None; never builds or downloads
    (a git spec is never considered cached: resolving it fetches)."""
    try:
        spec = parse_spec(spec_text)
        if spec.kind == 'git':
            return None
        fingerprint, _ = resolve(spec, LOG.info)
    except HarnessError:
        return None
    return _load_result(qemu_build_dir(cache_key(fingerprint, extra_args)))


class _Progress:
    """Turns ninja's ``[N/M] …`` lines into a line every few seconds."""

    def __init__(self, log: Callable[[str], None], interval_s: float = PROGRESS_INTERVAL_S):
        self.log = log
        self.interval_s = interval_s
        self.started = time.monotonic()
        self.last = 0.0

    def feed(self, line: str) -> None:
        match = re.match(r'^\[(\d+)/(\d+)\]', line)
        if not match:
            return
        done, total = int(match.group(1)), int(match.group(2))
        now = time.monotonic()
        if now - self.last >= self.interval_s or done == total:
            self.last = now
            self.log(f"  [{done}/{total}] {100 * done // max(total, 1)}% "
                     f"after {now - self.started:.0f} s")


def _stream(cmd: Sequence[str], *, cwd: str, env: Dict[str, str], log_file, timeout_s: float,
            progress: Optional[_Progress], what: str) -> None:
    """Run a long command, its output appended to the build log."""
    log_file.write(f'\n$ {shlex.join(cmd)}\n')
    log_file.flush()
    deadline = time.monotonic() + timeout_s
    with subprocess.Popen(list(cmd), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors='replace', preexec_fn=lifeline.preexec()) as proc:
        # A step that hangs without printing would keep the loop below
        # waiting for a line for ever: the timer kills it at the deadline.
        killer = threading.Timer(timeout_s, proc.kill)
        killer.daemon = True
        killer.start()
        try:
            for line in proc.stdout:
                log_file.write(line)
                if progress:
                    progress.feed(line)
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            if time.monotonic() > deadline:
                raise BuildError(f"{what} took longer than {timeout_s:.0f} s; see "
                                 f"{log_file.name}")
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            killer.cancel()
            log_file.flush()
    if proc.returncode != 0:
        raise BuildError(f"{what} failed (exit {proc.returncode}); the end of "
                         f"{log_file.name}:\n{_tail(log_file.name)}")


def _tail(path: str, lines: int = 25) -> str:
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            return ''.join(f.readlines()[-lines:])
    except OSError:
        return ''


def _build_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.pop('VIRTUAL_ENV', None)
    # Our venv's bin must not shadow the Python/meson configure picks.
    env['PATH'] = os.pathsep.join(p for p in env.get('PATH', '').split(os.pathsep)
                                  if not os.path.exists(os.path.join(p, 'activate')))
    if shutil.which('ccache', path=env['PATH']):
        env['CC'] = 'ccache cc'
        env['CCACHE_DIR'] = env.get('CCACHE_DIR') or paths.machine_cache_dir('ccache')
        env['CCACHE_MAXSIZE'] = env.get('CCACHE_MAXSIZE') or CCACHE_MAX_SIZE
        # Builds of the same source in different key directories share objects.
        env['CCACHE_BASEDIR'] = paths.machine_cache_dir()
        env['CCACHE_NOHASHDIR'] = '1'
    return env


def build(spec_text: str, extra_args: Sequence[str] = (),
          log: Callable[[str], None] = print, force: bool = False) -> BuildResult:
    """Build (or find in the cache) QEMU from ``spec_text``."""
    started = time.monotonic()
    spec = parse_spec(spec_text)
    fingerprint, tree = resolve(spec, log)
    key = cache_key(fingerprint, extra_args)
    key_dir = qemu_build_dir(key)
    with _locked(key_dir + '.lock'):
        result = None if force else _load_result(key_dir)
        if result:
            result.cached = True
            result.request_s = round(time.monotonic() - started, 3)
            log(f"{spec}: cached build {result.binary} ({result.version}) "
                f"in {result.request_s:.2f} s")
            return result
        if tree is None:
            tree = fetch_debian(spec, fingerprint.split(':', 1)[1], log)
        result = _build_tree(spec, tree, fingerprint, key, key_dir, extra_args, log)
    result.request_s = round(time.monotonic() - started, 3)
    return result


def _build_tree(spec: SourceSpec, tree: str, fingerprint: str, key: str, key_dir: str,
                extra_args: Sequence[str], log: Callable[[str], None]) -> BuildResult:
    built_at = time.monotonic()
    help_text = _run([os.path.join(tree, 'configure'), '--help'], cwd=tree,
                     what=f'{tree}/configure --help')
    args = configure_args(help_text, tree, extra_args)
    python = build_python(tree, log)
    build_dir = os.path.join(key_dir, 'build')
    log_path = os.path.join(key_dir, 'build.log')
    os.makedirs(key_dir, exist_ok=True)
    env = _build_env()
    with open(os.path.join(key_dir, 'request.json'), 'w', encoding='utf-8') as f:
        json.dump({'spec': str(spec), 'tree': tree, 'fingerprint': fingerprint,
                   'configure_args': args, 'python': python, 'cc': env.get('CC', 'cc')},
                  f, indent=2)
    log(f"{spec}: building {NINJA_TARGET} from {tree} in {build_dir} (log: {log_path})")
    with open(log_path, 'a', encoding='utf-8') as log_file:
        configured = os.path.exists(os.path.join(build_dir, 'build.ninja'))
        if not configured:
            shutil.rmtree(build_dir, ignore_errors=True)
            os.makedirs(build_dir)
            log(f"  configure {' '.join(args)}")
            _stream([os.path.join(tree, 'configure'), *python_args(tree, python), *args],
                    cwd=build_dir, env=env, log_file=log_file, timeout_s=CONFIGURE_TIMEOUT_S,
                    progress=None, what=f'configure of {tree}')
        log(f"  configure done after {time.monotonic() - built_at:.0f} s; "
            f"ninja {NINJA_TARGET} ({os.cpu_count()} CPUs)")
        _stream(['ninja', '-C', build_dir, NINJA_TARGET], cwd=build_dir, env=env,
                log_file=log_file, timeout_s=COMPILE_TIMEOUT_S, progress=_Progress(log),
                what=f'ninja {NINJA_TARGET}')
    path = os.path.join(build_dir, NINJA_TARGET)
    caps = qemu_binary.probe(path, use_cache=False)
    caps.require_multiprocess()
    if not any(os.path.exists(os.path.join(d, qemu_binary.BIOS_FILE))
               for d in caps.data_dirs + caps.firmware_dirs):
        raise BuildError(f"{path} finds no {qemu_binary.BIOS_FILE}: install Debian's seabios "
                         f"and qemu-system-data (apt-get install seabios qemu-system-data)")
    result = BuildResult(spec=str(spec), key=key, binary=path, version=caps.version_string,
                         fingerprint=fingerprint, configure_args=args, build_log=log_path,
                         build_s=round(time.monotonic() - built_at, 1),
                         firmware_dirs=list(caps.firmware_dirs), has_qtest=caps.has_qtest,
                         multiprocess_option=args[1])
    tmp = os.path.join(key_dir, f'result.json.{os.getpid()}')
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(result.to_json(), f, indent=2)
    os.replace(tmp, os.path.join(key_dir, 'result.json'))
    log(f"{spec}: built {result.version} in {result.build_s:.0f} s: {path}")
    return result


def ensure_host_packages() -> None:
    """Install the build dependencies (as root) or say which to install."""
    script = os.path.join(paths.REPO_DIR, 'scripts', 'ensure-host-packages')
    status = subprocess.run(['sh', script, *BUILD_PACKAGES], check=False).returncode
    if status != 0:
        raise BuildError("the Debian packages needed to build QEMU are missing (see above): "
                         f"apt-get install -y --no-install-recommends {' '.join(BUILD_PACKAGES)}")


# ---------------------------------------------------------------- CLI

def specs_from_avocado_args(text: str) -> List[str]:
    """``qemu_src`` values in an AVOCADO_ARGS string (``-p qemu_src=X``)."""
    words = shlex.split(text or '')
    found = []
    for index, word in enumerate(words):
        value = None
        if word == '-p' and index + 1 < len(words):
            value = words[index + 1]
        elif word.startswith('-p') and '=' in word:
            value = word[2:]
        if value and value.startswith('qemu_src='):
            found.append(value[len('qemu_src='):])
    return found


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m harness.qemu.build',
        description='Build qemu-system-x86_64 with multi-process support (cached).')
    parser.add_argument('spec', nargs='*',
                        help='debian:bookworm, debian:trixie, a source dir or a git URL[#ref]')
    parser.add_argument('--configure-arg', action='append', default=[],
                        help='extra configure argument (part of the cache key)')
    parser.add_argument('--force', action='store_true', help='rebuild even if cached')
    parser.add_argument('--from-avocado-args', metavar='ARGS',
                        help="also build the qemu_src of an AVOCADO_ARGS string and "
                             "$QEMU_SRC (used by make functional)")
    parser.add_argument('--no-host-packages', action='store_true',
                        help='do not check/install the Debian build dependencies')
    parser.add_argument('--json', action='store_true', help='print the results as JSON')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    specs = list(args.spec)
    if args.from_avocado_args is not None:
        specs += specs_from_avocado_args(args.from_avocado_args)
        if not specs and os.environ.get('QEMU_SRC'):
            specs.append(os.environ['QEMU_SRC'])
        if not specs:
            return 0
    if not specs:
        parser.error('name a source to build')

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results = []
    try:
        if not args.no_host_packages:
            ensure_host_packages()
        for spec in specs:
            results.append(build(spec, args.configure_arg, log=say, force=args.force))
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
