"""One remote device process: a ``-machine x-remote`` QEMU serving one LSI.

QEMU means one emulated device per remote (docs/system/multi-process.rst):
an ``lsi53c895a`` (with a ``scsi-hd`` when given a drive) bound by an
``x-remote-object`` to its end of a socketpair.  Whether it holds to that
is tests/functional/test_one_device.py's question, so a Remote can be
given further LSIs (``more_lsis``) and further server objects
(``more_objects``: :class:`ServerObject`) in the same process.  :class:`Remote` is the
only way the harness starts one, whoever holds the other end: the proxy
QEMU (harness/mpqemu/topology.py), the fake proxy
(harness/mpqemu/fake_remote.py) or the fuzzer.  It owns the process (and
the ones restarts replaced), its monitor, its watchdog and its fault
injector, so that every injected fault is one the watchdog knows about.

Two transports reach it.  ``proxy``: the mpqemu protocol over a socketpair
whose other end an ``x-pci-proxy-dev`` holds.  ``vfio-user``: the remote
runs with ``vfio-user=on`` and serves the device with an
``x-vfio-user-server`` on a unix socket, which a ``vfio-user-pci`` in the
guest's QEMU (10.1 and later) connects to (docs/interop/vfio-user.rst).

Over the proxy the remote inherits only its own socket end, and ``start``
closes the harness's copy once the process has it: any other holder of a remote's end
would hide its death from the proxy, whose vCPU then blocks for ever
(docs/multiprocess-qemu.md, "Socket ends").
"""

import json
import os
import socket
import stat
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..base.errors import HarnessError, LaunchError, ParameterError, QEMUBinaryError
from ..base.waiting import wait_until
from ..qemu.binary import VFIO_USER_SERVER, Capabilities
from ..qemu.process import LAUNCH_TIMEOUT_S, QEMUProcess
from .confinement import Confinement
from .faults import FaultInjector
from .watchdog import RemoteWatchdog

DISK_FORMATS = ('raw', 'qcow2')
PROXY = 'proxy'
VFIO_USER = 'vfio-user'
TRANSPORTS = (PROXY, VFIO_USER)


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


@dataclass(frozen=True)
class ServerObject:
    """A further server object in a remote, serving device ``devid``: an
    ``x-remote-object`` on ``sock`` (the remote's end of a socketpair of
    its own, closed by ``Remote.start``) or an ``x-vfio-user-server``
    listening at ``socket_path``.  ``id`` is its QOM id."""
    id: str
    devid: str
    sock: Optional[socket.socket] = None
    socket_path: Optional[str] = None


