"""A guest booted in a VM of ours and reached over SSH.

``GuestSession`` adds what a guest needs to the guest-facing QEMU (serial
console to a file, user-mode NIC forwarding a free host port to the guest's
SSH, an RNG, and for ``-kernel`` images the kernel, initrd and command line),
then waits for the console's ready marker and for SSH, recording both
times.  It does not own the VM: the topology does.
"""

import contextlib
import dataclasses
import os
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from ..base import deadlines
from ..base.errors import HarnessError
from ..base.hosttools import run_tool
from ..qemu.process import QEMUProcess
from . import diagnosis
from .console import (DEFAULT_FAILURE_PATTERNS, FIRMWARE_FAILURE_PATTERNS, Console, ConsoleError,
                      ConsoleFailure, FirmwareLog)
from ..images.image import GuestImage, ImageError, prepare_boot_disk
from .ssh import GuestSSH, SSHError, connect_to_image, hostfwd_port
from .symbols import kernel_symbols

BOOT_TIMEOUT_S = deadlines.BOOT_S
SSH_TIMEOUT_S = deadlines.SSH_LOGIN_S
QEMU_IMG_TIMEOUT_S = 30.0
NETDEV_ID = 'net0'
GUEST_SSH_PORT = 22


def boot_drive(image: GuestImage, workdir: str,
               load_sym53c8xx: bool) -> Tuple[Optional[str], str]:
    """A private, writable boot disk for one run of ``image`` and its format
    (None for a ``-kernel`` image): a copy with this run's kernel command
    line for our syslinux disks, a qcow2 overlay for a user-supplied disk."""
    if not image.disk:
        return None, 'raw'
    if image.manifest:
        return prepare_boot_disk(image, os.path.join(workdir, f'{image.name}-boot.raw'),
                                 load_sym53c8xx=load_sym53c8xx), 'raw'
    overlay = os.path.join(workdir, f'{image.name}-overlay.qcow2')
    run_tool(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', image.disk_format,
              '-b', os.path.abspath(image.disk), overlay],
             'apt-get install qemu-utils', ImageError, QEMU_IMG_TIMEOUT_S,
             what=f'making an overlay of {image.disk}')
    return overlay, 'qcow2'


class BootFailure(HarnessError, AssertionError):
    """The guest did not come up; the message holds the diagnosis.  An
    AssertionError too: the system under test failed (a FAIL, not an
    ERROR of the harness)."""


@contextlib.contextmanager
def diagnosed(diagnose: Optional[Callable[[Exception], str]], what: str) -> Iterator[None]:
    """Around a boot wait: a console or SSH failure becomes a BootFailure
    carrying ``diagnose(error)`` (harness/guest/diagnosis.py), when there is one."""
    try:
        yield
    except (ConsoleError, SSHError) as err:
        if not diagnose:
            raise
        raise BootFailure(f"{what} did not come up: {diagnose(err)}") from err


@dataclasses.dataclass
class BootTimes:
    launched_at: float
    marker_s: Optional[float] = None      # launch → console ready marker
    ssh_s: Optional[float] = None         # launch → first SSH session


def network_args() -> List[str]:
    """The guest's NIC on user-mode networking with SSH forwarded from
    127.0.0.1, and the RNG that seeds its CRNG at once (dropbear waits for
    it).  hostfwd port 0: the host picks a free port (race-free,
    parallel-safe); ``info usernet`` tells which.  virtio-net: its link is
    up at once (an e1000 probes its EEPROM for ~1 s under TCG and then
    negotiates); romfile= keeps SeaBIOS from running iPXE."""
    return ['-netdev', f'user,id={NETDEV_ID},hostfwd=tcp:127.0.0.1:0-:{GUEST_SSH_PORT}',
            '-device', f'virtio-net-pci,netdev={NETDEV_ID},romfile=',
            '-device', 'virtio-rng-pci']


