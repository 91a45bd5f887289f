"""Test hosts made on this machine, for the fleet run's own test: network
namespaces on one bridge, each with its own loopback-range address, host
name and sshd (Debian's openssh-server).

A namespace shares this machine's file system and processes' view of it,
so each host has the suite's venv, its QEMU builds and the job's results
directory at the same paths, as a real test host must
(harness/fleet/hosts.py says what one needs).  Its network is its own:

    controller (this machine)  127.77.0.1/24 on bridge mpqfleet0
    host N (namespace mpqhostN) 127.77.0.(N+1)/24 on its veth, sshd on :22

127.0.0.0/8 is routed over the bridge and the veths (``route_localnet``),
so no packet can leave the machine.  The sshd runs in a UTS namespace of
its own whose host name is the namespace's, so a test's
``socket.gethostname()`` names the host it ran on.  ``kill()`` is the
host that dies mid-job: every process in its namespace gets SIGKILL;
``cut_off()`` the host that goes silent: its link goes down.
Everything is undone on exit, whatever happened: processes, namespaces,
links.  One fleet at a time per machine (a lock file, waited for with a
deadline); what a killed earlier one left is removed first.
"""

import os
import contextlib
import signal
import socket
import subprocess
import time
from typing import List, Optional

from ..base import locking
from ..base.errors import HarnessError
from ..base.waiting import wait_until

BRIDGE = 'mpqfleet0'
NETWORK = '127.77.0'
CONTROLLER_ADDRESS = f'{NETWORK}.1'
PREFIX = 24
SSH_PORT = 22
SSHD = '/usr/sbin/sshd'
SSHD_READY_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 10.0
KILL_TIMEOUT_S = 5.0
LOCK_PATH = '/run/lock/mpqemu-fleet.lock'
LOCK_TIMEOUT_S = 600.0         # another fleet's test running to its end


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if check and proc.returncode != 0:
        raise HarnessError(f"fleet: {' '.join(argv)} failed (exit {proc.returncode}): "
                           f"{proc.stderr.strip()}")
    return proc


def _route_localnet(device: str, netns: Optional[str] = None) -> None:
    prefix = ('ip', 'netns', 'exec', netns) if netns else ()
    _run(*prefix, 'sysctl', '-qw', f'net.ipv4.conf.{device}.route_localnet=1')


