"""Debian QEMU from another suite (harness/qemu/debroot.py): what the root
is made of, the wrapper that runs it, and bad input."""

import os
import subprocess

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