class GuestSession:
    """Console, network and SSH of one guest boot."""

    def __init__(self, image: GuestImage, log_dir: str, *, load_sym53c8xx: bool = False):
        self.image = image
        self.load_sym53c8xx = load_sym53c8xx
        self.console = Console(os.path.join(log_dir, 'console.log'))
        self.firmware = FirmwareLog(os.path.join(log_dir, 'firmware.log'))
        # Called with the error when a boot fails; returns the diagnosis
        # for the message (harness/guest/diagnosis.py; set by whoever owns the VM).
        self.diagnose: Optional[Callable[[Exception], str]] = None
        self.ssh: Optional[GuestSSH] = None
        self.port: Optional[int] = None
        self.times: Optional[BootTimes] = None
        self.symbols: Optional[str] = None     # see read_kernel_symbols()

    @property
    def ready_marker(self) -> Optional[str]:
        return self.image.ready_marker

    def qemu_args(self) -> List[str]:
        """Arguments for the guest-facing QEMU."""
        args = self.console.qemu_args() + self.firmware.qemu_args()
        args += network_args()
        if self.image.kernel:
            args += ['-kernel', self.image.kernel,
                     '-append', self.image.boot_append(self.load_sym53c8xx)]
            if self.image.initrd:
                args += ['-initrd', self.image.initrd]
        return args

    def boot(self, vm) -> GuestSSH:
        """Launch machine ``vm`` (harness/mpqemu/topology.py) with this
        guest, wait for it and log in; ``vm.guest`` is this session from
        then on, and a boot that fails says why (harness/guest/diagnosis.py)."""
        self.diagnose = lambda err: str(diagnosis.boot_failure(vm, self, err))
        vm.guest = self
        vm.add_args(*self.qemu_args())
        vm.launch()
        return self.wait_ready(vm.qemu)

    def wait_ready(self, qemu: QEMUProcess, timeout_s: float = BOOT_TIMEOUT_S) -> GuestSSH:
        """Wait for the ready marker (if the image has one), then SSH.
        Times count from the launch of ``qemu``."""
        self.port = hostfwd_port(qemu.hmp('info usernet'), GUEST_SSH_PORT)
        return self._wait_boot(qemu, qemu.launched_at or time.monotonic(), 0, timeout_s)

    def wait_rebooted(self, qemu: QEMUProcess, since: int,
                      timeout_s: float = BOOT_TIMEOUT_S) -> GuestSSH:
        """After a reset of ``qemu``: drop the old SSH connection, wait for
        the ready marker written after console offset ``since`` (take
        ``console.mark()`` before the reset), then log in again.  Times in
        ``self.times`` count from this call."""
        self.close()
        return self._wait_boot(qemu, time.monotonic(), since, timeout_s)

    def _wait_boot(self, qemu: QEMUProcess, started: float, since: int,
                   timeout_s: float) -> GuestSSH:
        with diagnosed(self.diagnose, 'the guest'):
            return self._wait_boot_steps(qemu, started, since, timeout_s)

    def _wait_boot_steps(self, qemu: QEMUProcess, started: float, since: int,
                         timeout_s: float) -> GuestSSH:
        self.times = BootTimes(started)
        firmware_since = self.firmware.mark() if since else 0
        if self.image.ready_marker:
            failures = [self.image.failure_marker] if self.image.failure_marker else []
            self.console.wait_for(self.image.ready_marker,
                                  failure_patterns=list(DEFAULT_FAILURE_PATTERNS) + failures,
                                  timeout_s=max(0.0, started + timeout_s - time.monotonic()),
                                  since=since, alive=qemu.is_running,
                                  other_failures=[(self.firmware, firmware_since,
                                                   FIRMWARE_FAILURE_PATTERNS)])
            self.times.marker_s = time.monotonic() - started
            ssh_timeout_s = SSH_TIMEOUT_S
        else:                 # no marker to wait for: the whole boot is the SSH wait
            ssh_timeout_s = max(0.0, started + timeout_s - time.monotonic()) + SSH_TIMEOUT_S
        try:
            self.ssh = connect_to_image(
                self.image, '127.0.0.1', self.port,
                timeout_s=deadlines.cap(ssh_timeout_s, 'SSH login'),
                alive=lambda: (qemu.is_running() and not self.firmware.first_match(
                    FIRMWARE_FAILURE_PATTERNS, firmware_since)))
        except SSHError:
            gave_up = self.firmware.first_match(FIRMWARE_FAILURE_PATTERNS, firmware_since)
            if gave_up:
                raise ConsoleFailure(f"{self.firmware.path} showed {gave_up!r} while "
                                     f"waiting for SSH", self.console, gave_up) from None
            raise
        self.times.ssh_s = time.monotonic() - started
        return self.ssh

    def read_kernel_symbols(self) -> Optional[str]:
        """Find (cached) or read the guest kernel's symbols while the guest
        answers, so that a later stall can be named (harness/qemu/vcpus.py)."""
        self.symbols = kernel_symbols(self.ssh)
        return self.symbols

    def figures(self) -> Dict[str, float]:
        if not self.times:
            return {}
        out = {}
        if self.times.marker_s is not None:
            out['boot_to_marker_s'] = round(self.times.marker_s, 3)
        if self.times.ssh_s is not None:
            out['boot_to_ssh_s'] = round(self.times.ssh_s, 3)
        return out

    def close(self) -> None:
        if self.ssh:
            self.ssh.close()
            self.ssh = None

