"""Find a QEMU system emulator and probe what it can do.

The probe answers, for one binary: its version, whether it was built with
multi-process support and under which names (upstream's ``x-`` names or the
v8 series' originals), which accelerators it was compiled with (qtest
included), and which ``-L`` directories a source-built binary needs to find
Debian's firmware.  Results are cached per binary (path, size, mtime), so
a suite pays for the probe once.

Whether an accelerator is *usable* on this host is a different question,
answered by :mod:`harness.qemu.accel`.
"""

import dataclasses
import hashlib
import json
import logging
import os
import re
import select
import shutil
import subprocess
from typing import List, Optional, Tuple

from ..base import paths
from ..base.hosttools import run_tool
from ..base.errors import QEMUBinaryError

LOG = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 20.0
# Bumped whenever the shape of Capabilities changes, to invalidate caches.
PROBE_FORMAT = 6

# Firmware the proxy's PC machine needs; a binary that cannot find it in
# its own data directories gets Debian's packages' directories with -L.
BIOS_FILE = 'bios-256k.bin'
DEBIAN_FIRMWARE_DIRS = ('/usr/share/seabios', '/usr/share/qemu', '/usr/lib/ipxe/qemu')


@dataclasses.dataclass(frozen=True)
class MultiprocessNames:
    """The spelling of the multi-process pieces in one QEMU generation."""
    flavour: str          # 'upstream' or 'v8'
    machine: str          # the remote process's machine type
    proxy_device: str     # the PCI device in the guest-facing QEMU
    remote_object: str    # binds the remote's device to its socket


VFIO_USER_SERVER = 'x-vfio-user-server'
VFIO_USER_CLIENT = 'vfio-user-pci'
UPSTREAM_NAMES = MultiprocessNames('upstream', 'x-remote', 'x-pci-proxy-dev', 'x-remote-object')
V8_NAMES = MultiprocessNames('v8', 'remote', 'pci-proxy-dev', 'remote-object')


@dataclasses.dataclass(frozen=True)
class Capabilities:
    path: str
    version: Tuple[int, int, int]
    version_string: str
    multiprocess: Optional[MultiprocessNames]
    accelerators: Tuple[str, ...]       # compiled in, not necessarily usable
    data_dirs: Tuple[str, ...]          # what ``-L help`` reports
    firmware_dirs: Tuple[str, ...]      # extra -L directories this binary needs
    vfio_user_server: bool = False      # -object x-vfio-user-server (a remote can serve)
    vfio_user_client: bool = False      # -device vfio-user-pci (QEMU >= 10.1)
    sandbox: bool = False               # -sandbox on: built with seccomp
    runas: bool = False                 # -runas USER (removed in QEMU 9.1)
    run_with_user: bool = False         # -run-with user=USER (QEMU 9.1 and later)

    @property
    def has_qtest(self) -> bool:
        return 'qtest' in self.accelerators

    @property
    def firmware_args(self) -> List[str]:
        args = []
        for directory in self.firmware_dirs:
            args += ['-L', directory]
        return args

    def require_multiprocess(self) -> MultiprocessNames:
        if self.multiprocess is None:
            raise QEMUBinaryError(
                f"QEMU at {self.path} ({self.version_string}) has no multi-process "
                f"support (no x-remote machine, x-pci-proxy-dev device or "
                f"x-remote-object): build it with --enable-multiprocess "
                f"(--enable-mpqemu for the v8 series)")
        return self.multiprocess

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> 'Capabilities':
        names = data['multiprocess']
        return cls(path=data['path'], version=tuple(data['version']),
                   version_string=data['version_string'],
                   multiprocess=MultiprocessNames(**names) if names else None,
                   accelerators=tuple(data['accelerators']),
                   data_dirs=tuple(data['data_dirs']),
                   firmware_dirs=tuple(data['firmware_dirs']),
                   vfio_user_server=data['vfio_user_server'],
                   vfio_user_client=data['vfio_user_client'],
                   sandbox=data['sandbox'], runas=data['runas'],
                   run_with_user=data['run_with_user'])


def find_binary(name_or_path: str) -> str:
    """Absolute path of an executable QEMU, or a QEMUBinaryError that says
    how to get one."""
    if os.sep in name_or_path:
        path = os.path.abspath(name_or_path)
        if not os.path.exists(path):
            raise QEMUBinaryError(f"QEMU binary {path} does not exist; set "
                                  f"qemu_bin/QEMU_BIN to an existing qemu-system-x86_64")
        if not os.access(path, os.X_OK) or os.path.isdir(path):
            raise QEMUBinaryError(f"QEMU binary {path} is not an executable file")
        return path
    found = shutil.which(name_or_path)
    if not found:
        raise QEMUBinaryError(
            f"{name_or_path} is not on $PATH: install it (apt-get install "
            f"qemu-system-x86) or set qemu_bin/QEMU_BIN to a QEMU binary")
    return os.path.abspath(found)


def _run(path: str, *args: str) -> str:
    return run_tool([path, *args], error=QEMUBinaryError, timeout_s=PROBE_TIMEOUT_S)


