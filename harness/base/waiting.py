"""Wait for a condition, with a deadline, and fail naming what was awaited."""

import time
from typing import Callable, TypeVar

from . import deadlines
from .errors import Timeout

T = TypeVar('T')
POLL_INTERVAL_S = 0.05


class WaitTimeout(Timeout, AssertionError):
    """The condition did not hold in time.  An AssertionError too, so that
    a test waiting for the property it checks reports FAIL, not ERROR."""


def wait_until(condition: Callable[[], T], timeout_s: float, what: str,
               interval_s: float = POLL_INTERVAL_S) -> T:
    """Poll ``condition`` until it returns something truthy, and return that."""
    timeout_s = deadlines.cap(timeout_s, what)
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"{what}: not within {timeout_s} s")
        time.sleep(interval_s)
