"""Decide which accelerator a test can really use, for the guest it boots.

A compiled-in accelerator is not a usable one, and "KVM works" depends on
the guest.  Two kinds of guest matter here (``GUESTS``):

``linux``
    a paging OS.  Needs KVM on a VMX/SVM host.  The PVM flavour of KVM (no
    VMX/SVM in /proc/cpuinfo, /sys/module/kvm_pvm) cannot run it: QEMU
    aborts with ``-cpu host`` ("failed to set MSR 0x10a") and a stock
    kernel hangs once it enables paging.  KVM counts as usable only when a
    probe VM (a 64 KiB firmware of our own that exits through
    ``isa-debug-exit``) runs with ``-cpu host``.
``agent``
    the bare-metal agent (tests/images/agent): no paging, so it runs under
    VMX/SVM KVM and under PVM, whose instruction emulator executes unpaged
    guest code.  KVM counts as usable when the agent itself boots under it
    (SeaBIOS, then the agent, to its ready point) and exits with the probe
    status.

Results are cached per binary, guest kind and boot of the host.
"""

import dataclasses
import json
import logging
import os
import subprocess
from typing import Optional

from ..base import lifeline, paths
from ..images import agent as agent_build
from ..base.errors import AccelError
from ..base.units import KIB
from . import binary as qemu_binary

LOG = logging.getLogger(__name__)

GUESTS = ('linux', 'agent')
PROBE_VM_TIMEOUT_S = 15.0
# SeaBIOS's POST alone takes 4-5 s in PVM's instruction emulator.
AGENT_PROBE_TIMEOUT_S = 60.0
DEBUG_EXIT_PORT = 0xf4
DEBUG_EXIT_VALUE = 0x31
# isa-debug-exit makes QEMU exit with (value << 1) | 1.
PROBE_VM_EXIT_STATUS = (DEBUG_EXIT_VALUE << 1) | 1
AGENT_PROBE_ARG = 'agent.probe'        # the agent exits with DEBUG_EXIT_VALUE once ready
BIOS_SIZE = 64 * KIB
RESET_VECTOR_OFFSET = BIOS_SIZE - 16


@dataclasses.dataclass(frozen=True)
class AccelChoice:
    name: str                 # 'kvm' or 'tcg'
    reason: str               # why this one (shown in logs and whiteboards)
    cpu: Optional[str] = None  # the -cpu model to give QEMU (None: its default)


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


def kvm_device_problem() -> Optional[str]:
    """Why this user cannot open /dev/kvm at all, or None."""
    if not os.path.exists('/dev/kvm'):
        return "/dev/kvm does not exist (no KVM module loaded or no hardware virtualization)"
    if not os.access('/dev/kvm', os.R_OK | os.W_OK):
        return "/dev/kvm is not readable and writable by this user (add it to the kvm group)"
    return None


def host_kvm_problem() -> Optional[str]:
    """Why this host's KVM cannot run paging guests (Linux), or None."""
    problem = kvm_device_problem()
    if problem:
        return problem
    if os.path.exists('/sys/module/kvm_pvm'):
        return ("this host's KVM is the PVM flavour (/sys/module/kvm_pvm exists): it runs "
                "only guests without paging; QEMU aborts with -cpu host and Linux hangs "
                "(Linux guests need KVM on a VMX/SVM host)")
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            flags = next((line for line in f if line.startswith('flags')), '')
    except OSError:
        flags = ''
    if flags and not ({'vmx', 'svm'} & set(flags.split())):
        return "the CPU exposes neither vmx nor svm, so KVM has no hardware virtualization"
    return None


def default_cpu(accel: str) -> Optional[str]:
    """The -cpu model for ``accel``: 'host' under KVM on a VMX/SVM host,
    QEMU's default elsewhere (TCG, and PVM, where -cpu host aborts)."""
    return 'host' if accel == 'kvm' and host_kvm_problem() is None else None


def _run_probe(cmd, expected: int, what: str, timeout_s: float) -> Optional[str]:
    try:
        result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, timeout=timeout_s,
                                preexec_fn=lifeline.preexec(), check=False)
    except subprocess.TimeoutExpired:
        return f"the {what} did not get to its exit within {timeout_s:.0f} s"
    if result.returncode == expected:
        return None
    return (f"the {what} exited with {result.returncode} instead of {expected}: "
            f"{result.stderr.strip()[-300:]}")


