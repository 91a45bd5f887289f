"""One QEMU process: launch, QMP, logs and a shutdown ladder.

Modelled on python/qemu/machine's QEMUMachine, with what the multi-process
tests need on top: the caller decides exactly which file descriptors the
child inherits (a socket end passed to the wrong process keeps a dead peer
alive), every wait has a deadline, and the child dies with the harness.

Files in ``log_dir`` for a process called NAME:
  NAME.log        its stdout and stderr, interleaved as written
  NAME.cmdline    the exact command line, shell-quoted
  qmp-NAME.log    every QMP command, reply and event, timestamped
"""

import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from typing import Dict, List, Optional, Sequence

from ..base import deadlines, lifeline, procfs
from ..base.errors import LaunchError, QMPError
from . import waits
from .qmp import QMPChannel

LOG = logging.getLogger(__name__)

LAUNCH_TIMEOUT_S = deadlines.LAUNCH_S
QUIT_TIMEOUT_S = 5.0
TERM_TIMEOUT_S = 3.0
KILL_TIMEOUT_S = 5.0
EXIT_GRACE_S = 1.0
LOG_TAIL_LINES = 20


class QEMUProcess:
    def __init__(self, qemu: str, args: Sequence[str], *, name: str, log_dir: str,
                 pass_fds: Sequence[int] = (), qmp: bool = True,
                 fd_roles: Optional[Dict[int, waits.FdRole]] = None):
        """``fd_roles``: what each passed fd is to the harness ("the socket
        to remote-lsi1"), for naming what a stuck thread waits on."""
        self.qemu = qemu
        self.name = name
        self.log_dir = log_dir
        self.log_path = os.path.join(log_dir, f'{name}.log')
        self.qmp_log_path = os.path.join(log_dir, f'qmp-{name}.log')
        self._args: List[str] = list(args)
        self._pass_fds = list(pass_fds)
        self._use_qmp = qmp
        self.fd_roles: Dict[int, waits.FdRole] = dict(fd_roles or {})
        self._popen: Optional[subprocess.Popen] = None
        self._qmp: Optional[QMPChannel] = None
        self._extra_monitor_socks: List[socket.socket] = []
        self.cmdline: List[str] = []
        self.launched_at: Optional[float] = None
        self.ended_by: Optional[str] = None   # how shutdown() ended it

    def __repr__(self) -> str:
        return f'<QEMUProcess {self.name} pid={self.pid}>'

    def add_monitor(self, chardev_id: str) -> socket.socket:
        """A second QMP monitor, for a user other than this object (e.g. a
        watchdog thread that must not share the main channel): returns our
        end of its socketpair, to hand to a QMPChannel after launch()."""
        if self._popen:
            raise LaunchError(f"{self.name}: monitors must be added before launch()")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._extra_monitor_socks.append(theirs)
        self.fd_roles[theirs.fileno()] = f'its QMP monitor {chardev_id}'
        self._args += ['-chardev', f'socket,id={chardev_id},fd={theirs.fileno()}',
                       '-mon', f'chardev={chardev_id},mode=control']
        self._pass_fds.append(theirs.fileno())
        return ours

    @property
    def pid(self) -> Optional[int]:
        return self._popen.pid if self._popen else None

    @property
    def exitcode(self) -> Optional[int]:
        """None while running; negative for death by signal."""
        return self._popen.poll() if self._popen else None

    def is_running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def state_description(self) -> str:
        """'running', 'stopped (SIGSTOP)', 'exited with status 1',
        'killed by SIGKILL'... for messages."""
        if not self._popen:
            return 'not launched'
        status = self._popen.poll()
        if status is None:
            state = procfs.state(self.pid)
            return {'T': 'stopped (SIGSTOP)', 't': 'stopped by a debugger',
                    'D': 'in uninterruptible sleep'}.get(state, 'running')
        if status < 0:
            return f'killed by {signal.Signals(-status).name}'
        return f'exited with status {status}'

    def waits(self) -> List[waits.ThreadWait]:
        """Where each of its threads waits (harness/qemu/waits.py)."""
        return waits.thread_waits(self.pid, self.fd_roles) if self.is_running() else []

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            with open(self.log_path, 'rb') as f:
                data = f.read().decode(errors='replace')
        except OSError:
            return ''
        return '\n'.join(data.splitlines()[-lines:])

    def count_trace_events(self, name: str) -> int:
        """How many times trace event ``name`` (e.g. ``lsi_reset``) is in
        the log: a line ``name args``, or ``PID@SECONDS.MICROS:name args``
        as QEMU 5.2 always writes it and later ones do with ``-msg
        timestamp=on`` (harness/qemu/tracelog.py)."""
        event = re.compile(rf'^(?:\d+@\d+\.\d+:)?{re.escape(name)}(?: |$)')
        try:
            with open(self.log_path, encoding='utf-8', errors='replace') as f:
                return sum(1 for line in f if event.match(line))
        except OSError:
            return 0

    def launch(self, timeout_s: float = LAUNCH_TIMEOUT_S) -> None:
        """Start QEMU and, with QMP, return once it answers."""
        if self._popen:
            raise LaunchError(f"{self.name} was already launched")
        os.makedirs(self.log_dir, exist_ok=True)
        args = list(self._args)
        pass_fds = list(self._pass_fds)
        qmp_ours = qmp_theirs = None
        if self._use_qmp:
            qmp_ours, qmp_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            args = ['-chardev', f'socket,id=qmp,fd={qmp_theirs.fileno()}',
                    '-mon', 'chardev=qmp,mode=control'] + args
            pass_fds.append(qmp_theirs.fileno())
            self.fd_roles[qmp_theirs.fileno()] = 'its QMP monitor'
            # Thread names ("CPU 0/TCG", "IO mon_iothread") for harness/qemu/waits.py.
            args = ['-name', 'debug-threads=on'] + args
        self.cmdline = [self.qemu] + args
        with open(os.path.join(self.log_dir, f'{self.name}.cmdline'), 'w',
                  encoding='utf-8') as f:
            f.write(shlex.join(self.cmdline) + '\n')
        LOG.info('%s: %s', self.name, shlex.join(self.cmdline))
        try:
            with open(self.log_path, 'ab') as log:
                self._popen = lifeline.popen(
                    self.cmdline, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, pass_fds=pass_fds, close_fds=True)
        except OSError as err:
            if qmp_ours:
                qmp_ours.close()
            raise LaunchError(f"{self.name}: cannot execute {self.qemu}: {err}") from None
        finally:
            # The child has its copies: QEMU must be their only holder.
            for sock in [qmp_theirs] + self._extra_monitor_socks:
                if sock:
                    sock.close()
            self._extra_monitor_socks = []
        self.launched_at = time.monotonic()
        if not qmp_ours:
            return
        self._qmp = QMPChannel(qmp_ours, self.name, self.qmp_log_path)
        timeout_s = deadlines.cap(timeout_s, f'{self.name} start-up')
        try:
            self._qmp.connect(timeout_s)
        except QMPError as err:
            raise LaunchError(self._launch_failure(err, timeout_s)) from None

    def _launch_failure(self, err: QMPError, timeout_s: float) -> str:
        """Why QMP did not come up, from the process's threads, before it is
        killed: exited (how), or still starting and waiting for what."""
        # QMP sees EOF as soon as an exiting QEMU's files close, a moment
        # before it can be reaped: give the exit that moment.
        self.wait_exit(EXIT_GRACE_S)
        if not self.is_running():
            what = f"{self.name} exited during start-up ({self.state_description()}): {err}"
        else:
            thread_waits = self.waits()
            peers = waits.awaited_peers(thread_waits)
            what = (f"{self.name} did not answer QMP within {timeout_s:.0f} s: "
                    f"it is still starting")
            if peers:
                what += f", waiting for a reply on {peers[0].fd_role}"
            what += f" ({waits.describe(thread_waits)})"
        self._hard_stop()
        return f"{what}\n--- last lines of {self.log_path} ---\n{self.log_tail()}"

    def _channel(self) -> QMPChannel:
        if not self._qmp:
            raise QMPError(f"{self.name} has no QMP connection (not launched, "
                           f"launched without QMP, or already shut down)")
        return self._qmp

    def qmp(self, command: str, timeout_s: Optional[float] = None, **args):
        kwargs = {'timeout_s': timeout_s} if timeout_s is not None else {}
        return self._channel().cmd(command, **kwargs, **args)

    def hmp(self, command_line: str, timeout_s: Optional[float] = None,
            cpu_index: Optional[int] = None) -> str:
        kwargs = {'timeout_s': timeout_s} if timeout_s is not None else {}
        return self._channel().hmp(command_line, cpu_index=cpu_index, **kwargs)

    def inl(self, port: int) -> int:
        """A 32-bit read of I/O port ``port`` in this QEMU (HMP ``i /w``),
        however its version prints it (5.2 pads to 8 characters with the
        0x, and prints 0 as ``00000000``; later QEMUs 8 digits after 0x)."""
        text = self.hmp(f'i /w {port:#x}')
        match = re.search(r'\] = (?:0x)?([0-9a-fA-F]+)', text)
        if not match:
            raise QMPError(f'{self.name}: HMP i /w {port:#x} answered {text!r}')
        return int(match.group(1), 16)

    def send_fd(self, fd: int, fdname: str) -> None:
        self._channel().send_fd(fd, fdname)

    def get_event(self, name: str, timeout_s: float):
        return self._channel().get_event(name, timeout_s)

    def send_signal(self, sig: int) -> None:
        if self.is_running():
            self._popen.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        """Exit status, or subprocess.TimeoutExpired after ``timeout_s``."""
        if not self._popen:
            raise LaunchError(f"{self.name} was never launched")
        return self._popen.wait(timeout=timeout_s)

    def wait_exit(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the process to end; True if it did."""
        if not self._popen:
            return True
        try:
            self._popen.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False

    def _hard_stop(self) -> None:
        if self.is_running():
            self._popen.kill()
            self.wait_exit(KILL_TIMEOUT_S)
        self._close_qmp()

    def _close_qmp(self) -> None:
        if self._qmp:
            self._qmp.close()
            self._qmp = None

    def kill(self) -> None:
        """SIGKILL now and reap."""
        if self._popen:
            self._hard_stop()
            self.ended_by = self.ended_by or 'sigkill'

    def shutdown(self, timeout_s: float = QUIT_TIMEOUT_S) -> str:
        """Stop QEMU: QMP quit, then SIGTERM, then SIGKILL, each with a
        deadline.  Never raises for a process that is already gone.
        Returns how it ended: 'exited', 'quit', 'sigterm' or 'sigkill'."""
        if not self._popen:
            return 'never-launched'
        if self.ended_by:
            return self.ended_by
        if not self.is_running():
            self.ended_by = 'exited'
        if not self.ended_by and self._qmp:
            try:
                self._qmp.cmd('quit', timeout_s=timeout_s)
            except QMPError:
                pass  # a wedged or dying QEMU: the signals below handle it
            if self.wait_exit(timeout_s):
                self.ended_by = 'quit'
        if not self.ended_by:
            self._popen.terminate()
            # A SIGSTOPped process only acts on SIGTERM once continued.
            self._popen.send_signal(signal.SIGCONT)
            if self.wait_exit(TERM_TIMEOUT_S):
                self.ended_by = 'sigterm'
        if not self.ended_by:
            self._popen.kill()
            if not self.wait_exit(KILL_TIMEOUT_S):
                raise LaunchError(f"{self.name} (pid {self.pid}) survived SIGKILL "
                                  f"for {KILL_TIMEOUT_S} s (uninterruptible sleep?)")
            self.ended_by = 'sigkill'
        self._close_qmp()
        LOG.info('%s: ended by %s, exit status %s', self.name, self.ended_by, self.exitcode)
        return self.ended_by
