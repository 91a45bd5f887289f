"""Disk IO workloads inside a guest, driven over SSH, checked on the host.

The guest side is ``lsi-dio`` (tests/images/tools/lsi-dio.c, built into
the ``tiny`` image and thus into ``lsi-boot``).  It runs the same
write/read/verify workloads on one of two paths and prints one JSON object:

``polled``  (TCG) it drives the LSI 53C895A itself with polled SCRIPTS from
            user space: the proxy cannot deliver the LSI's INTx without KVM
            irqfds, so Linux's sym53c8xx cannot run, but config space, BAR
            accesses and DMA all go through the proxy and the remote.
``driver``  (KVM) sym53c8xx is loaded and the tool reads and writes the
            SCSI disk's block device (O_DIRECT or buffered), or a file on a
            filesystem made on it.

Data is a pattern the host can compute (:func:`pattern`): the 512-byte
unit at absolute LBA L depends on the seed and on L, so a byte landing in
the wrong place, a stale block or a single flipped byte is caught, both by
the guest when it reads back and by the host against the disk image file
(:func:`check_image`).  harness/tools/diskio_bench.py runs the workloads
through the remote and the in-process LSI for figures.
"""

import dataclasses
import json
import shlex
import struct
import time
from typing import Dict, Optional

from ..base.errors import HarnessError, Timeout
from ..base.hosttools import run_tool
from ..base.units import KIB
from ..base.waiting import wait_until
from ..mpqemu import topology
from .ssh import CommandTimeout, GuestSSH

SECTOR_BYTES = 512
TOOL = '/usr/bin/lsi-dio'
PATH_POLLED = 'polled'
PATH_DRIVER = 'driver'
# Exit statuses of lsi-dio (see its header comment).
EXIT_OK, EXIT_MISMATCH, EXIT_DEVICE, EXIT_USAGE, EXIT_GONE, EXIT_TIMEOUT = range(6)
DEFAULT_CMD_TIMEOUT_S = 10.0
MCOPY_TIMEOUT_S = 60.0
# Host margin over the tool's own deadline before the SSH command is given up.
SSH_MARGIN_S = 15.0
BACKGROUND_POLL_S = 0.2
SCSI_DISK_POLL_S = 1.0
RESULT_DIR = '/tmp/lsi-dio'
U64 = (1 << 64) - 1


class DiskIOError(HarnessError):
    """A disk IO workload could not be run or its result not read."""


class DiskIOTimeout(DiskIOError, Timeout):
    """The guest's disk, or a background workload's result, did not come in time."""


# ---------------------------------------------------------------- pattern

def _splitmix64(state: int):
    while True:
        state = (state + 0x9e3779b97f4a7c15) & U64
        z = state
        z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & U64
        z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & U64
        yield z ^ (z >> 31)


