"""How to configure a QEMU tree: the arguments that its ``configure
--help`` allows, and the Python and meson that configure should use.

The build is for ``x86_64-softmmu`` only, with every optional feature off
except what the suite uses: the multi-process option
(``--enable-multiprocess`` upstream, ``--enable-mpqemu`` in trees with the
v8 series: read from ``configure --help``), slirp, KVM and TCG; qtest is
always built in.  A tree that needs a newer meson than Debian's gets one
from PyPI in the build cache's ``tools/``.
"""

import os
import re
import shutil
from typing import Callable, List, Optional, Sequence, Tuple

from .buildcache import BuildError, cache_dir, locked, run_step

TARGET_LIST = 'x86_64-softmmu'
# Debian's own meson (bookworm); trees that need newer get it from PyPI.
MESON_PYPI_PACKAGE = 'meson'
PIP_TIMEOUT_S = 600
# Debian's Python: the one that sees Debian's meson (not a venv's, nor pyenv's).
SYSTEM_PYTHON = '/usr/bin/python3'

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


def configure_features(help_text: str) -> Tuple[set, set]:
    """(feature names, literal options) that ``configure --help`` offers.
    Meson-era configure lists features as two-space-indented names under
    "Optional features"; older ones spell out ``--enable-X``."""
    options = set(re.findall(r'(--[a-z][a-z0-9-]*)', help_text))
    features = _listed_features(help_text)
    for option in options:
        for prefix in ('--enable-', '--disable-'):
            if option.startswith(prefix):
                features.add(option[len(prefix):])
    return features, options


def _listed_features(help_text: str) -> set:
    _, header, section = help_text.partition('Optional features')
    if not header:
        return set()
    return set(re.findall(r'^  ([a-z0-9][a-z0-9_-]*)  ', section, re.MULTILINE))


def _enablable(help_text: str, options: set) -> set:
    """Features that take a plain ``--enable-X``: listed ones, and those
    spelled so.  5.2 documents only ``--disable-slirp`` (its enable takes
    ``=git|system``, and "auto" finds Debian's libslirp)."""
    return _listed_features(help_text) | {o[len('--enable-'):] for o in options
                                          if o.startswith('--enable-')}


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
    enablable = _enablable(help_text, options)
    args += [f'--enable-{name}' for name in REQUIRED_FEATURES if name in enablable]
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
    have = _version_tuple(run_step([system_meson, '--version'])) if system_meson else ()
    if needed is None or (have and have >= needed):
        return SYSTEM_PYTHON
    series = '.'.join(map(str, needed[:2]))
    venv = cache_dir('tools', f'meson-{series}')
    python = os.path.join(venv, 'bin', 'python3')
    with locked(venv + '.lock'):
        if not os.path.exists(os.path.join(venv, '.installed')):
            log(f"meson >= {series} needed (Debian has {'.'.join(map(str, have)) or 'none'}): "
                f"installing {MESON_PYPI_PACKAGE}~={series}.0 from PyPI into {venv}")
            shutil.rmtree(venv, ignore_errors=True)
            run_step([SYSTEM_PYTHON, '-m', 'venv', venv], what='python3 -m venv')
            run_step([python, '-m', 'pip', 'install', '-q', '--disable-pip-version-check',
                      f'{MESON_PYPI_PACKAGE}~={series}.0'], timeout_s=PIP_TIMEOUT_S,
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
