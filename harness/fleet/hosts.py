"""The hosts file of a fleet run, and the spawner's slot files made from it.

    {
      "controller": "192.0.2.1",
      "hosts": [
        {"name": "kvm-a", "address": "192.0.2.10", "user": "root",
         "identity_file": "~/.ssh/id_ed25519", "slots": 2},
        {"name": "kvm-b", "address": "192.0.2.11", "port": 2222}
      ]
    }

``controller`` is the address at which every host reaches the machine
that runs the job (Avocado's status server listens there: a host's tests
report their progress and results to it over TCP).  Per host: ``address``
(required), ``name`` (default: the address), ``port`` (22), ``user``
(root), ``identity_file`` (a private key; default ``~/.ssh/id_ed25519``),
``slots`` (how many of the job's tests it runs at once, default 1).

A test host needs, at the same paths as the controller: this checkout
(``make venv`` run in it), the QEMU builds and images the selected tests
use (``make functional`` prepares them on the controller; on a host of its
own, run ``make images`` and the builds there), and write access to the
job's results directory (the tests write their logs there: a shared file
system, NFS or the like).  Login is by key, non-interactive.
"""

import dataclasses
import json
import os
from typing import List

from ..base.errors import HarnessError

DEFAULT_IDENTITY = '~/.ssh/id_ed25519'
# A root or user prompt at the end of a line: what aexpect waits for.
PROMPT = r'[\#\$] $'
LOGIN_TIMEOUT_S = 30
# A host that stops answering is noticed in 15 s, not at TCP's 2 h.
KEEPALIVE = '-o ServerAliveInterval=5 -o ServerAliveCountMax=3 -o BatchMode=yes'
KEYS = {'name', 'address', 'port', 'user', 'identity_file', 'slots'}


@dataclasses.dataclass
class Host:
    name: str
    address: str
    port: int = 22
    user: str = 'root'
    identity_file: str = DEFAULT_IDENTITY
    slots: int = 1


@dataclasses.dataclass
class Fleet:
    controller: str
    hosts: List[Host]

    @property
    def slots(self) -> int:
        return sum(h.slots for h in self.hosts)


def _host(entry, where: str) -> Host:
    if not isinstance(entry, dict) or 'address' not in entry:
        raise HarnessError(f'{where}: a host needs at least an "address"')
    unknown = set(entry) - KEYS
    if unknown:
        raise HarnessError(f'{where}: unknown keys {sorted(unknown)} (known: {sorted(KEYS)})')
    host = Host(name=str(entry.get('name') or entry['address']), address=str(entry['address']),
                port=entry.get('port', 22), user=str(entry.get('user', 'root')),
                identity_file=str(entry.get('identity_file', DEFAULT_IDENTITY)),
                slots=entry.get('slots', 1))
    for key in ('port', 'slots'):
        value = getattr(host, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise HarnessError(f'{where}: "{key}" must be a positive integer, not {value!r}')
    return host


def load(path: str) -> Fleet:
    """The fleet described by the JSON file ``path``; HarnessError naming
    the file and the entry when it is not one."""
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except OSError as err:
        raise HarnessError(f'hosts file {path}: {err.strerror}') from None
    except ValueError as err:
        raise HarnessError(f'hosts file {path} is not JSON: {err}') from None
    if not isinstance(data, dict) or not data.get('controller') or not data.get('hosts'):
        raise HarnessError(f'hosts file {path}: needs "controller" (the address the hosts '
                           f'reach this machine at) and a non-empty "hosts" list')
    hosts = [_host(entry, f'hosts file {path}, host {n + 1}')
             for n, entry in enumerate(data['hosts'])]
    names = [h.name for h in hosts]
    if len(set(names)) != len(names):
        raise HarnessError(f'hosts file {path}: host names repeat: {names}')
    return Fleet(str(data['controller']), hosts)


def write_slots(fleet: Fleet, out_dir: str) -> List[str]:
    """One slot file per slot of every host (aexpect's remote_login
    arguments: key login, keep-alives); returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for host in fleet.hosts:
        for n in range(1, host.slots + 1):
            path = os.path.join(out_dir, f'{host.name}-{n}.json')
            with open(path, 'w', encoding='utf-8') as f:
                json.dump({'client': 'ssh', 'host': host.address, 'port': host.port,
                           'username': host.user, 'password': '',
                           'identity_file': os.path.expanduser(host.identity_file),
                           'preferred_authentication': 'publickey', 'prompt': PROMPT,
                           'timeout': LOGIN_TIMEOUT_S, 'extra_cmdline': KEEPALIVE},
                          f, indent=2)
            paths.append(path)
    return paths