def _first_words(text: str) -> set:
    return {line.split()[0] for line in text.splitlines() if line.strip()}


def _device_names(text: str) -> set:
    return set(re.findall(r'^name "([^"]+)"', text, re.MULTILINE))


def _detect_multiprocess(machines: set, devices: set, objects: set) -> Optional[MultiprocessNames]:
    for names in (UPSTREAM_NAMES, V8_NAMES):
        if (names.machine in machines and names.proxy_device in devices
                and names.remote_object in objects):
            return names
    return None


def _firmware_dirs(data_dirs) -> Tuple[str, ...]:
    if any(os.path.exists(os.path.join(d, BIOS_FILE)) for d in data_dirs):
        return ()
    extra = tuple(d for d in DEBIAN_FIRMWARE_DIRS if os.path.isdir(d))
    if not any(os.path.exists(os.path.join(d, BIOS_FILE)) for d in extra):
        LOG.warning("no %s for this QEMU: install Debian's seabios and "
                    "qemu-system-data packages", BIOS_FILE)
    return extra


def _answers_qtest(path: str) -> bool:
    """True if QEMU runs with ``-accel qtest`` and answers a qtest command.
    ``-accel help`` never lists qtest (softmmu/vl.c leaves it out as "used
    for tests only"), and Debian's packages lack it ("invalid accelerator
    qtest"), so it has to be tried."""
    cmd = [path, '-accel', 'qtest', '-machine', 'none', '-nodefaults', '-display', 'none',
           '-qtest', 'stdio']
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
    except OSError:
        return False
    try:
        # QEMU keeps running after the answer (and after stdin closes).
        proc.stdin.write(b'endianness\n')
        proc.stdin.flush()
        ready = select.select([proc.stdout], [], [], PROBE_TIMEOUT_S)[0]
        return bool(ready) and proc.stdout.readline().startswith(b'OK')
    except OSError:
        return False
    finally:
        proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            pipe.close()


def _has_sandbox(path: str) -> bool:
    """True if ``-sandbox on`` is accepted.  Every build lists -sandbox in
    its help; one without seccomp refuses it while parsing the options
    ("-sandbox support is not enabled in this QEMU binary",
    system/vl.c), before -version exits."""
    try:
        run_tool([path, '-sandbox', 'on', '-version'], error=QEMUBinaryError,
                 timeout_s=PROBE_TIMEOUT_S)
    except QEMUBinaryError:
        return False
    return True


def _probe_uncached(path: str) -> Capabilities:
    banner = _run(path, '-version')
    match = re.search(r'version (\d+)\.(\d+)\.(\d+)', banner)
    if not match:
        raise QEMUBinaryError(f"{path} does not look like QEMU: -version printed "
                              f"{banner.strip()[:200]!r}")
    version = tuple(int(x) for x in match.groups())
    common = ('-nodefaults', '-display', 'none')
    machines = _first_words(_run(path, *common, '-machine', 'help'))
    devices = _device_names(_run(path, *common, '-device', 'help'))
    objects = _first_words(_run(path, *common, '-object', 'help'))
    accel_out = _run(path, '-accel', 'help').splitlines()
    accelerators = tuple(line.strip() for line in accel_out[1:] if line.strip())
    if 'qtest' not in accelerators and _answers_qtest(path):
        accelerators += ('qtest',)
    usage = _run(path, '-help')
    data_dirs = tuple(os.path.normpath(line.strip())
                      for line in _run(path, '-L', 'help').splitlines() if line.strip())
    return Capabilities(path=path, version=version,
                        version_string=banner.splitlines()[0].strip(),
                        multiprocess=_detect_multiprocess(machines, devices, objects),
                        accelerators=accelerators, data_dirs=data_dirs,
                        firmware_dirs=_firmware_dirs(data_dirs),
                        vfio_user_server=VFIO_USER_SERVER in objects,
                        vfio_user_client=VFIO_USER_CLIENT in devices,
                        sandbox=_has_sandbox(path),
                        runas=bool(re.search(r'^-runas ', usage, re.MULTILINE)),
                        run_with_user=bool(re.search(r'^-run-with .*user=', usage,
                                                     re.MULTILINE)))


def binary_key(path: str) -> str:
    """Cache key of a binary: changes when it is rebuilt or replaced."""
    st = os.stat(path)
    ident = f'{PROBE_FORMAT}:{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}'
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def probe(name_or_path: str, use_cache: bool = True) -> Capabilities:
    """Capabilities of a QEMU binary, from the cache when it is unchanged."""
    path = find_binary(name_or_path)
    cache_file = os.path.join(paths.cache_dir('qemu-probe'), binary_key(path) + '.json')
    if use_cache and os.path.exists(cache_file):
        try:
            with open(cache_file, encoding='utf-8') as f:
                return Capabilities.from_json(json.load(f))
        except (ValueError, KeyError, TypeError):
            LOG.warning("ignoring unreadable probe cache %s", cache_file)
    caps = _probe_uncached(path)
    tmp = cache_file + f'.{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(caps.to_json(), f, indent=2)
    os.replace(tmp, cache_file)
    return caps
