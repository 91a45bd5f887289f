"""Wait for a condition, with a deadline, and fail naming what was awaited."""

import time
from typing import Callable, Optional, TypeVar

from . import deadlines
from .errors import Timeout

T = TypeVar('T')
POLL_INTERVAL_S = 0.05


class WaitTimeout(Timeout, AssertionError):
    """The condition did not hold in time.  An AssertionError too, so that
    a test waiting for the property it checks reports FAIL, not ERROR."""


def wait_until(condition: Callable[[], T], timeout_s: float, what: str,
               interval_s: float = POLL_INTERVAL_S, *,
               max_interval_s: Optional[float] = None,
               error: Optional[Callable[[float], Exception]] = None) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    The test's clock may shorten ``timeout_s`` (:func:`deadlines.cap`).
    ``max_interval_s``: double the interval after each poll, up to this,
    so that a quick answer is seen at once and a slow one costs few polls.
    ``error(timeout_s)``: the exception raised at the deadline (given the
    timeout as capped) in place of :class:`WaitTimeout`, for a caller whose
    own exception says more.
    """
    timeout_s = deadlines.cap(timeout_s, what)
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise error(timeout_s) if error else WaitTimeout(f"{what}: not within {timeout_s} s")
        time.sleep(interval_s)
        if max_interval_s:
            interval_s = min(max_interval_s, interval_s * 2)
