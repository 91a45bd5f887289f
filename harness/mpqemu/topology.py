"""The machine: the QEMU that runs the guest and where each device lives.

A :class:`Machine` describes one guest-facing QEMU and its LSI 53C895As.
Each device has a placement:

``in-process``
    emulated inside the guest's QEMU, as QEMU normally does: the control
    against which the multi-process paths are read;
``proxy``
    emulated in its own remote process (harness/mpqemu/remote.py), reached
    through an ``x-pci-proxy-dev`` holding the other end of a socketpair
    (the mpqemu protocol).  Guest RAM is memfd-backed and shared: the
    remote maps it from the fds that SYNC_SYSMEM sends.  A *peer*
    (``add_peer``) takes the remote's end instead of a remote QEMU: the
    hostile remote of harness/mpqemu/hostile, which answers the proxy
    itself.
``vfio-user``
    emulated in its own remote process serving it with
    ``x-vfio-user-server`` on a unix socket, reached through a
    ``vfio-user-pci`` (QEMU 10.1 and later); the remote may be another
    QEMU binary (``remote_caps``), since Debian's newest client and a
    server build are different binaries.

See docs/system/multi-process.rst in QEMU.  Add devices and arguments,
then ``launch()``; ``shutdown()`` (or leaving the ``with`` block) stops
everything whatever state it is in.  The harness closes its copies of the
socket ends once the processes have theirs (docs/multiprocess-qemu.md,
"Socket ends").
"""

import json
import os
import shutil
import signal
import socket
import tempfile
from typing import Dict, List, Optional, Sequence

from ..base.errors import HarnessError, ParameterError, QEMUBinaryError
from ..qemu import accel as qemu_accel
from ..qemu.binary import VFIO_USER_CLIENT, Capabilities
from ..qemu.process import LAUNCH_TIMEOUT_S, QEMUProcess
from .confinement import Confinement
from .faults import FaultInjector
from .remote import PROXY, VFIO_USER, Remote, check_drive, lsi_device_args

IN_PROCESS = 'in-process'
PLACEMENTS = (IN_PROCESS, PROXY, VFIO_USER)
# vfio-user sockets live in a short directory of their own: a unix socket
# path is at most 107 bytes, less than a test's output directory can take.
SOCKET_DIR_PREFIX = "mpqemu-vfu-"
# A remote exits by itself once the proxy's end of its socket closes
# (hw/remote/mpqemu-link.c sees EOF); teardown gives it this long.
REMOTE_SELF_EXIT_S = 2.0
DEFAULT_CPU = 'default'      # the accelerator's usual model (qemu/accel.py default_cpu)
# device_del of a proxy device completes only once the guest's ACPI PCI
# hot-plug driver has released it.
HOTPLUG_TIMEOUT_S = 20.0


def short_socket_dir() -> str:
    """A fresh directory for vfio-user sockets, short enough for any
    socket name in it (the caller removes it)."""
    return tempfile.mkdtemp(prefix=SOCKET_DIR_PREFIX)


def check_placement(placement: str) -> str:
    if placement not in PLACEMENTS:
        raise ParameterError(f"device placement {placement!r} is not one of "
                             f"{', '.join(PLACEMENTS)}")
    return placement


class Device:
    """One LSI 53C895A of the machine and where it is emulated.

    ``args`` go to the process that emulates it: its remote, or the
    guest's QEMU for an in-process device.  ``remote`` is None in-process
    and for a proxy device whose socket end goes to ``peer`` (an object
    with ``attach(sock)`` and ``close()``) instead of a remote QEMU.
    """

    def __init__(self, devid: str, drive: Optional[str], fmt: str, args: Sequence[str],
                 addr: Optional[str], placement: str, socket_path: Optional[str] = None,
                 confinement: Optional[Confinement] = None, peer=None):
        self.devid = devid
        self.drive = drive
        self.fmt = fmt
        self.args = list(args)
        self.addr = addr
        self.placement = check_placement(placement)
        self.remote = None
        self.peer = peer
        if peer is not None and placement != PROXY:
            raise ParameterError(f"{devid}: a peer answers an {PROXY} device only")
        if placement != IN_PROCESS and peer is None:
            self.remote = Remote(devid, drive, fmt, args, transport=placement,
                                 socket_path=socket_path, confinement=confinement)
        self.proxy_sock: Optional[socket.socket] = None   # until the proxy has it

    def client_args(self) -> dict:
        """The vfio-user-pci that reaches this device's server."""
        client = {'driver': VFIO_USER_CLIENT, 'id': self.devid,
                  'socket': {'type': 'unix', 'path': self.remote.socket_path}}
        if self.addr:
            client['addr'] = self.addr
        return client

    def qemu_args(self, caps: Capabilities) -> List[str]:
        """What the guest's QEMU needs for this device."""
        if self.placement == IN_PROCESS:
            check_drive(self.drive, self.fmt)
            return lsi_device_args(self.devid, self.drive, self.fmt, self.addr) + self.args
        if self.placement == VFIO_USER:
            return ['-device', json.dumps(self.client_args())]
        names = caps.require_multiprocess()
        arg = f'{names.proxy_device},id={self.devid},fd={self.proxy_sock.fileno()}'
        return ['-device', arg + (f',addr={self.addr}' if self.addr else '')]


