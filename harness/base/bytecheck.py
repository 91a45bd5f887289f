"""Byte-exact checks of DMA data: random disk images and comparisons
that look at every byte and name the first one that differs.

Shared by the pytest units (tests/unit/test_fake_proxy.py), the device
scenarios (tests/functional/test_protocol.py) and the benchmarks, so that
"the data arrived intact" means the same thing everywhere.
"""

import os
import random
from typing import Optional

from .units import MIB

IMAGE_CHUNK_BYTES = MIB


def write_random_image(path: str, size: int, seed: Optional[int] = None) -> str:
    """A raw disk image of ``size`` bytes of random data (reproducible
    when ``seed`` is given): every block differs, so a transfer from or to
    the wrong block cannot compare equal by chance."""
    rng = random.Random(seed) if seed is not None else None
    with open(path, 'wb') as f:
        left = size
        while left:
            n = min(left, IMAGE_CHUNK_BYTES)
            f.write(rng.randbytes(n) if rng else os.urandom(n))
            left -= n
    return path


def write_image(path: str, offset: int, data: bytes) -> None:
    """Put ``data`` into the image file at ``offset``, in place."""
    with open(path, 'r+b') as f:
        f.seek(offset)
        f.write(data)


def read_image(path: str, offset: int, length: int) -> bytes:
    """``length`` bytes of the image file at ``offset`` (what the remote's
    block layer wrote, since the remote opens it without a cache of ours)."""
    with open(path, 'rb') as f:
        f.seek(offset)
        return f.read(length)


def first_difference(actual: bytes, expected: bytes) -> Optional[int]:
    """Offset of the first differing byte, or None if equal (lengths
    differing count as a difference at the shorter length)."""
    if actual == expected:
        return None
    for i, (a, b) in enumerate(zip(actual, expected)):
        if a != b:
            return i
    return min(len(actual), len(expected))


def assert_same_bytes(actual: bytes, expected: bytes, what: str) -> None:
    """Compare every byte; on failure say how many differ and where the
    first one is, with both values."""
    if len(actual) != len(expected):
        raise AssertionError(f"{what}: {len(actual)} bytes, expected {len(expected)}")
    first = first_difference(actual, expected)
    if first is None:
        return
    count = sum(a != b for a, b in zip(actual, expected))
    raise AssertionError(f"{what}: {count} byte(s) differ, first at offset {first} "
                         f"(got {actual[first]:#04x}, expected {expected[first]:#04x})")
