"""The multi-process topology: remote device processes plus the proxy.

One remote QEMU (``-machine x-remote``) per emulated device, which is what
QEMU allows: each runs an ``lsi53c895a`` (with a ``scsi-hd`` when given a
drive) bound by an ``x-remote-object`` to its end of a socketpair.  The
proxy QEMU runs the guest with memfd-backed shared RAM (the remote maps it
from the fds that SYNC_SYSMEM sends) and one ``x-pci-proxy-dev`` per remote
holding the other end.  See docs/system/multi-process.rst in QEMU.

Each process inherits only its own socket end, and the harness closes both
after the launches: any other holder of a remote's end would hide its death
from the proxy, whose vCPU then blocks for ever (docs/multiprocess-qemu.md,
"Socket ends").
"""

import logging
import os
import signal
import socket
from typing import Dict, List, Optional, Sequence

from ..base.errors import HarnessError, ParameterError
from ..qemu import accel as qemu_accel
from ..qemu.binary import Capabilities
from ..qemu.process import LAUNCH_TIMEOUT_S, QEMUProcess
from .faults import FaultInjector
from .watchdog import RemoteWatchdog

LOG = logging.getLogger(__name__)

DISK_FORMATS = ('raw', 'qcow2')
# A remote exits by itself once the proxy's end of its socket closes
# (hw/remote/mpqemu-link.c sees EOF); teardown gives it this long.
REMOTE_SELF_EXIT_S = 2.0
DEFAULT_CPU = 'default'      # the accelerator's usual model (qemu/accel.py default_cpu)
# device_del of a proxy device completes only once the guest's ACPI PCI
# hot-plug driver has released it.
HOTPLUG_TIMEOUT_S = 20.0


