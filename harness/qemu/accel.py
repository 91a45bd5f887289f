"""Decide which accelerator a test can really use.

A compiled-in accelerator is not a usable one: ``/dev/kvm`` may belong to
the PVM flavour of KVM (no VMX/SVM; QEMU aborts with ``-cpu host`` and
stock kernels hang), or to a user without access.  KVM counts as usable
only when a probe VM actually executes guest code with it.

The probe VM runs a 64 KiB firmware of our own: the reset vector writes a
byte to ``isa-debug-exit``, so QEMU exits with a status only reachable if
the vCPU ran.  Results are cached per binary and boot of the host.
"""

import dataclasses
import json
import logging
import os
import subprocess
from typing import Optional

from .. import paths
from ..errors import AccelError
from . import binary as qemu_binary
from .. import lifeline

LOG = logging.getLogger(__name__)

PROBE_VM_TIMEOUT_S = 15.0
DEBUG_EXIT_PORT = 0xf4
DEBUG_EXIT_VALUE = 0x31
# isa-debug-exit makes QEMU exit with (value << 1) | 1.
PROBE_VM_EXIT_STATUS = (DEBUG_EXIT_VALUE << 1) | 1
BIOS_SIZE = 64 * 1024
RESET_VECTOR_OFFSET = BIOS_SIZE - 16


@dataclasses.dataclass(frozen=True)
class AccelChoice:
    name: str                 # 'kvm' or 'tcg'
    reason: str               # why this one (shown in logs and whiteboards)


def _probe_firmware() -> str:
    path = os.path.join(paths.cache_dir('accel-probe'), 'debug-exit.bin')
    if not os.path.exists(path):
        code = bytes([0xb0, DEBUG_EXIT_VALUE,       # mov al, DEBUG_EXIT_VALUE
                      0xe6, DEBUG_EXIT_PORT,        # out DEBUG_EXIT_PORT, al
                      0xf4,                         # hlt
                      0xeb, 0xfd])                  # jmp $-1
        image = bytearray(BIOS_SIZE)
        image[RESET_VECTOR_OFFSET:RESET_VECTOR_OFFSET + len(code)] = code
        tmp = f'{path}.{os.getpid()}'
        with open(tmp, 'wb') as f:
            f.write(image)
        os.replace(tmp, path)
    return path


def host_kvm_problem() -> Optional[str]:
    """Why this host's KVM cannot run stock guests, or None if it may."""
    if not os.path.exists('/dev/kvm'):
        return "/dev/kvm does not exist (no KVM module loaded or no hardware virtualization)"
    if not os.access('/dev/kvm', os.R_OK | os.W_OK):
        return "/dev/kvm is not readable and writable by this user (add it to the kvm group)"
    if os.path.exists('/sys/module/kvm_pvm'):
        return ("this host's KVM is the PVM flavour (/sys/module/kvm_pvm exists): "
                "QEMU aborts with -cpu host and stock kernels hang")
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            flags = next((line for line in f if line.startswith('flags')), '')
    except OSError:
        flags = ''
    if flags and not ({'vmx', 'svm'} & set(flags.split())):
        return "the CPU exposes neither vmx nor svm, so KVM has no hardware virtualization"
    return None


def run_probe_vm(qemu: str, accel: str, firmware_args=()) -> Optional[str]:
    """Boot the probe VM under ``accel``; None if it ran, else why not."""
    cmd = [qemu, '-accel', accel, '-machine', 'pc', '-nodefaults', '-display', 'none',
           '-monitor', 'none', '-serial', 'none', *firmware_args,
           '-bios', _probe_firmware(),
           '-device', f'isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=1']
    if accel == 'kvm':
        cmd += ['-cpu', 'host']
    try:
        result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, timeout=PROBE_VM_TIMEOUT_S,
                                preexec_fn=lifeline.preexec(), check=False)
    except subprocess.TimeoutExpired:
        return f"the {accel} probe VM did not run its firmware within {PROBE_VM_TIMEOUT_S:.0f} s"
    if result.returncode == PROBE_VM_EXIT_STATUS:
        return None
    return (f"the {accel} probe VM exited with {result.returncode} instead of "
            f"{PROBE_VM_EXIT_STATUS}: {result.stderr.strip()[-300:]}")


def _boot_id() -> str:
    try:
        with open('/proc/sys/kernel/random/boot_id', encoding='utf-8') as f:
            return f.read().strip()
    except OSError:
        return 'unknown'


def kvm_problem(caps: qemu_binary.Capabilities, use_cache: bool = True) -> Optional[str]:
    """Why KVM is not usable with this binary on this host, or None."""
    if 'kvm' not in caps.accelerators:
        return f"QEMU at {caps.path} was built without KVM support"
    problem = host_kvm_problem()
    if problem:
        return problem
    key = qemu_binary.binary_key(caps.path)
    cache_file = os.path.join(paths.cache_dir('accel-probe'), f'kvm-{key}.json')
    if use_cache and os.path.exists(cache_file):
        with open(cache_file, encoding='utf-8') as f:
            cached = json.load(f)
        if cached.get('boot_id') == _boot_id():
            return cached['problem']
    problem = run_probe_vm(caps.path, 'kvm', caps.firmware_args)
    with open(cache_file, 'w', encoding='utf-8') as f:
        json.dump({'boot_id': _boot_id(), 'problem': problem}, f)
    return problem


def select_accel(caps: qemu_binary.Capabilities, requested: str) -> AccelChoice:
    """Resolve ``auto``/``kvm``/``tcg`` into the accelerator tests will use.

    ``kvm`` that cannot run raises AccelError (the user asked for it);
    ``auto`` falls back to TCG and says why.
    """
    if requested not in ('auto', 'kvm', 'tcg'):
        raise AccelError(f"unknown accelerator {requested!r}: use auto, kvm or tcg")
    if requested == 'tcg':
        if 'tcg' not in caps.accelerators:
            raise AccelError(f"QEMU at {caps.path} was built without TCG")
        return AccelChoice('tcg', 'requested')
    problem = kvm_problem(caps)
    if problem is None:
        return AccelChoice('kvm', 'requested' if requested == 'kvm' else 'KVM probe VM ran')
    if requested == 'kvm':
        raise AccelError(f"accel=kvm requested but KVM is not usable: {problem}")
    if 'tcg' not in caps.accelerators:
        raise AccelError(f"KVM is not usable ({problem}) and QEMU at {caps.path} "
                         f"has no TCG to fall back to")
    LOG.info("using TCG: %s", problem)
    return AccelChoice('tcg', f"KVM not usable: {problem}")