class Machine:
    """The guest's QEMU and its devices' processes, owned as one unit.

    ``placement`` is where ``add_lsi`` puts a device unless told
    otherwise; ``args`` are extra arguments for the guest's QEMU;
    ``remote_caps`` is the QEMU remotes run (``caps`` unless given);
    ``confinement`` how they are confined (harness/mpqemu/confinement.py:
    sandbox and user; None runs them as the harness runs).
    ``qemu`` is the QEMU that runs the guest (the proxy, for devices
    placed in remotes); ``remote(devid)`` is a device's remote.
    """

    def __init__(self, caps: Capabilities, log_dir: str, *, placement: str = PROXY,
                 accel: str = 'tcg', machine: str = 'pc', memory_mb: int = 256,
                 memory_slots: int = 0, maxmem_mb: Optional[int] = None, smp: int = 1,
                 watchdog: bool = False, cpu: Optional[str] = DEFAULT_CPU,
                 args: Sequence[str] = (), remote_caps: Optional[Capabilities] = None,
                 confinement: Optional[Confinement] = None):
        self.caps = caps
        self.confinement = confinement
        self.remote_caps = remote_caps or caps
        self.placement = self._check_binaries(check_placement(placement))
        if accel not in caps.accelerators:
            raise ParameterError(f"accelerator {accel!r} is not built into QEMU at "
                                 f"{caps.path} (it has {', '.join(caps.accelerators)})")
        if memory_mb < 1:
            raise ParameterError(f"memory_mb={memory_mb}: the guest needs some RAM")
        if memory_slots and (maxmem_mb or 0) <= memory_mb:
            raise ParameterError("memory slots need maxmem_mb larger than memory_mb")
        if smp < 1:
            raise ParameterError(f"smp={smp}: the guest needs a vCPU")
        self.log_dir = log_dir
        self.accel = accel
        self.machine = machine
        self.memory_mb = memory_mb
        self.memory_slots = memory_slots
        self.maxmem_mb = maxmem_mb
        self.smp = smp
        self.watchdog = watchdog          # a RemoteWatchdog on every remote
        # -cpu: 'host' under KVM on VMX/SVM; QEMU's default model under PVM
        # (-cpu host aborts there: "failed to set MSR 0x10a") and TCG.
        self.cpu = qemu_accel.default_cpu(accel) if cpu == DEFAULT_CPU else cpu
        self.devices: Dict[str, Device] = {}
        self.extra_args: List[str] = list(args)     # for the guest's QEMU
        self.qemu: Optional[QEMUProcess] = None
        # The session of the guest it runs, set by whoever boots one
        # (harness/guest/session.py, harness/agent/session.py).
        self.guest = None
        self._faults: Optional[FaultInjector] = None
        self._socket_dir: Optional[str] = None
        os.makedirs(log_dir, exist_ok=True)

    def _check_binaries(self, placement: str) -> str:
        """A clear error for a placement the binaries cannot make."""
        if placement == PROXY:
            self.caps.require_multiprocess()
            self.remote_caps.require_multiprocess()
        elif placement == VFIO_USER:
            if not self.caps.vfio_user_client:
                raise QEMUBinaryError(
                    f"QEMU at {self.caps.path} ({self.caps.version_string}) has no "
                    f"{VFIO_USER_CLIENT} (QEMU 10.1 and later; e.g. qemu_deb=trixie-backports)")
            self.remote_caps.require_multiprocess()
            if not self.remote_caps.vfio_user_server:
                raise QEMUBinaryError(
                    f"QEMU at {self.remote_caps.path} ({self.remote_caps.version_string}) has "
                    f"no x-vfio-user-server: build it with --enable-vfio-user-server "
                    f"(qemu_src=debian:trixie+vfio-user-server)")
        return placement

    def _socket_path(self, devid: str) -> str:
        if self._socket_dir is None:
            self._socket_dir = short_socket_dir()
        return os.path.join(self._socket_dir, f'{devid}.sock')

    def __enter__(self) -> 'Machine':
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def add_lsi(self, devid: str, drive: Optional[str] = None, fmt: str = 'raw',
                args: Sequence[str] = (), addr: Optional[str] = None,
                placement: Optional[str] = None) -> Device:
        """Declare an LSI 53C895A with ``drive`` as its disk, placed as the
        machine's devices are unless ``placement`` says otherwise; ``args``
        are extra arguments for the process that emulates it."""
        if self.qemu:
            raise HarnessError("add devices before launch(); hot-plug is a separate step")
        if devid in self.devices:
            raise ParameterError(f"there already is a device {devid!r}")
        placement = self._check_binaries(check_placement(placement or self.placement))
        check_drive(drive, fmt)
        device = Device(devid, drive, fmt, args, addr, placement,
                        self._socket_path(devid) if placement == VFIO_USER else None,
                        self.confinement)
        self.devices[devid] = device
        return device

    def add_peer(self, devid: str, peer, addr: Optional[str] = None) -> Device:
        """Declare an ``x-pci-proxy-dev`` whose remote end goes to ``peer``
        (harness/mpqemu/hostile/remote.py) rather than to a remote QEMU:
        ``peer.attach(sock)`` gets it at launch, ``peer.close()`` runs at
        shutdown."""
        if self.qemu:
            raise HarnessError("add devices before launch(); plug_peer() hot-plugs one")
        if devid in self.devices:
            raise ParameterError(f"there already is a device {devid!r}")
        self.caps.require_multiprocess()
        device = Device(devid, None, 'raw', (), addr, PROXY, peer=peer)
        self.devices[devid] = device
        return device

    def plug_peer(self, devid: str, peer) -> None:
        """Hot-plug a new ``x-pci-proxy-dev`` ``devid``, answered by
        ``peer``, in place of one the guest has ejected (DEVICE_DELETED
        seen); the old peer is closed.  The proxy probes the new one's
        BARs during device_add, so ``peer`` serves before it is sent."""
        device = self._device(devid)
        if device.peer is None:
            raise HarnessError(f"{devid} is not answered by a peer")
        names = self.caps.require_multiprocess()
        device.peer.close()
        device.peer = peer
        proxy_end, peer_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        peer.attach(peer_end)
        try:
            fdname = f'{devid}-peer-{id(peer):x}'
            self.qemu.send_fd(proxy_end.fileno(), fdname)
        finally:
            proxy_end.close()
        args = {'driver': names.proxy_device, 'id': devid, 'fd': fdname}
        if device.addr:
            args['addr'] = device.addr
        self.qemu.qmp('device_add', **args)

    def add_args(self, *args: str) -> None:
        """Arguments for the guest's QEMU."""
        if self.qemu:
            raise HarnessError("arguments for the guest's QEMU must be added before launch()")
        self.extra_args.extend(args)

    @property
    def multiprocess(self) -> bool:
        return any(d.placement != IN_PROCESS for d in self.devices.values())

    def remotes(self) -> List[Remote]:
        return [d.remote for d in self.devices.values() if d.remote]

    def remote(self, devid: str) -> Remote:
        """The remote that emulates device ``devid``."""
        device = self._device(devid)
        if device.remote is None:
            raise HarnessError(f"{devid} is emulated inside the guest's QEMU: it has no "
                               f"remote process")
        return device.remote

    def device_process(self, devid: str) -> QEMUProcess:
        """The process that emulates device ``devid``, wherever it is."""
        device = self._device(devid)
        return device.remote.process if device.remote else self.qemu

    def _device(self, devid: str) -> Device:
        if devid not in self.devices:
            raise HarnessError(f"the machine has no device {devid!r} "
                               f"(it has {', '.join(self.devices) or 'none'})")
        return self.devices[devid]

    def disk_stats(self, devid: str) -> dict:
        """query-blockstats ``stats`` (rd_bytes, wr_bytes...) of the disk
        of LSI ``devid``, from whichever process emulates it."""
        for dev in self.device_process(devid).qmp('query-blockstats'):
            if (dev.get('qdev', '').startswith(f'{devid}-hd')
                    or dev.get('device') == f'{devid}-drive'):
                return dev['stats']
        raise HarnessError(f"no block stats for the disk of {devid}")

    def _memory_args(self) -> List[str]:
        size = f'{self.memory_mb}M'
        if self.memory_slots:
            size += f',slots={self.memory_slots},maxmem={self.maxmem_mb}M'
        return ['-m', size,
                '-object', f'memory-backend-memfd,id=sysmem,size={self.memory_mb}M,share=on',
                '-numa', 'node,memdev=sysmem']

    def qemu_args(self) -> List[str]:
        args = ['-accel', self.accel, '-machine', self.machine, '-smp', str(self.smp),
                '-nodefaults', '-display', 'none', *self.caps.firmware_args,
                *self._memory_args()]
        if self.cpu:
            args += ['-cpu', self.cpu]
        for device in self.devices.values():
            args += device.qemu_args(self.caps)
        return args + self.extra_args

    def launch(self, timeout_s: float = LAUNCH_TIMEOUT_S) -> None:
        """Start every remote, then the guest's QEMU (``timeout_s`` each to
        answer QMP).  On failure, everything started so far is stopped
        before the error propagates."""
        if not self.devices:
            raise HarnessError("the machine needs at least one device")
        proxied = [d for d in self.devices.values() if d.placement == PROXY]
        try:
            for device in self.devices.values():
                remote_sock = None
                if device.placement == PROXY:
                    device.proxy_sock, remote_sock = socket.socketpair(socket.AF_UNIX,
                                                                       socket.SOCK_STREAM)
                if device.remote:
                    device.remote.start(self.remote_caps, self.log_dir, remote_sock,
                                        watch=self.watchdog, timeout_s=timeout_s)
                elif device.peer is not None:
                    device.peer.attach(remote_sock)
            self.qemu = QEMUProcess(self.caps.path, self.qemu_args(),
                                    name='proxy' if self.multiprocess else 'vm',
                                    log_dir=self.log_dir,
                                    pass_fds=[d.proxy_sock.fileno() for d in proxied],
                                    fd_roles={d.proxy_sock.fileno(): _socket_role(d)
                                              for d in proxied})
            self.qemu.launch(timeout_s)
        except BaseException:
            self.shutdown()
            raise
        finally:
            self._close_proxy_socks()

    def _close_proxy_socks(self) -> None:
        for device in self.devices.values():
            if device.proxy_sock:
                device.proxy_sock.close()
                device.proxy_sock = None

    @property
    def faults(self) -> FaultInjector:
        """Faults of the guest's QEMU itself; every remote's watchdog hears
        of each (a remote outlives its proxy only briefly)."""
        if self.qemu is None:
            raise HarnessError("the machine has not been launched")
        if self._faults is None or self._faults.process is not self.qemu:
            self._faults = FaultInjector(self.qemu, *(r.watchdog for r in self.remotes()))
        return self._faults

    def processes(self) -> List[QEMUProcess]:
        procs = [self.qemu] if self.qemu else []
        return procs + [p for r in self.remotes() for p in r.processes()]

    def restart_remote(self, devid: str, timeout_s: float = HOTPLUG_TIMEOUT_S) -> Remote:
        """Replace a (dead or alive) remote with a fresh one on the same
        disk: unplug its client device (the guest's ACPI hot-plug must
        complete it), start a new remote and hot-plug a new client device
        with the same id.  Over the proxy the new remote's socket end goes
        to the proxy with QMP getfd; over vfio-user the new server listens
        on the same socket path."""
        device, remote = self._device(devid), self.remote(devid)
        self.qemu.qmp('device_del', id=devid)
        self.qemu.get_event('DEVICE_DELETED', timeout_s)   # the guest let it go
        remote.stop()
        if device.placement == VFIO_USER:
            remote.start(self.remote_caps, self.log_dir, watch=self.watchdog)
            self.qemu.qmp('device_add', **device.client_args())
            return remote
        names = self.caps.require_multiprocess()
        proxy_end, remote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            remote.start(self.remote_caps, self.log_dir, remote_end, watch=self.watchdog)
            fdname = f'{devid}-sock-{remote.generation}'
            self.qemu.send_fd(proxy_end.fileno(), fdname)
        finally:
            proxy_end.close()      # the proxy holds its copy now
        args = {'driver': names.proxy_device, 'id': devid, 'fd': fdname}
        if device.addr:
            args['addr'] = device.addr
        self.qemu.qmp('device_add', **args)
        return remote

    def shutdown(self) -> Dict[str, str]:
        """Stop the guest's QEMU, then the remotes (which normally exit on
        their own once the proxy is gone).  Returns how each process ended."""
        ended, errors = {}, []
        for remote in self.remotes():
            try:
                remote.stop_watchdog()
            except Exception as err:  # pylint: disable=broad-except
                errors.append(err)
        # A SIGSTOPped remote would keep the proxy's vCPU waiting for a
        # reply and make the quit slow; wake the remotes first.
        for remote in self.remotes():
            if remote.process and remote.process.is_running():
                remote.process.send_signal(signal.SIGCONT)
        for process in self.processes():
            if process is not self.qemu:
                process.wait_exit(REMOTE_SELF_EXIT_S)
            try:
                ended[process.name] = process.shutdown()
            except Exception as err:  # pylint: disable=broad-except
                errors.append(err)
        self._close_proxy_socks()
        for device in self.devices.values():
            if device.peer is not None:
                try:
                    device.peer.close()
                except Exception as err:  # pylint: disable=broad-except
                    errors.append(err)
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        if errors:
            raise errors[0]
        return ended


def _socket_role(device: Device):
    """What the proxy's end of ``device``'s socketpair leads to, for
    reports of where a vCPU waits."""
    return device.remote.socket_role if device.remote else f'the peer of {device.devid}'
