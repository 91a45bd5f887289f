"""The remote watchdog and fault injectors against a real remote."""

import threading
import time

import pytest

from harness.base.errors import HarnessError
from harness.mpqemu.topology import Machine

DETECT_TIMEOUT_S = 5.0


@pytest.fixture
def watched(caps, tmp_path, disk):
    vm = Machine(caps, str(tmp_path), watchdog=True)
    vm.add_lsi('lsi1', disk)
    vm.launch()
    yield vm, vm.remote('lsi1')
    vm.shutdown()


def watchdog_threads():
    return [t for t in threading.enumerate() if t.name.startswith('watchdog-')]


def test_quiet_remote_gives_no_events(watched):
    _, remote = watched
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline and remote.watchdog.pings < 3:
        time.sleep(0.05)
    assert remote.watchdog.pings >= 3        # it is really pinging
    assert remote.watchdog.events() == []


@pytest.mark.parametrize('kind', ['kill', 'crash', 'terminate'])
def test_death_is_reported_with_its_latency(watched, kind):
    _, remote = watched
    fault = remote.faults.inject(kind)
    event = remote.watchdog.wait_for('dead', DETECT_TIMEOUT_S)
    assert event.detected_at >= fault.injected_at
    assert event.latency_s == pytest.approx(event.detected_at - fault.injected_at)
    assert remote.process.wait_exit(DETECT_TIMEOUT_S)
    assert remote.process.exitcode == (0 if kind == 'terminate' else -fault.signal)


def test_stop_and_continue_are_hung_then_resumed(watched):
    _, remote = watched
    remote.faults.hang()
    hung = remote.watchdog.wait_for('hung', DETECT_TIMEOUT_S)
    assert 'stopped' in hung.detail
    remote.faults.resume()
    resumed = remote.watchdog.wait_for('resumed', DETECT_TIMEOUT_S)
    assert resumed.detected_at > hung.detected_at


def test_missed_ping_deadline_alone_means_hung(watched):
    _, remote = watched
    remote.watchdog.use_proc_state = False
    remote.faults.hang()
    event = remote.watchdog.wait_for('hung', DETECT_TIMEOUT_S)
    assert 'no reply' in event.detail
    remote.faults.resume()
    remote.watchdog.wait_for('resumed', DETECT_TIMEOUT_S)


def test_watchdog_stops_promptly_even_while_a_ping_hangs(watched):
    vm, remote = watched
    remote.watchdog.use_proc_state = False
    remote.faults.hang()
    remote.watchdog.wait_for('hung', DETECT_TIMEOUT_S)
    started = time.monotonic()
    vm.shutdown()
    assert time.monotonic() - started < 5.0
    assert not remote.watchdog.running
    assert watchdog_threads() == []


def test_no_event_means_a_bounded_error(watched):
    _, remote = watched
    with pytest.raises(HarnessError, match="no 'dead' event"):
        remote.watchdog.wait_for('dead', 0.2)


def test_faults_need_a_running_process(watched):
    _, remote = watched
    remote.faults.kill()
    remote.watchdog.wait_for('dead', DETECT_TIMEOUT_S)
    remote.process.wait_exit(DETECT_TIMEOUT_S)
    with pytest.raises(HarnessError, match='is not running'):
        remote.faults.hang()
    with pytest.raises(HarnessError, match="unknown fault 'melt'"):
        remote.faults.inject('melt')


def test_a_fault_of_the_guests_qemu_is_timed_by_the_remotes_watchdog(watched):
    """Killing the proxy goes through the machine's injector too: the
    remote's watchdog times the remote's own exit from that injection."""
    vm, remote = watched
    fault = vm.faults.kill()
    assert vm.faults.process is vm.qemu and vm.faults.history == [fault]
    event = remote.watchdog.wait_for('dead', DETECT_TIMEOUT_S)
    assert event.latency_s == pytest.approx(event.detected_at - fault.injected_at)
    assert remote.process.wait_exit(DETECT_TIMEOUT_S)
