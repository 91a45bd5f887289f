"""Fixtures shared by the harness's own tests: they run real QEMU (the
binary named by $QEMU_BIN, Debian's qemu-system-x86_64 by default)."""

import glob
import importlib.util
import os
import socket

import pytest
from avocado.core.safeloader import find_avocado_tests

from harness.base import params, paths, procfs
from harness.qemu import binary as qemu_binary


def functional_tests():
    """(``test_x.py:Class.test_y``, the class, its Avocado tags) of every
    test in tests/functional, as Avocado finds them."""
    for path in sorted(glob.glob(os.path.join(paths.REPO_DIR, 'tests', 'functional',
                                              'test_*.py'))):
        name = 'functional_' + os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found, _ = find_avocado_tests(path)
        for cls, methods in found.items():
            for method, tags, _ in methods:
                yield f'{os.path.basename(path)}:{cls}.{method}', getattr(module, cls), tags


def pytest_report_header(config):
    return f"QEMU under test: {params.get('qemu_bin')}"


@pytest.fixture(scope='session')
def caps():
    return qemu_binary.probe(params.get('qemu_bin'))


@pytest.fixture
def pair():
    """Both ends of a unix stream socketpair (a wire protocol's link)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / 'disk.raw'
    with open(path, 'wb') as f:
        f.truncate(16 * 1024 * 1024)
    return str(path)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    return procfs.state(pid) not in (None, 'Z')


def socket_inodes(pid: int) -> set:
    """Inode numbers of the sockets process ``pid`` holds open."""
    inodes = set()
    fd_dir = f'/proc/{pid}/fd'
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except FileNotFoundError:
            continue
        if target.startswith('socket:['):
            inodes.add(int(target[8:-1]))
    return inodes
