"""Test parameters shared by Avocado (``-p key=value``) and pytest/shells
(environment variables).

Each parameter has one lower-case Avocado name and one upper-case
environment name; Avocado wins when both are given, so that
``avocado run -p accel=tcg`` overrides a CI-wide ``ACCEL=kvm``.
"""

import os
from typing import Callable, Dict, Optional

from .errors import ParameterError

ACCEL_CHOICES = ('auto', 'kvm', 'tcg')
CONFINE_CHOICES = ('auto', 'on', 'off')
AGENT_FIRMWARE_CHOICES = ('qboot', 'seabios')     # harness/images/agent.py

# name -> (default, help).  The defaults are what a fresh Debian 12 host
# with the qemu-system-x86 package needs.
PARAMETERS = {
    'qemu_bin': ('qemu-system-x86_64',
                 'QEMU system emulator to test: a path or name on $PATH, or a subject as '
                 'vfio_user_client takes (deb:SUITE, src:QEMU_SRC)'),
    'qemu_src': ('', 'QEMU source to build and test instead of qemu_bin: debian:bookworm, '
                     'debian:trixie, a source tree or a git URL[#ref] (harness/qemu/build.py)'),
    'qemu_deb': ('', 'Debian QEMU package to test instead of qemu_bin: trixie or '
                     'trixie-backports (11.1), run from a cached root (harness/qemu/debroot.py)'),
    'vfio_user_client': ('deb:trixie-backports',
                         'guest-facing QEMU of the vfio-user tests (needs vfio-user-pci): '
                         'deb:SUITE, src:QEMU_SRC or a binary'),
    'vfio_user_server': ('src:debian:trixie+vfio-user-server',
                         'remote QEMU of the vfio-user tests (needs x-vfio-user-server): '
                         'deb:SUITE, src:QEMU_SRC or a binary'),
    'vfio_user_skip': ('', 'why the vfio-user tests do not run here: they cancel with it '
                           '(a matrix variant whose QEMU plays no vfio-user role sets it: '
                           'harness/tools/matrix.py)'),
    'accel': ('auto', 'accelerator: auto (KVM when usable, else TCG), kvm or tcg'),
    'confine_remotes': ('auto', 'remotes run sandboxed (-sandbox) as an unprivileged user: '
                                'auto (where the QEMU and the host allow), on (an error '
                                'where not), off (harness/mpqemu/confinement.py)'),
    'agent_firmware': ('qboot', 'firmware the agent guest boots from: qboot (the agent '
                                'assigns the BARs) or seabios (its whole POST first)'),
    'machine': ('pc', 'machine type of the proxy (guest-facing) QEMU'),
    'memory_mb': ('256', 'guest RAM of the proxy, in MiB'),
    'fuzz_seed': ('1', 'seed of the protocol fuzzer (tests/functional/test_fuzz.py)'),
    'fuzz_messages': ('10000', 'messages the protocol fuzzer sends in one test run'),
    'hostile_cases': ('10000', 'hostile replies the proxy fuzz run sends in one test run '
                               '(tests/functional/test_hostile_remote.py)'),
    'image': ('lsi-boot', 'guest image: a recipe in tests/images, a directory with '
                          'a manifest.json, or a qcow2/raw disk file'),
    'image_user': ('', 'SSH user of a user-supplied image'),
    'image_key': ('', 'SSH private key (OpenSSH format) of a user-supplied image'),
    'image_password': ('', 'SSH password of a user-supplied image'),
}


def get(name: str, lookup: Optional[Callable[[str], Optional[str]]] = None) -> str:
    """Value of parameter ``name``: ``lookup(name)`` (Avocado's params),
    then ``$NAME``, then the default."""
    if name not in PARAMETERS:
        raise ParameterError(f"unknown parameter {name!r}; known: "
                             f"{', '.join(sorted(PARAMETERS))}")
    value = lookup(name) if lookup else None
    if value is None or value == '':
        value = os.environ.get(name.upper())
    if value is None or value == '':
        value = PARAMETERS[name][0]
    return str(value)


def get_optional(name: str, lookup=None) -> Optional[str]:
    """Like get(), with None for a parameter left empty."""
    return get(name, lookup) or None


def get_choice(name: str, choices, lookup=None) -> str:
    """Value of parameter ``name``, which must be one of ``choices``."""
    value = get(name, lookup)
    if value not in choices:
        raise ParameterError(f"{name}={value!r} is not one this suite knows; use one of "
                             f"{', '.join(choices)}")
    return value


def get_accel(lookup=None) -> str:
    return get_choice('accel', ACCEL_CHOICES, lookup)


def get_confine(lookup=None) -> str:
    return get_choice('confine_remotes', CONFINE_CHOICES, lookup)


def get_agent_firmware(lookup=None) -> str:
    return get_choice('agent_firmware', AGENT_FIRMWARE_CHOICES, lookup)


def get_int(name: str, lookup=None, minimum: int = 1) -> int:
    raw = get(name, lookup)
    try:
        value = int(raw, 0)
    except ValueError:
        raise ParameterError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ParameterError(f"{name}={value} is below the minimum {minimum}")
    return value


def of_variant(variant: Optional[dict]) -> Dict[str, str]:
    """{name: value} that an Avocado variant sets (any varianter: each
    ``{'variant': [[node path, [[path, name, value], ...]], ...]}``)."""
    return {name: value for _, leaves in (variant or {}).get('variant') or []
            for _, name, value in leaves}
