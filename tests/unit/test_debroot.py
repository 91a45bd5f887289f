"""Debian QEMU from another suite (harness/qemu/debroot.py): what the root
is made of, the wrapper that runs it, and bad input."""

import os
import signal
import subprocess
import sys
import time

import pytest

from harness.qemu import debroot, subject
from harness.qemu.build import split_features


def test_unknown_suite_is_named():
    with pytest.raises(debroot.DebRootError, match="qemu_deb=sid: not a suite .* trixie, "
                                                    "trixie-backports"):
        debroot.prepare('sid')


def test_backports_take_qemu_from_backports_and_the_rest_from_the_release():
    cmd = debroot.mmdebstrap_command('trixie-backports', '/tmp/x')
    include = next(a for a in cmd if a.startswith('--include='))[len('--include='):].split(',')
    assert 'qemu-system-x86/trixie-backports' in include
    assert 'ipxe-qemu' in include                       # not backported
    assert 'APT::Default-Release "trixie"' in ' '.join(cmd)
    assert cmd[-2:] == ['deb http://deb.debian.org/debian trixie main',
                        'deb http://deb.debian.org/debian trixie-backports main']


def test_wrapper_runs_the_roots_loader_with_its_libraries_and_firmware(tmp_path):
    """The wrapper execs (same pid, same fds) the root's loader on the
    root's binary; checked with a fake root whose 'loader' prints its
    arguments and environment."""
    root = tmp_path / 'rootfs'
    loader = root / debroot.LOADER
    loader.parent.mkdir(parents=True)
    loader.write_text('#!/bin/sh\necho "$QEMU_MODULE_DIR"\necho "$$"\nprintf "%s\\n" "$@"\n')
    loader.chmod(0o755)
    wrapper = tmp_path / 'qemu'
    wrapper.write_text(debroot.wrapper_text(str(root)))
    wrapper.chmod(0o755)
    proc = subprocess.Popen([str(wrapper), '-version', 'a b'], stdout=subprocess.PIPE, text=True)
    out = proc.communicate(timeout=10)[0].splitlines()
    assert out[0] == str(root / debroot.MODULE_DIR)
    assert int(out[1]) == proc.pid                     # exec, not a child
    args = out[2:]
    assert args[:2] == ['--library-path', ':'.join(str(root / d) for d in debroot.LIBRARY_DIRS)]
    assert args[2] == str(root / 'usr/bin/qemu-system-x86_64')
    assert args[3:5] == ['-L', str(root / 'usr/share/seabios')]   # the root's firmware first
    assert args[-2:] == ['-version', 'a b']


def test_subject_specs():
    assert subject.binary('qemu-system-x86_64') == 'qemu-system-x86_64'
    assert subject.ready('/usr/bin/qemu-system-x86_64')
    with pytest.raises(debroot.DebRootError, match='qemu_deb=bullseye'):
        subject.ready('deb:bullseye')


def test_a_qemu_src_names_configure_features():
    assert split_features('debian:trixie+vfio-user-server') == \
        ('debian:trixie', ['--enable-vfio-user-server'])
    assert split_features('debian:trixie') == ('debian:trixie', [])
    assert split_features(os.getcwd()) == (os.getcwd(), [])


KILL_WAIT_S = 30
FAKE_MMDEBSTRAP = '''#!/bin/sh
# Stands in for mmdebstrap: makes the root's loader, QEMU and dpkg status in
# the target (the argument ending in rootfs.partial), then hangs if asked.
for arg; do case $arg in *rootfs.partial) target=$arg;; esac; done
mkdir -p "$target/usr/lib64" "$target/usr/bin" "$target/var/lib/dpkg"
echo loader > "$target/usr/lib64/ld-linux-x86-64.so.2"
echo qemu > "$target/usr/bin/qemu-system-x86_64"
printf 'Package: qemu-system-x86\\nVersion: 1:11.1.3+ds-1~bpo13+1\\n\\n' > "$target/var/lib/dpkg/status"
if [ -n "$FAKE_MMDEBSTRAP_HANG" ]; then touch "$target/hanging"; sleep 600; fi
'''


def test_a_root_killed_while_made_is_made_again_not_used(tmp_path, monkeypatch):
    """A preparation killed in mmdebstrap leaves rootfs.partial and no
    manifest: prepared() refuses it and the next prepare() starts over."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'mmdebstrap').write_text(FAKE_MMDEBSTRAP)
    (bin_dir / 'mmdebstrap').chmod(0o755)
    monkeypatch.setenv('PATH', f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv('MPQEMU_CACHE_DIR', str(tmp_path / 'cache'))
    suite = 'trixie-backports'
    hanging = os.path.join(debroot.suite_dir(suite), 'rootfs.partial', 'hanging')
    # Its own session: the kill takes mmdebstrap with it, as a killed job's would.
    proc = subprocess.Popen(
        [sys.executable, '-c', f'from harness.qemu import debroot; debroot.prepare({suite!r})'],
        env=dict(os.environ, FAKE_MMDEBSTRAP_HANG='1'), start_new_session=True)
    try:
        deadline = time.monotonic() + KILL_WAIT_S
        while not os.path.exists(hanging) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.exists(hanging)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(KILL_WAIT_S)
    top = debroot.suite_dir(suite)
    assert os.path.isdir(os.path.join(top, 'rootfs.partial'))
    assert debroot.prepared(suite) is None

    wrapper = debroot.prepare(suite, log=lambda message: None)
    manifest = debroot.prepared(suite)
    assert manifest['packages'] == {'qemu-system-x86': '1:11.1.3+ds-1~bpo13+1'}
    assert wrapper == debroot.wrapper_path(suite)
    assert sorted(os.listdir(top)) == ['manifest.json', 'qemu-system-x86_64', 'rootfs']


def test_a_root_missing_its_qemu_is_not_prepared(tmp_path, monkeypatch):
    monkeypatch.setenv('MPQEMU_CACHE_DIR', str(tmp_path / 'cache'))
    top = debroot.suite_dir('trixie')
    os.makedirs(os.path.join(top, 'rootfs', 'usr', 'lib64'))
    with open(os.path.join(top, 'rootfs', debroot.LOADER), 'w') as f:
        f.write('loader')
    with open(debroot.wrapper_path('trixie'), 'w') as f:
        f.write(debroot.wrapper_text(os.path.join(top, 'rootfs')))
    os.chmod(debroot.wrapper_path('trixie'), 0o755)
    with open(os.path.join(top, 'manifest.json'), 'w') as f:
        f.write('{"format": %d, "suite": "trixie", "packages": {}}' % debroot.ROOT_FORMAT)
    assert debroot.prepared('trixie') is None
    os.makedirs(os.path.join(top, 'rootfs', 'usr', 'bin'))
    with open(os.path.join(top, 'rootfs', 'usr', 'bin', debroot.BINARY), 'w') as f:
        f.write('qemu')
    assert debroot.prepared('trixie')['suite'] == 'trixie'
