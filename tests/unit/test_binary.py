"""QEMU discovery and capability probe, against real binaries."""

import os
import stat

import pytest

from harness.base.errors import LaunchError, QEMUBinaryError
from harness.qemu import binary as qemu_binary
from harness.qemu.process import QEMUProcess


def _wrapper(tmp_path, name, body):
    """A shell script standing in front of the real QEMU."""
    path = tmp_path / name
    path.write_text('#!/bin/sh\n' + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_probe_finds_multiprocess_names_and_accelerators(caps):
    assert caps.version >= (5, 2, 0)  # multi-process appeared in 5.2
    assert caps.multiprocess == qemu_binary.UPSTREAM_NAMES
    assert 'tcg' in caps.accelerators
    assert os.path.isabs(caps.path)


def test_qtest_capability_matches_what_the_binary_accepts(caps, tmp_path):
    qemu = QEMUProcess(caps.path, ['-accel', 'qtest', '-machine', 'none', '-display', 'none',
                                   '-nodefaults', '-qtest', 'null'],
                       name='qtest-probe', log_dir=str(tmp_path))
    try:
        qemu.launch()
        accepted = qemu.qmp('query-status')['status'] == 'running'
    except LaunchError:
        accepted = False
    finally:
        qemu.shutdown()
    assert caps.has_qtest == accepted, qemu.log_tail()


def test_firmware_is_found_for_the_pc_machine(caps):
    dirs = caps.data_dirs + caps.firmware_dirs
    assert any(os.path.exists(os.path.join(d, qemu_binary.BIOS_FILE)) for d in dirs)


def test_probe_is_cached_until_the_binary_changes(tmp_path, caps):
    calls = tmp_path / 'calls'
    qemu = _wrapper(tmp_path, 'qemu-counting', f'echo x >> {calls}\nexec {caps.path} "$@"\n')
    first = qemu_binary.probe(qemu)
    runs = len(calls.read_text().splitlines())
    assert runs >= 1
    assert qemu_binary.probe(qemu) == first
    assert len(calls.read_text().splitlines()) == runs        # served from cache
    os.utime(qemu, ns=(0, os.stat(qemu).st_mtime_ns + 10**9))  # "rebuilt"
    qemu_binary.probe(qemu)
    assert len(calls.read_text().splitlines()) == 2 * runs


def test_missing_binary_is_named(tmp_path):
    missing = str(tmp_path / 'qemu-system-x86_64')
    with pytest.raises(QEMUBinaryError, match=f'{missing} does not exist'):
        qemu_binary.probe(missing)


def test_binary_not_on_path_says_how_to_install():
    with pytest.raises(QEMUBinaryError, match='not on \\$PATH.*apt-get install qemu-system-x86'):
        qemu_binary.probe('qemu-system-nonexistent')


def test_something_that_is_not_qemu_is_refused(tmp_path):
    fake = _wrapper(tmp_path, 'not-qemu', 'echo hello\n')
    with pytest.raises(QEMUBinaryError, match='does not look like QEMU'):
        qemu_binary.probe(fake, use_cache=False)


def test_binary_without_multiprocess_is_refused(tmp_path, caps):
    # A fake, named as such: no QEMU built without multi-process support is
    # installed here, so this wrapper hides the multi-process pieces from
    # the real binary's help output.
    fake = _wrapper(tmp_path, 'fake-qemu-without-multiprocess',
                    f'{caps.path} "$@" | grep -v -e x-remote -e x-pci-proxy-dev\n')
    fake_caps = qemu_binary.probe(fake, use_cache=False)
    assert fake_caps.multiprocess is None
    with pytest.raises(QEMUBinaryError, match='no multi-process support.*--enable-multiprocess'):
        fake_caps.require_multiprocess()


@pytest.mark.parametrize('names', [qemu_binary.UPSTREAM_NAMES, qemu_binary.V8_NAMES])
def test_both_generations_of_names_are_recognised(names):
    found = qemu_binary._detect_multiprocess({'pc', names.machine},
                                             {'e1000', names.proxy_device},
                                             {'memory-backend-memfd', names.remote_object})
    assert found == names


def test_partial_multiprocess_support_is_not_enough():
    names = qemu_binary.UPSTREAM_NAMES
    assert qemu_binary._detect_multiprocess({names.machine}, {names.proxy_device}, set()) is None
