"""Where a QEMU build's source comes from: parsing a source spec, fetching
the tree it names, and the fingerprint that identifies its content.

A source spec (``qemu_src`` parameter / ``$QEMU_SRC``) is one of:
  - ``debian:SUITE`` or ``debian:SUITE=VERSION``: ``apt-get source qemu``
    from that suite (``dpkg-source -x`` applies Debian's patches, which a
    plain tarball lacks); the deb-src entries are added when missing;
  - a local directory holding QEMU's ``configure``;
  - a git URL, optionally ``#ref`` (needs network).

The fingerprint is the Debian version, the git commit (plus local changes)
or a walk of the tree's files; fetched sources live in the build cache's
``src/`` (harness/qemu/buildcache.py), downloaded once.
"""

import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
from typing import Callable, List, Optional, Sequence, Tuple

from . import seed
from .buildcache import BuildError, cache_dir, digest, locked, run_step

LOG = logging.getLogger(__name__)

DEBIAN_SUITES = ('bookworm', 'trixie')         # debian:SUITE
# Whose qemu source apt must know: also bullseye's 5.2, the base of the
# v8 series (seed:v8, harness/qemu/seed.py).
SOURCE_SUITES = DEBIAN_SUITES + ('bullseye',)
DEBIAN_SOURCE_PACKAGE = 'qemu'
APT_TIMEOUT_S = 600         # apt-get update / source, git clone / fetch


# ---------------------------------------------------------------- source specs

@dataclasses.dataclass(frozen=True)
class SourceSpec:
    kind: str                   # 'debian', 'seed', 'local' or 'git'
    location: str               # suite, seed name, absolute path, or URL
    ref: Optional[str] = None   # Debian version or git ref, when pinned

    def __str__(self) -> str:
        if self.kind == 'debian':
            return f'debian:{self.location}' + (f'={self.ref}' if self.ref else '')
        if self.kind == 'git':
            return self.location + (f'#{self.ref}' if self.ref else '')
        if self.kind == 'seed':
            return f'seed:{self.location}'
        return self.location


GIT_URL_RE = re.compile(r'^(https?://|git://|ssh://|git@|file://)|\.git(#.*)?$')


def parse_spec(text: str, cwd: Optional[str] = None) -> SourceSpec:
    """What ``qemu_src`` names, or a BuildError saying what it accepts."""
    text = text.strip()
    if not text:
        raise BuildError("qemu_src is empty: give debian:bookworm, debian:trixie, seed:v8 "
                         "(the original series), a QEMU source directory or a git URL")
    if text.startswith('debian:'):
        suite, _, version = text[len('debian:'):].partition('=')
        if suite not in DEBIAN_SUITES:
            raise BuildError(f"qemu_src={text}: Debian suite {suite!r} is not one this suite "
                             f"builds from; use one of "
                             f"{', '.join('debian:' + s for s in DEBIAN_SUITES)}")
        return SourceSpec('debian', suite, version or None)
    if text.startswith('seed:'):
        return SourceSpec('seed', seed.by_name(text[len('seed:'):]).name)
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


# ---------------------------------------------------------------- Debian sources