def run_probe_vm(qemu: str, accel: str, firmware_args=()) -> Optional[str]:
    """Boot the probe VM under ``accel``; None if it ran, else why not."""
    cmd = [qemu, '-accel', accel, '-machine', 'pc', '-nodefaults', '-display', 'none',
           '-monitor', 'none', '-serial', 'none', *firmware_args,
           '-bios', _probe_firmware(),
           '-device', f'isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=1']
    if accel == 'kvm':
        cmd += ['-cpu', 'host']
    return _run_probe(cmd, PROBE_VM_EXIT_STATUS, f'{accel} probe VM', PROBE_VM_TIMEOUT_S)


def run_agent_probe(qemu: str, accel: str, firmware_args=()) -> Optional[str]:
    """Boot the agent under ``accel`` to its ready point; None if it got
    there, else why not."""
    cmd = [qemu, '-accel', accel, '-machine', 'pc', '-m', '64', '-nodefaults',
           '-display', 'none', '-monitor', 'none', '-serial', 'none', *firmware_args,
           *agent_build.firmware_args('qboot'),
           '-kernel', agent_build.agent_elf(), '-append', AGENT_PROBE_ARG,
           '-device', f'isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=1']
    cpu = default_cpu(accel)
    if cpu:
        cmd += ['-cpu', cpu]
    return _run_probe(cmd, PROBE_VM_EXIT_STATUS, f'agent probe under {accel}',
                      AGENT_PROBE_TIMEOUT_S)


def _boot_id() -> str:
    try:
        with open('/proc/sys/kernel/random/boot_id', encoding='utf-8') as f:
            return f.read().strip()
    except OSError:
        return 'unknown'


def kvm_problem(caps: qemu_binary.Capabilities, guest: str = 'linux',
                use_cache: bool = True) -> Optional[str]:
    """Why KVM cannot run a ``guest`` guest with this binary here, or None."""
    if guest not in GUESTS:
        raise AccelError(f"unknown guest kind {guest!r}: one of {', '.join(GUESTS)}")
    if 'kvm' not in caps.accelerators:
        return f"QEMU at {caps.path} was built without KVM support"
    problem = host_kvm_problem() if guest == 'linux' else kvm_device_problem()
    if problem:
        return problem
    key = qemu_binary.binary_key(caps.path)
    if guest == 'agent':
        key += f'-agent-{agent_build.cache_key()}'
    cache_file = os.path.join(paths.cache_dir('accel-probe'), f'kvm-{key}.json')
    if use_cache and os.path.exists(cache_file):
        with open(cache_file, encoding='utf-8') as f:
            cached = json.load(f)
        if cached.get('boot_id') == _boot_id():
            return cached['problem']
    if guest == 'linux':
        problem = run_probe_vm(caps.path, 'kvm', caps.firmware_args)
    else:
        problem = run_agent_probe(caps.path, 'kvm', caps.firmware_args)
    with open(cache_file, 'w', encoding='utf-8') as f:
        json.dump({'boot_id': _boot_id(), 'problem': problem}, f)
    return problem


def select_accel(caps: qemu_binary.Capabilities, requested: str,
                 guest: str = 'linux') -> AccelChoice:
    """Resolve ``auto``/``kvm``/``tcg`` into the accelerator a test that
    boots a ``guest`` guest will use.

    ``kvm`` that cannot run it raises AccelError (the user asked for it);
    ``auto`` falls back to TCG and says why.
    """
    if requested not in ('auto', 'kvm', 'tcg'):
        raise AccelError(f"unknown accelerator {requested!r}: use auto, kvm or tcg")
    if requested == 'tcg':
        if 'tcg' not in caps.accelerators:
            raise AccelError(f"QEMU at {caps.path} was built without TCG")
        return AccelChoice('tcg', 'requested')
    problem = kvm_problem(caps, guest)
    if problem is None:
        cpu = default_cpu('kvm')
        how = 'requested' if requested == 'kvm' else (
            'KVM probe VM ran' if guest == 'linux' else 'the agent booted under KVM')
        if guest == 'agent' and cpu is None:
            how += (" (PVM: the unpaged agent runs in KVM's instruction emulator, so its "
                    "timings are not a VMX/SVM host's)")
        return AccelChoice('kvm', how, cpu)
    if requested == 'kvm':
        raise AccelError(f"accel=kvm requested but KVM cannot run a {guest} guest here: "
                         f"{problem}")
    if 'tcg' not in caps.accelerators:
        raise AccelError(f"KVM is not usable ({problem}) and QEMU at {caps.path} "
                         f"has no TCG to fall back to")
    LOG.info("using TCG for a %s guest: %s", guest, problem)
    return AccelChoice('tcg', f"KVM not usable for a {guest} guest: {problem}")