def pattern(seed: int, lba: int, blocks: int) -> bytes:
    """What lsi-dio writes at ``lba`` (512-byte units) for ``blocks``:
    word i of unit L is base[i] ^ (L if i is even else ~seed), base being
    splitmix64 seeded with ``seed``."""
    gen = _splitmix64(seed & U64)
    base = struct.pack('<64Q', *(next(gen) for _ in range(SECTOR_BYTES // 8)))
    not_seed = ~seed & U64
    mix = b''.join(struct.pack('<QQ', (lba + i) & U64, not_seed) * 32 for i in range(blocks))
    value = int.from_bytes(base * blocks, 'little') ^ int.from_bytes(mix, 'little')
    return value.to_bytes(blocks * SECTOR_BYTES, 'little')


@dataclasses.dataclass(frozen=True)
class Mismatch:
    offset: int          # byte offset in the disk (or file) of the first difference
    got: int
    expected: int
    count: int           # differing bytes

    def __str__(self) -> str:
        return (f"{self.count} byte(s) differ, first at offset {self.offset} (LBA "
                f"{self.offset // SECTOR_BYTES}): got {self.got:#04x}, expected "
                f"{self.expected:#04x}")


def compare(actual: bytes, expected: bytes, base_offset: int = 0) -> Optional[Mismatch]:
    if actual == expected:
        return None
    if len(actual) != len(expected):
        return Mismatch(base_offset + min(len(actual), len(expected)), -1, -1,
                        abs(len(actual) - len(expected)))
    diffs = [i for i, (a, b) in enumerate(zip(actual, expected)) if a != b]
    return Mismatch(base_offset + diffs[0], actual[diffs[0]], expected[diffs[0]], len(diffs))


def check_image(path: str, seed: int, lba: int, blocks: int,
                image_offset: int = 0) -> Optional[Mismatch]:
    """None if the image file holds the pattern at ``lba``..``lba+blocks``
    (``image_offset``: where LBA 0 of the pattern is in the file, e.g. a
    file's first byte when it was extracted from a filesystem)."""
    with open(path, 'rb') as f:
        f.seek(image_offset + lba * SECTOR_BYTES)
        data = f.read(blocks * SECTOR_BYTES)
    return compare(data, pattern(seed, lba, blocks), lba * SECTOR_BYTES)


def flip_byte(path: str, offset: int, mask: int = 0xff) -> int:
    """XOR one byte of a disk image file (the remote reads the file
    through the host's page cache, so its next read sees it); returns the
    new value."""
    with open(path, 'r+b') as f:
        f.seek(offset)
        old = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([old ^ mask]))
    return old ^ mask


# ---------------------------------------------------------------- results

@dataclasses.dataclass
class Workload:
    """One lsi-dio invocation."""
    op: str = 'verify'              # write | read | verify | info
    lba: int = 0
    blocks: int = 2048
    bs: int = 65536
    order: str = 'seq'              # seq | rand
    seed: int = 1
    passes: int = 1
    regs: str = 'mmio'              # polled path: mmio | io
    node: Optional[int] = None
    # Pin the tool to this guest CPU: a vCPU blocked in an access to a hung
    # remote stalls everything that CPU runs, interrupts routed to it
    # included (the NIC's land on CPU 0), so fault scenarios keep the IO
    # off the CPU that serves SSH.
    cpu: Optional[int] = None
    cmd_timeout_s: float = DEFAULT_CMD_TIMEOUT_S
    deadline_s: Optional[float] = None

    @property
    def bytes(self) -> int:
        return self.blocks * SECTOR_BYTES

    def name(self) -> str:
        return f'{self.op}-{self.order}-{self.bs // KIB}k'


@dataclasses.dataclass
class Result:
    report: dict
    exit_status: int
    stderr: str
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return self.exit_status == EXIT_OK and bool(self.report.get('ok'))

    @property
    def status(self) -> str:
        return self.report.get('status', f'exit {self.exit_status}')

    @property
    def error(self) -> Optional[str]:
        return self.report.get('error')

    def phase(self, name: str, pass_: int = 0) -> dict:
        for p in self.report.get('phases', []):
            if p['name'] == name and p['pass'] == pass_:
                return p
        raise DiskIOError(f"lsi-dio reported no {name} phase (pass {pass_}): {self.report}")

    def first_mismatch(self) -> Optional[dict]:
        for p in self.report.get('phases', []):
            if p.get('first_mismatch'):
                return p['first_mismatch']
        return None

    def figures(self) -> Dict[str, dict]:
        """Per phase: MB/s over device time, per-command latency (µs)."""
        out = {}
        for p in self.report.get('phases', []):
            key = p['name'] if p['pass'] == 0 else f"{p['name']}{p['pass']}"
            out[key] = {'mb_s': p['mb_s'], 'lat_p50_us': p['lat_us']['p50'],
                        'lat_p90_us': p['lat_us']['p90'], 'lat_max_us': p['lat_us']['max'],
                        'commands': p['commands']}
        return out


def parse_output(stdout: str, exit_status: int, stderr: str, elapsed_s: float) -> Result:
    """The tool prints exactly one JSON object on stdout, whatever happens."""
    lines = [line for line in stdout.splitlines() if line.startswith('{')]
    if not lines:
        raise DiskIOError(f"lsi-dio printed no JSON (exit {exit_status}); stdout "
                          f"{stdout[-500:]!r}, stderr {stderr[-500:]!r}")
    try:
        report = json.loads(lines[-1])
    except json.JSONDecodeError as err:
        raise DiskIOError(f"lsi-dio printed bad JSON ({err}): {lines[-1][:500]!r}") from None
    return Result(report, exit_status, stderr, elapsed_s)


# ---------------------------------------------------------------- the guest

def path_for(accel: str, placement: str) -> str:
    """The path disk IO takes in a guest whose LSI is placed at ``placement``
    (harness/mpqemu/topology.py): ``driver`` (Linux's sym53c8xx) where it
    can run, ``polled`` elsewhere.  sym53c8xx needs the LSI's INTx, which
    x-pci-proxy-dev delivers only through KVM irqfds, and SCRIPTS that run
    from the chip's own RAM, which over vfio-user they do not (known issue
    vfio-user-device-dma-misses-its-own-bar).  The in-process control takes
    the proxy's path, so that the two compare like for like."""
    if placement == topology.VFIO_USER:
        return PATH_POLLED
    return PATH_DRIVER if accel == 'kvm' else PATH_POLLED


class GuestDiskIO:
    """lsi-dio in one guest, on the path the accelerator allows.

    ``dev``: for the driver path, the block device or file to work on
    (``find_scsi_disk`` finds the LSI's disk); ``direct``: O_DIRECT.
    """

    def __init__(self, ssh: GuestSSH, path: str = PATH_POLLED, dev: Optional[str] = None,
                 direct: bool = True, tool: str = TOOL):
        if path not in (PATH_POLLED, PATH_DRIVER):
            raise DiskIOError(f"unknown disk IO path {path!r}")
        if path == PATH_DRIVER and not dev:
            raise DiskIOError("the driver path needs a block device or file (dev=...)")
        self.ssh = ssh
        self.path = path
        self.dev = dev
        self.direct = direct
        self.tool = tool

    def command(self, w: Workload) -> str:
        argv = [self.tool, w.op, '--lba', str(w.lba), '--blocks', str(w.blocks),
                '--bs', str(w.bs), '--order', w.order, '--seed', str(w.seed),
                '--passes', str(w.passes), '--cmd-timeout', f'{w.cmd_timeout_s:g}']
        if w.deadline_s:
            argv += ['--deadline', f'{w.deadline_s:g}']
        if w.node is not None:
            argv += ['--node', str(w.node)]
        if self.path == PATH_POLLED:
            argv += ['--regs', w.regs]
        else:
            argv += ['--dev', self.dev] + (['--direct'] if self.direct else [])
        if w.cpu is not None:
            argv = ['taskset', f'{1 << w.cpu:x}'] + argv
        return shlex.join(argv)

    def _timeout(self, w: Workload, timeout_s: Optional[float]) -> float:
        if timeout_s:
            return timeout_s
        return (w.deadline_s or 120.0) + SSH_MARGIN_S

    def run(self, w: Workload, timeout_s: Optional[float] = None) -> Result:
        """Run ``w`` to completion (or to the tool's own error)."""
        r = self.ssh.run(self.command(w), timeout_s=self._timeout(w, timeout_s))
        return parse_output(r.stdout, r.exit_status, r.stderr, r.elapsed_s)

    def info(self) -> dict:
        result = self.run(Workload(op='info'), timeout_s=60)
        if not result.ok:
            raise DiskIOError(f"lsi-dio info failed ({result.status}): {result.error}")
        return result.report

    def start(self, w: Workload, name: str = 'bg') -> 'BackgroundRun':
        """Start ``w`` in the guest's background (for faults injected
        while it runs); the tool's own deadline bounds it."""
        if not w.deadline_s:
            raise DiskIOError("a background workload needs deadline_s: nothing else "
                              "stops it if the device never answers")
        base = f'{RESULT_DIR}/{name}'
        self.ssh.run(f'mkdir -p {RESULT_DIR} && rm -f {base}.*', check=True)
        # The tool outlives the SSH channel; .rc appears once it has finished.
        self.ssh.spawn(f"{self.command(w)} >{base}.json 2>{base}.err; "
                       f"echo $? >{base}.rc.tmp; mv {base}.rc.tmp {base}.rc")
        return BackgroundRun(self.ssh, base, time.monotonic(), w)


class BackgroundRun:
    def __init__(self, ssh: GuestSSH, base: str, started: float, workload: Workload):
        self.ssh = ssh
        self.base = base
        self.started = started
        self.workload = workload

    def done(self, timeout_s: float = 15) -> bool:
        return self.ssh.run(f'test -e {self.base}.rc', timeout_s=timeout_s).ok

    def wait(self, timeout_s: float) -> Result:
        """The result once the tool has exited; DiskIOTimeout past
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s

        def exited() -> bool:
            try:
                return self.done(timeout_s=max(5.0, deadline - time.monotonic()))
            except CommandTimeout:
                return False
        wait_until(exited, timeout_s, f'background lsi-dio ({self.base})', BACKGROUND_POLL_S,
                   error=lambda s: DiskIOTimeout(f"background lsi-dio ({self.base}) still "
                                                 f"running after {s:.0f} s"))
        out = self.ssh.run(f'cat {self.base}.rc; echo ---; cat {self.base}.json; echo ---; '
                           f'cat {self.base}.err', check=True).stdout
        rc, stdout, stderr = (out.split('---\n') + ['', ''])[:3]
        return parse_output(stdout, int(rc.strip()), stderr,
                            time.monotonic() - self.started)


# ---------------------------------------------------------------- driver path

def find_scsi_disk(ssh: GuestSSH, bdf: str, timeout_s: float = 60) -> str:
    """/dev/sdX of the SCSI disk behind the PCI function ``bdf`` (the
    LSI), once sym53c8xx has found it."""
    script = (f'for b in /sys/block/sd*; do [ -e "$b" ] || continue; '
              f'readlink -f "$b/device" | grep -q "/{bdf}/" && echo "${{b##*/}}"; done')

    def disk() -> Optional[str]:
        names = ssh.run(script, check=True).stdout.split()
        return f'/dev/{names[0]}' if names else None
    return wait_until(disk, timeout_s, f'a SCSI disk under {bdf}', SCSI_DISK_POLL_S,
                      error=lambda s: DiskIOTimeout(
                          f"no SCSI disk under {bdf} within {s:.0f} s: is sym53c8xx loaded "
                          f"(mpqemu.sym53c8xx=1), and does the accelerator deliver the "
                          f"LSI's interrupts?"))


def make_vfat(ssh: GuestSSH, dev: str, mountpoint: str = '/mnt/dio') -> str:
    """A FAT filesystem on the whole of ``dev``, mounted: busybox has
    mkdosfs, and the host reads FAT with mtools (no root, no loop)."""
    ssh.run(f'mkdosfs -n DIO {dev} && mkdir -p {mountpoint} && '
            f'mount -t vfat {dev} {mountpoint}', check=True, timeout_s=60)
    return mountpoint


def extract_from_vfat(image: str, name: str, dest: str, image_offset: int = 0) -> str:
    """Copy ``name`` out of a FAT filesystem in a disk image (mtools)."""
    spec = f'{image}@@{image_offset}' if image_offset else image
    run_tool(['mcopy', '-n', '-o', '-i', spec, f'::{name}', dest], 'apt-get install mtools',
             DiskIOError, MCOPY_TIMEOUT_S, what=f'mcopy of {name} from {image}')
    return dest


def guest_disk_io(ssh: GuestSSH, path: str, direct: bool = True) -> GuestDiskIO:
    """Disk IO on ``path`` (see :func:`path_for`): polled SCRIPTS, or the
    driver's block device (found under the LSI's PCI function)."""
    if path == PATH_POLLED:
        return GuestDiskIO(ssh, PATH_POLLED)
    from .pci import find_device
    lsi = find_device(ssh, 0x1000, 0x0012)
    return GuestDiskIO(ssh, PATH_DRIVER, dev=find_scsi_disk(ssh, lsi.address), direct=direct)
