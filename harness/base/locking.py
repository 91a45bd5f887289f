"""An exclusive lock file with a deadline, across processes: parallel test
runners asking for the same image or QEMU build wait for one builder
instead of racing several."""

import contextlib
import fcntl
import logging
import os
from typing import Iterator, Type

from .errors import HarnessError
from .waiting import wait_until

LOG = logging.getLogger(__name__)
POLL_S = 0.5


@contextlib.contextmanager
def exclusive(path: str, timeout_s: float, error: Type[HarnessError],
              holder: str) -> Iterator[None]:
    """Hold ``path`` locked (flock) for the ``with`` body; ``error`` past
    ``timeout_s`` naming ``holder``, what the other process should be."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'a', encoding='utf-8') as lock:
        def taken() -> bool:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
        if not taken():
            LOG.info("waiting for %s holding %s", holder, path)
            wait_until(taken, timeout_s, f'the lock {path}', POLL_S,
                       error=lambda s: error(f"{path} stayed locked for {s:.0f} s: {holder} "
                                             f"is stuck; if none is running, delete the file"))
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
