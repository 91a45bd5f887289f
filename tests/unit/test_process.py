"""One QEMU process: launch, QMP with deadlines, logs, shutdown ladder."""

import os
import shlex
import signal
import time

import pytest

from harness.base.errors import LaunchError, QMPError
from harness.qemu.process import QEMUProcess
from harness.base.waiting import wait_until

from conftest import pid_alive

MACHINE_NONE = ['-machine', 'none', '-nodefaults', '-display', 'none']


@pytest.fixture
def qemu(caps, tmp_path):
    process = QEMUProcess(caps.path, MACHINE_NONE, name='vm', log_dir=str(tmp_path))
    yield process
    process.shutdown()


def test_launch_qmp_and_quit(qemu):
    qemu.launch()
    assert qemu.qmp('query-status')['status'] == 'running'
    assert qemu.shutdown() == 'quit'
    assert qemu.exitcode == 0
    assert not pid_alive(qemu.pid)


def test_command_line_and_logs_are_recorded(caps, tmp_path):
    qemu = QEMUProcess(caps.path, MACHINE_NONE + ['-trace', 'qmp_exit_stale_hint_this'],
                       name='logged', log_dir=str(tmp_path))
    qemu.launch()
    qemu.hmp('info version')
    qemu.shutdown()
    recorded = (tmp_path / 'logged.cmdline').read_text()
    assert shlex.split(recorded) == qemu.cmdline
    assert qemu.cmdline[0] == caps.path
    # QEMU's stderr lands in the log: it warns about the unknown trace event.
    assert 'qmp_exit_stale_hint_this' in (tmp_path / 'logged.log').read_text()
    qmp_log = (tmp_path / 'qmp-logged.log').read_text()
    assert '"command-line": "info version"' in qmp_log


def test_child_inherits_only_the_fds_it_is_given(caps, tmp_path):
    keep_r, keep_w = os.pipe()
    other_r, other_w = os.pipe()
    qemu = QEMUProcess(caps.path, MACHINE_NONE, name='fds', log_dir=str(tmp_path),
                       pass_fds=[keep_r])
    try:
        qemu.launch()
        held = {os.readlink(f'/proc/{qemu.pid}/fd/{fd}') for fd in os.listdir(f'/proc/{qemu.pid}/fd')}
        assert os.readlink(f'/proc/self/fd/{keep_r}') in held
        assert os.readlink(f'/proc/self/fd/{other_r}') not in held
        assert os.readlink(f'/proc/self/fd/{other_w}') not in held
    finally:
        qemu.shutdown()
        for fd in (keep_r, keep_w, other_r, other_w):
            os.close(fd)


def test_bad_command_line_fails_launch_with_qemus_message(caps, tmp_path):
    qemu = QEMUProcess(caps.path, ['-machine', 'no-such-machine'], name='bad',
                       log_dir=str(tmp_path))
    with pytest.raises(LaunchError, match='(?s)bad exited during start-up .exited with status 1'
                                          '.*unsupported machine type'):
        qemu.launch()
    assert not qemu.is_running()


def test_missing_executable_fails_launch(tmp_path):
    qemu = QEMUProcess(str(tmp_path / 'qemu'), [], name='gone', log_dir=str(tmp_path))
    with pytest.raises(LaunchError, match='cannot execute'):
        qemu.launch()


def test_qmp_call_on_stopped_process_times_out(qemu):
    qemu.launch()
    qemu.send_signal(signal.SIGSTOP)
    start = time.monotonic()
    with pytest.raises(QMPError, match='no reply within 0.3 s'):
        qemu.qmp('query-status', timeout_s=0.3)
    assert time.monotonic() - start < 2.0
    qemu.send_signal(signal.SIGCONT)


def test_qmp_call_on_dead_process_fails_fast(qemu):
    qemu.launch()
    os.kill(qemu.pid, signal.SIGKILL)
    qemu.wait(5)
    start = time.monotonic()
    with pytest.raises(QMPError):
        qemu.qmp('query-status')
    assert time.monotonic() - start < 2.0
    assert qemu.shutdown() == 'exited'


def test_shutdown_of_stopped_process_falls_back_to_sigterm(qemu):
    qemu.launch()
    qemu.send_signal(signal.SIGSTOP)
    assert qemu.shutdown(timeout_s=0.5) == 'sigterm'
    assert not pid_alive(qemu.pid)


def test_shutdown_ladder_ends_with_sigkill(tmp_path):
    # Not QEMU (which always obeys SIGTERM): a process that ignores it.
    stubborn = QEMUProcess('/bin/sh', ['-c', 'trap "" TERM; echo ready; while :; do sleep 1; done'],
                           name='stubborn', log_dir=str(tmp_path), qmp=False)
    stubborn.launch()
    wait_until(lambda: 'ready' in stubborn.log_tail(), 5, 'the shell ignoring SIGTERM')
    assert stubborn.shutdown(timeout_s=0.5) == 'sigkill'
    assert not pid_alive(stubborn.pid)


def test_shutdown_twice_and_before_launch_are_harmless(qemu):
    assert qemu.shutdown() == 'never-launched'
    qemu.launch()
    assert qemu.shutdown() == 'quit'
    assert qemu.shutdown() == 'quit'


def test_inl_reads_an_io_port_through_the_monitor(caps, tmp_path):
    """The PCI host bridge latches CONFIG_ADDRESS (0xcf8): what HMP writes
    there, inl reads back as a number, whatever the version's format."""
    firmware = [arg for d in caps.firmware_dirs for arg in ('-L', d)]
    qemu = QEMUProcess(caps.path, ['-machine', 'pc', '-S', '-nodefaults', '-display', 'none',
                                   *firmware], name='pc', log_dir=str(tmp_path))
    qemu.launch()
    try:
        qemu.hmp('o /w 0xcf8 0x80000a5c')
        assert qemu.inl(0xcf8) == 0x80000a5c
        qemu.hmp('o /w 0xcf8 0')                # 5.2 prints it without the 0x
        assert qemu.inl(0xcf8) == 0
    finally:
        qemu.shutdown()


def test_trace_events_are_counted_in_either_log_format(tmp_path):
    qemu = QEMUProcess('qemu-system-x86_64', [], name='t', log_dir=str(tmp_path))
    with open(qemu.log_path, 'w', encoding='utf-8') as f:
        f.write('lsi_reset Reset\n'                              # 7.2
                '20571@1796423806.679625:lsi_reset Reset\n'      # 5.2, or -msg timestamp=on
                'lsi_reset_other x\nsomething lsi_reset\nlsi_reset\n')
    assert qemu.count_trace_events('lsi_reset') == 3
    assert qemu.count_trace_events('lsi_reg_write') == 0
