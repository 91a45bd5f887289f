"""wait_until: the one polling loop of the harness."""

import pytest

from harness.base import waiting
from harness.base.errors import Timeout
from harness.base.waiting import WaitTimeout, wait_until


def test_returns_the_first_truthy_value():
    answers = iter([None, 0, 'ready'])
    assert wait_until(lambda: next(answers), 5, 'an answer', 0.001) == 'ready'


def test_the_deadline_names_what_was_awaited():
    with pytest.raises(WaitTimeout, match='the answer: not within 0.05 s'):
        wait_until(lambda: False, 0.05, 'the answer', 0.01)


def test_a_caller_names_its_own_timeout():
    class MyTimeout(Timeout):
        pass
    with pytest.raises(MyTimeout, match='gave up after 0.05 s'):
        wait_until(lambda: False, 0.05, 'x', 0.01, error=lambda s: MyTimeout(f'gave up after {s} s'))


def test_the_interval_doubles_up_to_its_maximum(monkeypatch):
    slept = []
    monkeypatch.setattr(waiting.time, 'sleep', slept.append)
    polls = iter(range(6))
    wait_until(lambda: next(polls) == 5, 5, 'x', 0.001, max_interval_s=0.004)
    assert slept == [0.001, 0.002, 0.004, 0.004, 0.004]