def keypair(path: str) -> str:
    """An ed25519 key without a passphrase at ``path``; returns the public key."""
    if not os.path.exists(path):
        _run('ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'mpqemu-fleet', '-f', path)
    with open(f'{path}.pub', encoding='ascii') as f:
        return f.read().strip()


def _port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


class NamespaceHost:
    """One test host: namespace ``mpqhostN`` at 127.77.0.(N+1)."""

    def __init__(self, index: int, work_dir: str, authorized_keys: str):
        if not 1 <= index <= 250:
            raise HarnessError(f'fleet: host index {index} outside 1..250')
        self.name = f'mpqhost{index}'
        self.address = f'{NETWORK}.{index + 1}'
        self.veth = f'mpqh{index}'
        self.work_dir = work_dir
        self.authorized_keys = authorized_keys
        self.sshd: Optional[subprocess.Popen] = None
        self.log_path = os.path.join(work_dir, f'{self.name}-sshd.log')

    def _sshd_config(self) -> str:
        host_key = os.path.join(self.work_dir, f'{self.name}-host-key')
        keypair(host_key)
        path = os.path.join(self.work_dir, f'{self.name}-sshd_config')
        with open(path, 'w', encoding='ascii') as f:
            f.write(f'ListenAddress {self.address}:{SSH_PORT}\n'
                    f'HostKey {host_key}\n'
                    f'PidFile none\n'
                    f'AuthorizedKeysFile {self.authorized_keys}\n'
                    'PermitRootLogin prohibit-password\nPasswordAuthentication no\n'
                    'KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n'
                    'PrintMotd no\nLogLevel ERROR\n'
                    # The controller's keep-alives notice a lost host; so does sshd.
                    'ClientAliveInterval 5\nClientAliveCountMax 2\n')
        return path

    def start(self) -> None:
        _run('ip', 'netns', 'add', self.name)
        _run('ip', 'link', 'add', self.veth, 'type', 'veth', 'peer', 'name', 'eth0',
             'netns', self.name)
        _run('ip', 'link', 'set', self.veth, 'master', BRIDGE, 'up')
        inside = ('ip', 'netns', 'exec', self.name)
        _run(*inside, 'ip', 'link', 'set', 'lo', 'up')
        _run(*inside, 'ip', 'addr', 'add', f'{self.address}/{PREFIX}', 'dev', 'eth0')
        _run(*inside, 'ip', 'link', 'set', 'eth0', 'up')
        _route_localnet('eth0', self.name)
        os.makedirs('/run/sshd', mode=0o755, exist_ok=True)    # sshd's privilege separation
        config = self._sshd_config()
        with open(self.log_path, 'ab') as log:
            self.sshd = subprocess.Popen(
                [*inside, 'unshare', '--uts', 'sh', '-c',
                 f'hostname {self.name} && exec {SSHD} -D -e -f {config}'],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        wait_until(lambda: _port_open(self.address, SSH_PORT) or self.sshd.poll() is not None,
                   SSHD_READY_TIMEOUT_S, f'sshd of {self.name} listening on {self.address}')
        if self.sshd.poll() is not None:
            raise HarnessError(f'fleet: sshd of {self.name} exited ({self.sshd.returncode}); '
                               f'see {self.log_path}')

    def pids(self) -> List[int]:
        """Every process in the namespace (sshd, sessions, their tests)."""
        proc = _run('ip', 'netns', 'pids', self.name, check=False)
        return [int(p) for p in proc.stdout.split() if p.isdigit()]

    def kill(self) -> None:
        """The host dies: SIGKILL to everything in its namespace."""
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while time.monotonic() < deadline:
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        if self.sshd:
            try:
                self.sshd.wait(KILL_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.sshd.pid, signal.SIGKILL)
                self.sshd.wait()
        if self.pids():
            raise HarnessError(f'fleet: processes of {self.name} outlived SIGKILL: {self.pids()}')

    def cut_off(self) -> None:
        """The host goes silent: its link goes down, its processes live on."""
        _run('ip', 'link', 'set', self.veth, 'down')

    def stop(self) -> None:
        self.kill()
        _run('ip', 'netns', 'del', self.name, check=False)
        _run('ip', 'link', 'del', self.veth, check=False)


class NamespaceFleet:
    """``with NamespaceFleet(count, work_dir) as fleet:`` ``fleet.hosts``
    are started and reachable over SSH with ``fleet.identity``."""

    def __init__(self, count: int, work_dir: str):
        self.work_dir = work_dir
        self.identity = os.path.join(work_dir, 'id_fleet')
        self.count = count
        self.hosts: List[NamespaceHost] = []
        self._lock = contextlib.ExitStack()

    def __enter__(self) -> 'NamespaceFleet':
        if os.geteuid() != 0:
            raise HarnessError('fleet: namespace test hosts need root (ip netns, sshd)')
        self._lock.enter_context(locking.exclusive(
            LOCK_PATH, LOCK_TIMEOUT_S, HarnessError, 'another fleet of namespace test hosts'))
        try:
            remove_leftovers()
        except BaseException:
            self._lock.close()
            raise
        os.makedirs(self.work_dir, exist_ok=True)
        authorized = os.path.join(self.work_dir, 'authorized_keys')
        with open(authorized, 'w', encoding='ascii') as f:
            f.write(keypair(self.identity) + '\n')
        try:
            _run('ip', 'link', 'add', BRIDGE, 'type', 'bridge')
            _run('ip', 'addr', 'add', f'{CONTROLLER_ADDRESS}/{PREFIX}', 'dev', BRIDGE)
            _run('ip', 'link', 'set', BRIDGE, 'up')
            _route_localnet(BRIDGE)
            for index in range(1, self.count + 1):
                host = NamespaceHost(index, self.work_dir, authorized)
                self.hosts.append(host)
                host.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            for host in self.hosts:
                host.stop()
            _run('ip', 'link', 'del', BRIDGE, check=False)
        finally:
            self._lock.close()


def leftovers() -> List[str]:
    """Namespaces and links of a fleet still there (none after a test)."""
    found = [n.split()[0] for n in _run('ip', 'netns', 'list').stdout.splitlines()
             if n.startswith('mpqhost')]
    links = _run('ip', '-o', 'link', 'show').stdout
    found += [BRIDGE] if f' {BRIDGE}:' in links else []
    return found


def remove_leftovers() -> None:
    """What a fleet killed before its exit left: its hosts' processes,
    namespaces and links (call it holding the lock: no live fleet's)."""
    for name in leftovers():
        if name == BRIDGE:
            _run('ip', 'link', 'del', BRIDGE, check=False)
        else:
            index = int(name.removeprefix('mpqhost'))
            NamespaceHost(index, '/nonexistent', '/nonexistent').stop()