class Remote:
    """The remote process that emulates device ``devid``.

    ``args`` are extra arguments for the remote (traces, say); ``name``
    names its process and logs (``remote-DEVID`` unless given).  Over
    vfio-user, ``socket_path`` is where its server listens.  With a
    ``confinement`` it runs sandboxed and drops to an unprivileged user
    (harness/mpqemu/confinement.py).  Until
    ``start()`` there is no process; after a restart ``process`` is the new
    one and ``past`` holds those it replaced.

    ``more_lsis`` are further LSIs in the same process, as ``(devid,
    drive)``, and ``more_objects`` further server objects
    (:class:`ServerObject`, of this remote's transport): what QEMU's
    one-device limit is about.  Such a remote starts once.
    """

    def __init__(self, devid: str, drive: Optional[str] = None, fmt: str = 'raw',
                 args: Sequence[str] = (), name: Optional[str] = None,
                 transport: str = PROXY, socket_path: Optional[str] = None,
                 confinement: Optional[Confinement] = None,
                 more_lsis: Sequence[Tuple[str, Optional[str]]] = (),
                 more_objects: Sequence[ServerObject] = ()):
        check_drive(drive, fmt)
        for _, more_drive in more_lsis:
            check_drive(more_drive, fmt)
        if transport not in TRANSPORTS:
            raise HarnessError(f"transport {transport!r} is not one of {', '.join(TRANSPORTS)}")
        if (transport == VFIO_USER) != (socket_path is not None):
            raise HarnessError("a vfio-user remote needs a socket_path, and only it")
        for obj in more_objects:
            if (transport == VFIO_USER) != (obj.socket_path is not None) \
                    or (obj.sock is None) != (transport == VFIO_USER):
                raise HarnessError(f"server object {obj.id} of a {transport} remote needs "
                                   f"{'a socket_path' if transport == VFIO_USER else 'a sock'}"
                                   f", and only it")
        self.transport = transport
        self.socket_path = socket_path
        self.devid = devid
        self.name = name or f'remote-{devid}'
        self.drive = drive
        self.fmt = fmt
        self.args = list(args)
        self.confinement = confinement
        self.more_lsis = list(more_lsis)
        self.more_objects = list(more_objects)
        self.process: Optional[QEMUProcess] = None
        self.past: List[QEMUProcess] = []
        self.watchdog: Optional[RemoteWatchdog] = None
        self.faults: Optional[FaultInjector] = None
        self.generation = 0                               # restarts so far

    def command_line(self, caps: Capabilities, fd: Optional[int]) -> List[str]:
        confined = self.confinement.args(caps) if self.confinement else []
        return confined + self._device_command_line(caps, fd)

    def _device_command_line(self, caps: Capabilities, fd: Optional[int]) -> List[str]:
        names = caps.require_multiprocess()
        if self.transport == VFIO_USER:
            if not caps.vfio_user_server:
                raise QEMUBinaryError(
                    f"QEMU at {caps.path} ({caps.version_string}) has no x-vfio-user-server: "
                    f"build it with --enable-vfio-user-server "
                    f"(qemu_src=debian:trixie+vfio-user-server)")
            # On 10.0 the object takes its socket only as JSON: the dotted
            # form fails with "Parameter 'type' is missing".
            servers = [ServerObject(f'{self.devid}-vfu', self.devid,
                                    socket_path=self.socket_path)] + self.more_objects
            objects = [json.dumps({'qom-type': VFIO_USER_SERVER, 'id': obj.id,
                                   'device': obj.devid,
                                   'socket': {'type': 'unix', 'path': obj.socket_path}})
                       for obj in servers]
            machine = f'{names.machine},vfio-user=on'
        else:
            objects = [f'{names.remote_object},id={self.devid}-obj,devid={self.devid},fd={fd}']
            objects += [f'{names.remote_object},id={obj.id},devid={obj.devid},'
                        f'fd={obj.sock.fileno()}' for obj in self.more_objects]
            machine = names.machine
        args = ['-machine', machine, '-nodefaults', '-display', 'none']
        args += lsi_device_args(self.devid, self.drive, self.fmt)
        for devid, drive in self.more_lsis:
            args += lsi_device_args(devid, drive, self.fmt)
        for obj in objects:
            args += ['-object', obj]
        return args + self.args

    def start(self, caps: Capabilities, log_dir: str, sock: Optional[socket.socket] = None,
              *, watch: bool = False, qmp: bool = True,
              timeout_s: float = LAUNCH_TIMEOUT_S) -> QEMUProcess:
        """Launch the remote on ``sock`` (over the proxy: its end of the
        socketpair, closed here afterwards; over vfio-user: none, and this
        returns once the server listens), with a watchdog if ``watch``.
        Without ``qmp`` it returns as soon as the process is forked: the
        socket buffers what is sent before the remote is up (the fuzzer
        relaunches remotes by the hundred and cannot wait for QMP); over
        vfio-user the caller then waits with ``wait_listening()`` before
        it connects."""
        if (sock is None) != (self.transport == VFIO_USER):
            raise HarnessError(f"a {self.transport} remote is started "
                               f"{'without' if sock is None else 'with'} a socket end")
        if self.process is not None and self.process.is_running():
            raise HarnessError(f"{self.process.name} is still running: stop it before a restart")
        if self.process is not None and self.more_objects and self.transport == PROXY:
            raise HarnessError(f"{self.name} has further x-remote-objects, whose socket ends "
                               f"went to its first process: it cannot be restarted")
        if self.process is not None:
            self.past.append(self.process)
            self.generation += 1
        name = self.name + (f'-{self.generation}' if self.generation else '')
        watchdog = None
        fds = [sock.fileno()] if sock else []
        roles = {fd: 'the socket to the proxy' for fd in fds}
        for obj in self.more_objects:
            if obj.sock:
                fds.append(obj.sock.fileno())
                roles[obj.sock.fileno()] = f'the socket to the proxy of {obj.id}'
        process = None
        try:
            for path in self.socket_paths():
                if os.path.exists(path):
                    os.unlink(path)      # a dead server's
            process = QEMUProcess(caps.path, self.command_line(caps, fds[0] if fds else None),
                                  name=name, log_dir=log_dir, pass_fds=fds, qmp=qmp,
                                  fd_roles=roles)
            watchdog = RemoteWatchdog(process) if watch else None
            process.launch(timeout_s)
            if self.socket_path and qmp:
                for path in self.socket_paths():
                    self.wait_listening(process, timeout_s, path)
        except BaseException:
            if watchdog:
                watchdog.stop()        # its pipe and monitor socket
            if process and self.socket_path:
                process.shutdown()     # launched, but its server never listened
            raise
        finally:
            for end in [sock] + [obj.sock for obj in self.more_objects]:
                if end:
                    end.close()
        self.process, self.watchdog = process, watchdog
        self.faults = FaultInjector(process, watchdog)
        if watchdog:
            watchdog.start()
        return process

    def socket_paths(self) -> List[str]:
        """Where this remote's vfio-user servers listen (none over the proxy)."""
        if not self.socket_path:
            return []
        return [self.socket_path] + [obj.socket_path for obj in self.more_objects]

    def wait_listening(self, process: QEMUProcess, timeout_s: float = LAUNCH_TIMEOUT_S,
                       path: Optional[str] = None) -> None:
        """Until the vfio-user server of ``process`` listens on its socket
        (``path``, the first server's unless given)."""
        path = path or self.socket_path

        def listening():
            if not process.is_running():
                raise LaunchError(f"{process.name} exited before its vfio-user server "
                                  f"listened ({process.state_description()}): "
                                  f"{process.log_tail()}")
            return stat.S_ISSOCK(os.stat(path).st_mode) if os.path.exists(path) else False
        wait_until(listening, timeout_s, f'{process.name} to listen on {path}', 0.01)

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
