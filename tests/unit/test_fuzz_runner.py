"""harness/fuzz/runner.py against a real remote: one that stops answering
is a hang, told idle from busy, with its threads' backtraces taken while
it is still hung (the evidence a finding keeps when its replay answers)."""

import fcntl
import os
import signal
import struct
import subprocess
import sys
import termios

import pytest

from harness.base import procfs
from harness.base.fdstream import close_fds
from harness.base.waiting import wait_until
from harness.fuzz import campaign, runner
from harness.fuzz.cases import open_fd
from harness.mpqemu import protocol
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
        # Stopped back in its main loop, not still returning from its last
        # reply's sendmsg (where a stop right after set-up can catch it).
        wait_until(lambda: procfs.state(remote.pid) == 'S', 5.0, 'the remote to wait in ppoll')
        os.kill(remote.pid, signal.SIGSTOP)
        result = fuzzer.runner.run(case)
        assert result.outcome == runner.OUTCOME_HANG, result
        assert 'idle (0% CPU, 0% wanted): blocked' in result.detail, result.detail
        assert 'state=T' in result.remote_state
        assert 'main_loop_wait' in result.backtrace, result.backtrace
        assert not remote.process.is_running(), 'the hung remote was not retired'
        finding = campaign.Finding(case, result, campaign.signature(result, None))
        assert finding.to_json()['backtrace'] == result.backtrace


def unread_bytes(remote) -> int:
    """Bytes the harness sent that the remote has not read yet (SIOCOUTQ
    of a unix stream socket: what its peer has not consumed)."""
    raw = fcntl.ioctl(remote.link.sock.fileno(), termios.TIOCOUTQ, b'\0' * 4)
    return struct.unpack('i', raw)[0]


def arm_resample_loop(remote, workdir):
    """SET_IRQFD with /dev/zero as the resamplefd, and nothing after it:
    the remote finds its socket empty, returns to its main loop, and
    intr_resample_handler never comes back (the known issue
    remote-resamplefd-dev-zero-busy-loop).  Returns once it spins."""
    fds, opened = [], []
    for kind in ('eventfd', 'dev-zero'):
        fd, to_close = open_fd(kind, workdir)
        fds.append(fd)
        opened += to_close
    try:
        remote.send_raw(protocol.set_irqfd(*fds).encode(), fds, runner.FOLLOWUP_TIMEOUT_S)
    finally:
        close_fds(opened)
    start = sum(backtrace.thread_cpu(remote.pid).values())
    wait_until(lambda: sum(backtrace.thread_cpu(remote.pid).values()) - start >= 0.1,
               10.0, 'the remote to spin in intr_resample_handler')


@pytest.mark.skipif(not backtrace.gdb_available(), reason='gdb is not installed')
def test_a_looping_remote_starved_by_a_loaded_host_is_still_busy(caps, tmp_path):
    """The known /dev/zero resamplefd loop, beside one spinning process
    per CPU: the remote gets well under one CPU, and is still told busy
    (runnable), with the loop in its main thread's backtrace."""
    hogs = [subprocess.Popen([sys.executable, '-c', 'while True: pass'])
            for _ in range(os.cpu_count() or 2)]
    try:
        with campaign.Fuzzer(TRANSPORT, caps, str(tmp_path), 1) as fuzzer:
            case = plain_case(fuzzer)
            arm_resample_loop(fuzzer.runner.current(setup=True), str(tmp_path))
            result = fuzzer.runner.run(case)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(timeout=10)
    assert result.outcome == runner.OUTCOME_HANG, result
    assert ' busy (' in result.detail and 'a loop' in result.detail, result.detail
    assert 'event_notifier_test_and_clear' in result.backtrace, result.backtrace


def test_the_restore_is_read_before_the_next_case(caps, tmp_path):
    """A case ending in SET_IRQFD with a /dev/zero resamplefd (seed 1,
    case 963) leaves the remote ready to loop as soon as its socket is
    empty.  The restore after it must end in a round trip: if SET_IRQFD's
    replacement were still unread when the next case starts, the loop
    could start first and the next case would take the blame (the busy
    hangs of seed 1 cases 964 and 1589 in CI)."""
    with campaign.Fuzzer(TRANSPORT, caps, str(tmp_path), 1) as fuzzer:
        remote = fuzzer.runner.current(setup=True)
        remote.restore(fuzzer.runner.memory, ('sysmem', 'irqfd'))
        assert unread_bytes(remote) == 0, 'restore() returned before the remote read it all'
        case = fuzzer.case(963)
        assert case.steps[-1].note == 'SET_IRQFD irqfd=eventfd resamplefd=dev-zero'
        result = fuzzer.runner.run(case)
        if result.outcome == runner.OUTCOME_ANSWERED:
            remote = fuzzer.runner.current(setup=False)
            assert unread_bytes(remote) == 0, 'restore() returned before the remote read it all'
            result = fuzzer.runner.run(plain_case(fuzzer))
            assert result.outcome == runner.OUTCOME_ANSWERED, result
        else:
            assert result.outcome == runner.OUTCOME_HANG, result
