"""Which part a QEMU can play in the vfio-user tests, for the matrix.

A vfio-user test (``placement = topology.VFIO_USER``) runs two QEMUs: the
client, the guest's QEMU with ``vfio-user-pci`` (``vfio_user_client``), and
the server, the remote with ``x-vfio-user-server`` (``vfio_user_server``).
A matrix column's QEMU plays each role it can, as its probe says
(harness/qemu/binary.py); the parameters name the QEMU of the role it
cannot play, its partner.  Both roles need multi-process support too: the
harness checks ``x-remote`` on both (harness/testing.py,
harness/mpqemu/topology.py).
"""

from typing import Callable, Dict, Optional

from ..base import params
from ..base.errors import HarnessError
from ..qemu import binary as qemu_binary
from ..qemu import subject

SERVER, CLIENT = 'server', 'client'

# What a QEMU lacks for each vfio-user role, and how to get one that has it.
ROLE_NEEDS = {
    SERVER: (qemu_binary.VFIO_USER_SERVER,
             'build with --enable-vfio-user-server, e.g. debian:trixie+vfio-user-server'),
    CLIENT: (qemu_binary.VFIO_USER_CLIENT, 'QEMU 10.1 and later, e.g. deb:trixie-backports'),
}


def roles_of(caps: qemu_binary.Capabilities) -> Dict[str, Optional[str]]:
    """{vfio-user role: None if this QEMU can play it, else what it lacks}."""
    version = f"QEMU {'.'.join(map(str, caps.version))}"
    if caps.multiprocess is None:
        lack = (f'{version} has no multi-process support (x-remote): build it with '
                f'--enable-multiprocess')
        return {SERVER: lack, CLIENT: lack}
    has = {SERVER: caps.vfio_user_server, CLIENT: caps.vfio_user_client}
    return {role: None if has[role] else
            f'{version} has no {ROLE_NEEDS[role][0]} ({ROLE_NEEDS[role][1]})'
            for role in (SERVER, CLIENT)}


def prepare(spec: str, log=print) -> qemu_binary.Capabilities:
    """Build or unpack (cached) and probe a QEMU subject."""
    return qemu_binary.probe(subject.binary(spec, log=log))


def vfio_user_plan(caps: qemu_binary.Capabilities, spec: str, log=print,
                   lookup: Optional[Callable[[str], Optional[str]]] = None) -> dict:
    """What the column's QEMU plays in the vfio-user tests (see the module
    docstring), with the QEMU of each role (the partner as ``lookup``, the
    column's parameters, names it); ``reason`` and ``detail`` when it plays
    neither, ``partner_error`` when the other role's QEMU cannot play its
    part."""
    lacks = roles_of(caps)
    roles = [role for role in (SERVER, CLIENT) if lacks[role] is None]
    if not roles:
        version = '.'.join(map(str, caps.version))
        return {'plays': None, 'detail': '; '.join(dict.fromkeys(lacks.values())),
                'reason': (f'QEMU {version}: no {ROLE_NEEDS[SERVER][0]}, '
                           f'no {ROLE_NEEDS[CLIENT][0]}' if caps.multiprocess else
                           f'QEMU {version}: no multi-process support')}
    plan = {'plays': '+'.join(roles)}
    for role in (CLIENT, SERVER):
        if role in roles:
            plan[role] = spec
            continue
        plan[role] = partner = params.get(f'vfio_user_{role}', lookup)
        try:
            lack = roles_of(prepare(partner, log))[role]
        except HarnessError as err:
            lack = str(err)
        if lack:
            plan['partner_error'] = f'vfio_user_{role}={partner} cannot be the {role}: {lack}'
    return plan
