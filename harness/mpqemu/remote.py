"""One remote device process: a ``-machine x-remote`` QEMU serving one LSI.

QEMU allows one emulated device per remote (docs/system/multi-process.rst):
an ``lsi53c895a`` (with a ``scsi-hd`` when given a drive) bound by an
``x-remote-object`` to its end of a socketpair.  :class:`Remote` is the
only way the harness starts one, whoever holds the other end: the proxy
QEMU (harness/mpqemu/topology.py), the fake proxy
(harness/mpqemu/fake_remote.py) or the fuzzer.  It owns the process (and
the ones restarts replaced), its monitor, its watchdog and its fault
injector, so that every injected fault is one the watchdog knows about.

The remote inherits only its own socket end, and ``start`` closes the
harness's copy once the process has it: any other holder of a remote's end
would hide its death from the proxy, whose vCPU then blocks for ever
(docs/multiprocess-qemu.md, "Socket ends").
"""

import os
import socket
from typing import List, Optional, Sequence

from ..base.errors import HarnessError, ParameterError
from ..qemu.binary import Capabilities
from ..qemu.process import LAUNCH_TIMEOUT_S, QEMUProcess
from .faults import FaultInjector
from .watchdog import RemoteWatchdog

DISK_FORMATS = ('raw', 'qcow2')


def check_drive(drive: Optional[str], fmt: str) -> None:
    """A clear error for a disk the LSI could not open, before any launch."""
    if fmt not in DISK_FORMATS:
        raise ParameterError(f"disk format {fmt!r} is not one of {', '.join(DISK_FORMATS)}")
    if drive is None:
        return
    if not os.path.isfile(drive):
        raise ParameterError(f"disk image {drive} does not exist or is not a file "
                             f"(build images with 'make images' or pass an existing path)")
    if not os.access(drive, os.R_OK | os.W_OK):
        raise ParameterError(f"disk image {drive} is not readable and writable by this user")


def lsi_device_args(devid: str, drive: Optional[str], fmt: str = 'raw',
                    addr: Optional[str] = None) -> List[str]:
    """An LSI 53C895A called ``devid`` with ``drive`` as scsi-hd 0, the same
    in a remote process and inside the guest's QEMU."""
    args = ['-device', f'lsi53c895a,id={devid}' + (f',addr={addr}' if addr else '')]
    if drive is not None:
        args += ['-drive', f'id={devid}-drive,file={drive},format={fmt},if=none',
                 '-device', f'scsi-hd,id={devid}-hd,drive={devid}-drive,'
                            f'bus={devid}.0,scsi-id=0']
    return args


class Remote:
    """The remote process that emulates device ``devid``.

    ``args`` are extra arguments for the remote (traces, say); ``name``
    names its process and logs (``remote-DEVID`` unless given).  Until
    ``start()`` there is no process; after a restart ``process`` is the new
    one and ``past`` holds those it replaced.
    """

    def __init__(self, devid: str, drive: Optional[str] = None, fmt: str = 'raw',
                 args: Sequence[str] = (), name: Optional[str] = None):
        check_drive(drive, fmt)
        self.devid = devid
        self.name = name or f'remote-{devid}'
        self.drive = drive
        self.fmt = fmt
        self.args = list(args)
        self.process: Optional[QEMUProcess] = None
        self.past: List[QEMUProcess] = []
        self.watchdog: Optional[RemoteWatchdog] = None
        self.faults: Optional[FaultInjector] = None
        self.generation = 0                               # restarts so far

    def command_line(self, caps: Capabilities, fd: int) -> List[str]:
        names = caps.require_multiprocess()
        return (['-machine', names.machine, '-nodefaults', '-display', 'none']
                + lsi_device_args(self.devid, self.drive, self.fmt)
                + ['-object',
                   f'{names.remote_object},id={self.devid}-obj,devid={self.devid},fd={fd}']
                + self.args)

    def start(self, caps: Capabilities, log_dir: str, sock: socket.socket, *,
              watch: bool = False, qmp: bool = True,
              timeout_s: float = LAUNCH_TIMEOUT_S) -> QEMUProcess:
        """Launch the remote on ``sock`` (its end of the socketpair, closed
        here afterwards), with a watchdog if ``watch``.  Without ``qmp`` it
        returns as soon as the process is forked: the socket buffers what
        is sent before the remote is up (the fuzzer relaunches remotes by
        the hundred and cannot wait for QMP)."""
        if self.process is not None and self.process.is_running():
            raise HarnessError(f"{self.process.name} is still running: stop it before a restart")
        if self.process is not None:
            self.past.append(self.process)
            self.generation += 1
        name = self.name + (f'-{self.generation}' if self.generation else '')
        watchdog = None
        try:
            process = QEMUProcess(caps.path, self.command_line(caps, sock.fileno()),
                                  name=name, log_dir=log_dir, pass_fds=[sock.fileno()],
                                  qmp=qmp, fd_roles={sock.fileno(): 'the socket to the proxy'})
            watchdog = RemoteWatchdog(process) if watch else None
            process.launch(timeout_s)
        except BaseException:
            if watchdog:
                watchdog.stop()        # its pipe and monitor socket
            raise
        finally:
            sock.close()
        self.process, self.watchdog = process, watchdog
        self.faults = FaultInjector(process, watchdog)
        if watchdog:
            watchdog.start()
        return process

    def qmp(self, cmd: str, **args):
        """A command on the remote's monitor."""
        if self.process is None:
            raise HarnessError(f"remote {self.devid} has not been started")
        return self.process.qmp(cmd, **args)

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None

    def processes(self) -> List[QEMUProcess]:
        """Every process this remote has had, the current one last."""
        return self.past + ([self.process] if self.process else [])

    def socket_role(self) -> str:
        """What the proxy's end of this remote's socket is, for messages
        about a proxy thread waiting on it."""
        if self.process is None:
            return f'the socket to remote {self.devid}'
        return f'the socket to {self.process.name}, {self.process.state_description()}'

    def stop_watchdog(self) -> None:
        if self.watchdog:
            self.watchdog.stop()

    def stop(self) -> Optional[str]:
        """Stop the watchdog and the process (a no-op once it has exited);
        returns how the process ended."""
        self.stop_watchdog()
        return self.process.shutdown() if self.process else None
