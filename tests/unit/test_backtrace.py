"""harness/qemu/backtrace.py against real processes: gdb unwinds a live
QEMU's threads and leaves it running, frames without a name get their
module and offset, and the busy threads are told from the idle ones."""

import os
import subprocess
import sys
import time

import pytest

from harness.base import procfs
from harness.qemu import backtrace

QEMU_IDLE = ['qemu-system-x86_64', '-M', 'none', '-nodefaults', '-display', 'none',
             '-monitor', 'none', '-serial', 'none', '-name', 'idle,debug-threads=on']
SPIN = ('import threading, time\n'
        'def spin():\n'
        '    while True: pass\n'
        'threading.Thread(target=spin, daemon=True).start()\n'
        'time.sleep(60)\n')


@pytest.fixture
def running():
    started = []

    def start(argv):
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        started.append(process)
        time.sleep(0.5)                 # past its start-up, not a deadline
        return process
    yield start
    for process in started:
        process.kill()
        process.wait(timeout=10)


@pytest.mark.skipif(not backtrace.gdb_available(), reason='gdb is not installed')
def test_a_live_qemus_threads_are_unwound_and_it_goes_on(running):
    qemu = running(QEMU_IDLE)
    text = backtrace.backtraces(qemu.pid)
    assert text.count('Thread ') >= 2, text
    assert 'main_loop_wait' in text, text
    # Debian's binary is stripped of its local symbols: those frames are
    # named by module and offset, for addr2line with its debug symbols.
    assert '[qemu-system-x86_64+0x' in text, text
    assert qemu.poll() is None, 'gdb left the process stopped or killed it'
    main = [line for line in backtrace.summary(qemu.pid) if 'main_loop_wait' in line]
    assert main and ' < qemu_main_loop' in main[0], backtrace.summary(qemu.pid)


def test_unnamed_frames_are_named_by_module_and_offset():
    maps = [(0x5000, 0x9000, 0x1000, '/usr/bin/qemu-system-x86_64')]
    text = '#2  0x0000000000006010 in  ()\n#3  0x0000000000006010 in ?? ()\n#4  0x1 in  ()'
    assert backtrace.name_addresses(text, maps).splitlines() == [
        '#2  0x0000000000006010 in  () [qemu-system-x86_64+0x2010]',
        '#3  0x0000000000006010 in ?? () [qemu-system-x86_64+0x2010]',
        '#4  0x1 in  ()']


def test_without_gdb_the_reason_is_given(monkeypatch):
    monkeypatch.setattr(backtrace.shutil, 'which', lambda name: None)
    assert backtrace.backtraces(1) == '(no backtrace: gdb is not installed)'


def test_the_busy_thread_is_named(running):
    spinner = running([sys.executable, '-c', SPIN])
    before = backtrace.thread_cpu(spinner.pid)
    time.sleep(0.5)                     # the measurement window
    busy = backtrace.busy_threads(spinner.pid, before, 0.5)
    # The spinning thread, not the main one, which sleeps.
    tids = [int(entry.split('/')[1].split()[0]) for entry in busy.split(', ')]
    assert tids and tids[0] != spinner.pid and spinner.pid not in tids, busy
    idle = running(QEMU_IDLE)
    before = backtrace.thread_cpu(idle.pid)
    time.sleep(0.3)
    assert backtrace.busy_threads(idle.pid, before, 0.3) == ''


def test_cpu_wanted_tells_a_starved_loop_from_a_sleeper_woken_often(running):
    """Beside one spinning process per CPU, a loop gets a fraction of a CPU
    but wants all of it (run + run-queue wait); a process woken every
    0.5 ms wants little, though it is often caught runnable (a vfio-user
    server with a timer was called busy that way, and its stall a hang)."""
    hogs = [running([sys.executable, '-c', 'while True: pass'])
            for _ in range(os.cpu_count() or 2)]
    loop = hogs[0]
    sleeper = running([sys.executable, '-c', 'import time\nwhile True: time.sleep(0.0005)'])

    def wanted(pid: int) -> float:
        before = procfs.cpu_wanted_seconds(pid)
        time.sleep(0.3)                 # the measurement window
        return (procfs.cpu_wanted_seconds(pid) - before) / 0.3
    assert wanted(loop.pid) >= 0.8
    assert wanted(sleeper.pid) < 0.3
    assert procfs.cpu_wanted_seconds(2 ** 22 + 1) is None     # no such process