DEB_SRC_FILE = '/etc/apt/sources.list.d/mpqemu-deb-src.sources'
DEB_SRC_TEXT = """\
# Added by the mpqemu test suite (harness/qemu/source.py): Debian source
# packages for building QEMU.  Source entries only: nothing installs from them.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates trixie bullseye bullseye-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security bullseye-security
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


# What apt-cache's answers depend on: the source lists and the indexes
# apt-get update downloads (replaced by rename, so the directory's mtime
# moves too).
APT_STATE_PATHS = ('/etc/apt/sources.list', '/etc/apt/sources.list.d', '/var/lib/apt/lists')


def apt_state(paths: Sequence[str] = APT_STATE_PATHS) -> str:
    """A fingerprint of apt's sources and indexes: equal as long as
    ``apt-cache madison`` would answer the same."""
    lines = []
    for top in paths:
        entries = [top]
        if os.path.isdir(top):
            entries += sorted(os.path.join(top, name) for name in os.listdir(top))
        for path in entries:
            try:
                st = os.stat(path)
            except OSError:
                continue
            lines.append(f'{path} {st.st_mtime_ns} {st.st_size}')
    return digest(*lines)


def madison(memo_path: Optional[str] = None) -> str:
    """``apt-cache madison qemu``, answered from a memo while apt's state
    (apt_state()) is unchanged: every test resolving ``debian:SUITE``
    asks, and apt-cache takes 1-2 s on a busy 2-core machine."""
    memo_path = memo_path or cache_dir('src', 'madison.json')
    state = apt_state()
    try:
        with open(memo_path, encoding='utf-8') as f:
            memo = json.load(f)
        if memo.get('apt_state') == state and isinstance(memo.get('output'), str):
            return memo['output']
    except (OSError, ValueError, AttributeError):
        pass
    output = run_step(['apt-cache', 'madison', DEBIAN_SOURCE_PACKAGE], what='apt-cache madison')
    os.makedirs(os.path.dirname(memo_path), exist_ok=True)
    tmp = f'{memo_path}.{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump({'apt_state': state, 'output': output}, f)
    os.replace(tmp, memo_path)      # whole or not at all, for concurrent tests
    return output


def _deb_src_instructions() -> str:
    return (f"add Debian source entries as root: write {DEB_SRC_FILE} with\n"
            f"{DEB_SRC_TEXT}\nthen run: apt-get update")


def ensure_deb_src() -> None:
    """Make ``apt-get source`` find the qemu of every SOURCE_SUITES suite."""
    def known() -> bool:
        return all(parse_madison(madison(), suite) for suite in SOURCE_SUITES)
    if known():
        return
    if os.geteuid() != 0:
        raise BuildError("apt knows no source package qemu for "
                         f"{' and '.join(SOURCE_SUITES)}: {_deb_src_instructions()}")
    # Tests and preparations may ask at once; apt-get update takes its
    # lock without waiting.
    with locked(cache_dir('src', 'deb-src.lock')):
        if known():
            return
        LOG.info("adding deb-src entries (%s) and running apt-get update", DEB_SRC_FILE)
        with open(DEB_SRC_FILE, 'w', encoding='utf-8') as f:
            f.write(DEB_SRC_TEXT)
        with open(APT_PIN_FILE, 'w', encoding='utf-8') as f:
            f.write(APT_PIN_TEXT)
        run_step(['apt-get', 'update', '-q', '-o', f'DPkg::Lock::Timeout={APT_TIMEOUT_S}'],
                 timeout_s=APT_TIMEOUT_S, what='apt-get update')


def debian_version(spec: SourceSpec) -> str:
    """The source version ``spec`` resolves to (the newest of its suite)."""
    ensure_deb_src()
    versions = parse_madison(madison(), spec.location)
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
    root = cache_dir('src', f'debian-{spec.location}-{safe}')
    done = os.path.join(root, '.unpacked')
    with locked(root + '.lock'):
        if not os.path.exists(done):
            shutil.rmtree(root, ignore_errors=True)
            os.makedirs(root)
            log(f"apt-get source qemu={version} into {root}")
            run_step(['apt-get', 'source', '-q', '--only-source',
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
            head = run_step(['git', '-C', path, 'rev-parse', 'HEAD'], what='git rev-parse').strip()
            diff = run_step(['git', '-C', path, 'diff', 'HEAD', '--binary'], timeout_s=120,
                            what='git diff')
            untracked = run_step(['git', '-C', path, 'ls-files', '--others', '--exclude-standard'],
                                 what='git ls-files')
            extra = []
            for name in untracked.splitlines():
                try:
                    st = os.stat(os.path.join(path, name))
                except OSError:
                    continue
                extra.append(f'{name}:{st.st_size}:{st.st_mtime_ns}')
            return f'git:{head}:' + digest(diff, *extra)[:16]
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
    return 'files:' + digest(*entries)[:16]


def git_checkout(spec: SourceSpec, log: Callable[[str], None]) -> Tuple[str, str]:
    """Clone (or update) a git source; returns (tree, commit)."""
    root = cache_dir('src', 'git-' + digest(spec.location)[:12])
    with locked(root + '.lock'):
        if not os.path.isdir(os.path.join(root, '.git')):
            shutil.rmtree(root, ignore_errors=True)
            log(f"git clone {spec.location} into {root}")
            cmd = ['git', 'clone', '--depth', '1']
            if spec.ref:
                cmd += ['--branch', spec.ref]
            run_step(cmd + [spec.location, root], timeout_s=APT_TIMEOUT_S,
                     what=f'git clone {spec.location} (needs network)')
        else:
            run_step(['git', '-C', root, 'fetch', '--depth', '1', 'origin', spec.ref or 'HEAD'],
                     timeout_s=APT_TIMEOUT_S, what=f'git fetch {spec.location}')
            run_step(['git', '-C', root, 'checkout', '-q', '--detach', 'FETCH_HEAD'],
                     what='git checkout')
        commit = run_step(['git', '-C', root, 'rev-parse', 'HEAD'], what='git rev-parse').strip()
    return root, commit


def resolve(spec: SourceSpec, log: Callable[[str], None]) -> Tuple[str, Optional[str]]:
    """(fingerprint, tree or None if not fetched yet) of a spec."""
    if spec.kind == 'debian':
        return f'debian:{debian_version(spec)}', None
    if spec.kind == 'seed':
        recipe = seed.by_name(spec.location)
        return recipe.fingerprint(debian_version(SourceSpec('debian', recipe.base_suite))), None
    if spec.kind == 'local':
        return tree_fingerprint(spec.location), spec.location
    tree, commit = git_checkout(spec, log)
    return f'git:{commit}', tree


def fetch(spec: SourceSpec, fingerprint: str, log: Callable[[str], None]) -> str:
    """The tree of a spec that resolve() left unfetched (debian, seed)."""
    if spec.kind == 'seed':
        recipe = seed.by_name(spec.location)
        version = fingerprint.split(':', 2)[2].rsplit(':', 1)[0]
        base = fetch_debian(SourceSpec('debian', recipe.base_suite), version, log)
        return seed.patched_tree(recipe, base, version, log)
    return fetch_debian(spec, fingerprint.split(':', 1)[1], log)