def _check_drive(drive: Optional[str], fmt: str) -> None:
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
    in a remote process and in the control VM."""
    args = ['-device', f'lsi53c895a,id={devid}' + (f',addr={addr}' if addr else '')]
    if drive is not None:
        args += ['-drive', f'id={devid}-drive,file={drive},format={fmt},if=none',
                 '-device', f'scsi-hd,id={devid}-hd,drive={devid}-drive,'
                            f'bus={devid}.0,scsi-id=0']
    return args


def remote_args(caps: Capabilities, devid: str, drive: Optional[str], fd: int,
                fmt: str = 'raw') -> List[str]:
    """Command line of a remote process serving one LSI 53C895A."""
    names = caps.require_multiprocess()
    return (['-machine', names.machine, '-nodefaults', '-display', 'none']
            + lsi_device_args(devid, drive, fmt)
            + ['-object', f'{names.remote_object},id={devid}-obj,devid={devid},fd={fd}'])


def remote_process(caps: Capabilities, *, devid: str, sock: socket.socket, log_dir: str,
                   drive: Optional[str] = None, fmt: str = 'raw',
                   extra_args: Sequence[str] = (), name: Optional[str] = None,
                   qmp: bool = True) -> QEMUProcess:
    """A remote process for ``sock`` (its end of the socketpair), not yet
    launched: add monitors or arguments, launch, then close ``sock``."""
    _check_drive(drive, fmt)
    return QEMUProcess(caps.path,
                       remote_args(caps, devid, drive, sock.fileno(), fmt) + list(extra_args),
                       name=name or f'remote-{devid}', log_dir=log_dir,
                       pass_fds=[sock.fileno()], qmp=qmp,
                       fd_roles={sock.fileno(): 'the socket to the proxy'})


def start_remote(caps: Capabilities, *, devid: str, sock: socket.socket, log_dir: str,
                 drive: Optional[str] = None, fmt: str = 'raw',
                 extra_args: Sequence[str] = (), name: Optional[str] = None,
                 qmp: bool = True) -> QEMUProcess:
    """Launch a remote process on ``sock`` (its end of the socketpair),
    then close ``sock`` here so that the remote is its only holder.
    Without ``qmp`` it returns as soon as the process is forked: the
    socket buffers what is sent before the remote is up (the fuzzer
    relaunches remotes by the hundred and cannot wait for QMP)."""
    process = remote_process(caps, devid=devid, sock=sock, log_dir=log_dir, drive=drive,
                             fmt=fmt, extra_args=extra_args, name=name, qmp=qmp)
    try:
        process.launch()
    finally:
        sock.close()
    return process


class RemoteDevice:
    """One remote process and what the proxy needs to reach it."""

    def __init__(self, devid: str, drive: Optional[str], fmt: str,
                 extra_args: Sequence[str], addr: Optional[str]):
        self.devid = devid
        self.drive = drive
        self.fmt = fmt
        self.extra_args = list(extra_args)
        self.addr = addr
        self.process: Optional[QEMUProcess] = None
        self.past: List[QEMUProcess] = []                 # replaced by restarts
        self.proxy_sock: Optional[socket.socket] = None   # until the proxy has it
        self.watchdog: Optional[RemoteWatchdog] = None
        self.faults: Optional[FaultInjector] = None
        self.generation = 0                               # restarts so far

    def start(self, caps: Capabilities, log_dir: str, sock: socket.socket,
              watch: bool, timeout_s: float = LAUNCH_TIMEOUT_S) -> None:
        """Launch the remote on ``sock`` (closed here afterwards), with a
        watchdog if ``watch``."""
        name = f'remote-{self.devid}' + (f'-{self.generation}' if self.generation else '')
        watchdog = None
        try:
            process = remote_process(caps, devid=self.devid, sock=sock, log_dir=log_dir,
                                     drive=self.drive, fmt=self.fmt,
                                     extra_args=self.extra_args, name=name)
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

    def socket_role(self) -> str:
        """What the proxy's end of this remote's socket is, for messages
        about a proxy thread waiting on it."""
        process = self.process
        if process is None:
            return f'the socket to remote {self.devid}'
        return f'the socket to {process.name}, {process.state_description()}'

    def stop_watchdog(self) -> None:
        if self.watchdog:
            self.watchdog.stop()

    def proxy_device_arg(self, caps: Capabilities) -> str:
        names = caps.require_multiprocess()
        arg = f'{names.proxy_device},id={self.devid},fd={self.proxy_sock.fileno()}'
        return arg + (f',addr={self.addr}' if self.addr else '')

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None


class MultiprocessVM:
    """A proxy QEMU and its remote device processes, owned as one unit.

    Add remotes and extra arguments, then ``launch()``; ``shutdown()`` (or
    leaving the ``with`` block) stops everything whatever state it is in.
    """

    multiprocess = True

    def __init__(self, caps: Capabilities, log_dir: str, *, accel: str = 'tcg',
                 machine: str = 'pc', memory_mb: int = 256, memory_slots: int = 0,
                 maxmem_mb: Optional[int] = None, smp: int = 1, watchdog: bool = False,
                 cpu: Optional[str] = DEFAULT_CPU):
        if self.multiprocess:
            caps.require_multiprocess()
        if accel not in caps.accelerators:
            raise ParameterError(f"accelerator {accel!r} is not built into QEMU at "
                                 f"{caps.path} (it has {', '.join(caps.accelerators)})")
        if memory_mb < 1:
            raise ParameterError(f"memory_mb={memory_mb}: the guest needs some RAM")
        if memory_slots and (maxmem_mb or 0) <= memory_mb:
            raise ParameterError("memory slots need maxmem_mb larger than memory_mb")
        self.caps = caps
        self.log_dir = log_dir
        self.accel = accel
        self.machine = machine
        self.memory_mb = memory_mb
        self.memory_slots = memory_slots
        self.maxmem_mb = maxmem_mb
        if smp < 1:
            raise ParameterError(f"smp={smp}: the guest needs a vCPU")
        self.smp = smp
        self.watchdog = watchdog          # a RemoteWatchdog on every remote
        # -cpu: 'host' under KVM on VMX/SVM; QEMU's default model under PVM
        # (-cpu host aborts there: "failed to set MSR 0x10a") and TCG.
        self.cpu = qemu_accel.default_cpu(accel) if cpu == DEFAULT_CPU else cpu
        self.remotes: Dict[str, RemoteDevice] = {}
        self.proxy_extra_args: List[str] = []
        self.proxy: Optional[QEMUProcess] = None
        os.makedirs(log_dir, exist_ok=True)

    def __enter__(self) -> 'MultiprocessVM':
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def add_lsi_remote(self, devid: str, drive: Optional[str] = None, fmt: str = 'raw',
                       args: Sequence[str] = (), addr: Optional[str] = None) -> RemoteDevice:
        """Declare a remote process serving an LSI 53C895A with ``drive``
        as its disk; ``args`` are extra arguments for that remote."""
        if self.proxy:
            raise HarnessError("add remotes before launch(); hot-plug is a separate step")
        if devid in self.remotes:
            raise ParameterError(f"there already is a remote device {devid!r}")
        _check_drive(drive, fmt)
        remote = RemoteDevice(devid, drive, fmt, args, addr)
        self.remotes[devid] = remote
        return remote

    def add_proxy_args(self, *args: str) -> None:
        if self.proxy:
            raise HarnessError("proxy arguments must be added before launch()")
        self.proxy_extra_args.extend(args)

    def remote(self, devid: str) -> QEMUProcess:
        return self.remotes[devid].process

    def device_process(self, devid: str) -> QEMUProcess:
        """The process that emulates device ``devid``: its remote."""
        return self.remote(devid)

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

    def device_args(self) -> List[str]:
        """How the guest-facing QEMU reaches each LSI: a proxy device."""
        args = []
        for remote in self.remotes.values():
            args += ['-device', remote.proxy_device_arg(self.caps)]
        return args

    def proxy_args(self) -> List[str]:
        args = ['-accel', self.accel, '-machine', self.machine, '-smp', str(self.smp),
                '-nodefaults', '-display', 'none', *self.caps.firmware_args,
                *self._memory_args()]
        if self.cpu:
            args += ['-cpu', self.cpu]
        return args + self.device_args() + self.proxy_extra_args

    def launch(self, timeout_s: float = LAUNCH_TIMEOUT_S) -> None:
        """Start every remote, then the proxy (``timeout_s`` each to answer
        QMP).  On failure, everything started so far is stopped before the
        error propagates."""
        if not self.remotes:
            raise HarnessError("a multi-process VM needs at least one remote device")
        try:
            for remote in self.remotes.values():
                remote.proxy_sock, remote_sock = socket.socketpair(socket.AF_UNIX,
                                                                   socket.SOCK_STREAM)
                remote.start(self.caps, self.log_dir, remote_sock, self.watchdog, timeout_s)
            self.proxy = QEMUProcess(self.caps.path, self.proxy_args(), name='proxy',
                                     log_dir=self.log_dir,
                                     pass_fds=[r.proxy_sock.fileno()
                                               for r in self.remotes.values()],
                                     fd_roles={r.proxy_sock.fileno(): r.socket_role
                                               for r in self.remotes.values()})
            self.proxy.launch(timeout_s)
        except BaseException:
            self.shutdown()
            raise
        finally:
            self._close_proxy_socks()

    def _close_proxy_socks(self) -> None:
        for remote in self.remotes.values():
            if remote.proxy_sock:
                remote.proxy_sock.close()
                remote.proxy_sock = None

    def processes(self) -> List[QEMUProcess]:
        procs = [self.proxy] if self.proxy else []
        return procs + [p for r in self.remotes.values() for p in r.past + [r.process] if p]

    def restart_remote(self, devid: str, timeout_s: float = HOTPLUG_TIMEOUT_S) -> RemoteDevice:
        """Replace a (dead or alive) remote with a fresh one on the same
        disk: unplug its proxy device (the guest's ACPI hot-plug must
        complete it), start a new remote, hand the proxy its socket end
        with QMP getfd and hot-plug a new proxy device with the same id."""
        remote = self.remotes[devid]
        names = self.caps.require_multiprocess()
        self.proxy.qmp('device_del', id=devid)
        self.proxy.get_event('DEVICE_DELETED', timeout_s)   # the guest let it go
        remote.stop_watchdog()
        if remote.process:
            remote.process.shutdown()
            remote.past.append(remote.process)
        remote.generation += 1
        proxy_end, remote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            remote.start(self.caps, self.log_dir, remote_end, self.watchdog)
            fdname = f'{devid}-sock-{remote.generation}'
            self.proxy.send_fd(proxy_end.fileno(), fdname)
        finally:
            proxy_end.close()      # the proxy holds its copy now
        args = {'driver': names.proxy_device, 'id': devid, 'fd': fdname}
        if remote.addr:
            args['addr'] = remote.addr
        self.proxy.qmp('device_add', **args)
        return remote

    def shutdown(self) -> Dict[str, str]:
        """Stop the proxy, then the remotes (which normally exit on their
        own once the proxy is gone).  Returns how each process ended."""
        ended, errors = {}, []
        for remote in self.remotes.values():
            try:
                remote.stop_watchdog()
            except Exception as err:  # pylint: disable=broad-except
                errors.append(err)
        # A SIGSTOPped remote would keep the proxy's vCPU waiting for a
        # reply and make the quit slow; wake the remotes first.
        for remote in self.remotes.values():
            if remote.process and remote.process.is_running():
                remote.process.send_signal(signal.SIGCONT)
        for process in self.processes():
            if process is not self.proxy:
                process.wait_exit(REMOTE_SELF_EXIT_S)
            try:
                ended[process.name] = process.shutdown()
            except Exception as err:  # pylint: disable=broad-except
                errors.append(err)
        self._close_proxy_socks()
        if errors:
            raise errors[0]
        return ended


class ControlVM(MultiprocessVM):
    """The same machine with each LSI emulated inside the guest's QEMU.

    A control for the multi-process tests: same memory set-up, same
    devices, same guest, so a failure seen only with MultiprocessVM points
    at the multi-process path rather than at the image or the test.  Its
    single QEMU is ``proxy`` (the guest-facing process) and it has no
    remote processes.
    """

    multiprocess = False

    def device_args(self) -> List[str]:
        args = []
        for remote in self.remotes.values():
            args += lsi_device_args(remote.devid, remote.drive, remote.fmt, remote.addr)
        return args

    def remote(self, devid: str) -> QEMUProcess:
        raise HarnessError(f"{devid} is emulated inside the control VM: it has no remote process")

    def device_process(self, devid: str) -> QEMUProcess:
        if devid not in self.remotes:
            raise HarnessError(f"the control VM has no device {devid!r}")
        return self.proxy

    def launch(self, timeout_s: float = LAUNCH_TIMEOUT_S) -> None:
        if not self.remotes:
            raise HarnessError("the control VM needs at least one LSI device")
        self.proxy = QEMUProcess(self.caps.path, self.proxy_args(), name='vm',
                                 log_dir=self.log_dir)
        self.proxy.launch(timeout_s)
