"""The lock file that serialises image and QEMU builds across processes."""

import subprocess
import sys
import time

import pytest

from harness.images.image import ImageError
from harness.base.locking import exclusive

HOLD = """
import sys, time
from harness.base.locking import exclusive
from harness.images.image import ImageError
with exclusive(sys.argv[1], 5, ImageError, 'the holder'):
    print('held', flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold_in_child(path, seconds):
    child = subprocess.Popen([sys.executable, '-c', HOLD, str(path), str(seconds)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == 'held\n'
    return child


def test_a_second_process_waits_for_the_lock(tmp_path):
    path = tmp_path / 'locks' / 'x.lock'
    child = hold_in_child(path, 1.0)
    started = time.monotonic()
    with exclusive(str(path), 10, ImageError, 'the holder'):
        waited = time.monotonic() - started
    assert child.wait(10) == 0
    assert waited > 0.3                  # it did wait for the child's release


def test_a_lock_held_too_long_is_a_named_error(tmp_path):
    path = tmp_path / 'x.lock'
    child = hold_in_child(path, 5.0)
    try:
        with pytest.raises(ImageError, match='stayed locked for 1 s: the holder is stuck'):
            with exclusive(str(path), 1, ImageError, 'the holder'):
                pass
    finally:
        child.kill()
        child.wait(5)
