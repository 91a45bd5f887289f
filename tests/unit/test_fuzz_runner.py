"""harness/fuzz/runner.py against a real remote: one that stops answering
is a hang, told idle from busy, with its threads' backtraces taken while
it is still hung (the evidence a finding keeps when its replay answers)."""

import os
import signal
import subprocess
import sys

import pytest

from harness.base import paths
from harness.fuzz import campaign, corpus, runner
from harness.mpqemu.fuzz import TRANSPORT
from harness.qemu import backtrace


def plain_case(fuzzer):
    """The first case of seed 1 that should simply be answered."""
    for index in range(200):
        case = fuzzer.case(index)
        if not (case.may_stall or case.fresh or case.hangup or case.fds):
            return case
    raise AssertionError('no plain case in the first 200')


@pytest.mark.skipif(not backtrace.gdb_available(), reason='gdb is not installed')
def test_a_stopped_remote_is_an_idle_hang_with_its_backtrace(caps, tmp_path):
    with campaign.Fuzzer(TRANSPORT, caps, str(tmp_path), 1) as fuzzer:
        case = plain_case(fuzzer)
        remote = fuzzer.runner.current(setup=True)
        os.kill(remote.pid, signal.SIGSTOP)
        result = fuzzer.runner.run(case)
        assert result.outcome == runner.OUTCOME_HANG, result
        assert 'idle (0% CPU, 0% wanted): blocked' in result.detail, result.detail
        assert 'state=T' in result.remote_state
        assert 'main_loop_wait' in result.backtrace, result.backtrace
        assert not remote.process.is_running(), 'the hung remote was not retired'
        finding = campaign.Finding(case, result, campaign.signature(result, None))
        assert finding.to_json()['backtrace'] == result.backtrace


@pytest.mark.skipif(not backtrace.gdb_available(), reason='gdb is not installed')
def test_a_looping_remote_starved_by_a_loaded_host_is_still_busy(caps, tmp_path):
    """The known /dev/zero resamplefd loop, replayed beside one spinning
    process per CPU: the remote gets well under one CPU, and is still told
    busy (runnable), with the loop in its main thread's backtrace."""
    path = os.path.join(paths.REPO_DIR, TRANSPORT.corpus_dir, 'resamplefd-dev-zero.json')
    hogs = [subprocess.Popen([sys.executable, '-c', 'while True: pass'])
            for _ in range(os.cpu_count() or 2)]
    try:
        with campaign.Fuzzer(TRANSPORT, caps, str(tmp_path), 1) as fuzzer:
            case, _ = corpus.load_reproducer(path)
            result = fuzzer.replay(case)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(timeout=10)
    assert result.outcome == runner.OUTCOME_HANG, result
    assert ' busy (' in result.detail and 'a loop' in result.detail, result.detail
    assert 'event_notifier_test_and_clear' in result.backtrace, result.backtrace
