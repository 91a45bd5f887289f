"""SSH into a guest with paramiko: connect with retries until a deadline,
run commands with a hard timeout, move files.

Every command runs under the guest's ``timeout -s KILL N`` (busybox and
coreutils agree on that syntax) *and* a host-side deadline a little later:
paramiko cannot time out ``recv_exit_status()``, and closing a channel does
not stop the guest's process (docs/multiprocess-qemu.md, "SSH and a stopped
guest"), so each side covers the other.

Files travel through ``cat`` on an exec channel rather than SFTP, so a guest
needs no sftp-server (dropbear has none).
"""

import base64
import dataclasses
import os
import select
import shlex
import socket
import threading
import time
from typing import Callable, Optional, Union

import paramiko

from ..base import deadlines
from ..base.errors import HarnessError, Timeout

DEFAULT_CONNECT_TIMEOUT_S = 60.0
# One attempt's budget for TCP, banner and auth: slirp accepts the host-side
# connection at once and drops it when the guest does not answer, so a guest
# not yet listening shows up as a quick failure, and a slow one needs this.
CONNECT_ATTEMPT_TIMEOUT_S = 10.0
CONNECT_RETRY_INTERVAL_S = 0.2
DEFAULT_COMMAND_TIMEOUT_S = deadlines.COMMAND_S
# How much later than the guest-side timeout the host gives up.
HOST_DEADLINE_MARGIN_S = 5.0
# How a command killed by ``timeout -s KILL`` ends: coreutils' timeout exits
# 128 + SIGKILL; busybox's timeout execs the command in its own process, so
# the SSH server reports a signal, which paramiko gives as -1.
KILLED_STATUSES = (137, -1)
READ_CHUNK_BYTES = 65536
SELECT_INTERVAL_S = 0.5


class SSHError(HarnessError):
    """SSH to the guest failed."""


class SSHConnectError(SSHError):
    pass


class _NotStarted(Exception):
    """exec_command() did not get the guest's reply before the deadline."""


class CommandTimeout(SSHError, Timeout):
    """A guest command outlived its timeout; partial output is attached."""

    def __init__(self, message: str, stdout: str, stderr: str):
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr


class CommandFailed(SSHError):
    def __init__(self, result: 'CommandResult'):
        super().__init__(f"guest command {result.command!r} exited with "
                         f"{result.exit_status}; stderr: {result.stderr.strip()[-500:]!r}")
        self.result = result


@dataclasses.dataclass(frozen=True)
class CommandResult:
    command: str
    exit_status: int
    stdout: str
    stderr: str
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


def hostfwd_port(info_usernet: str, guest_port: int = 22) -> int:
    """The host port of the ``hostfwd=tcp:127.0.0.1:0-:GUEST_PORT`` rule,
    read from HMP ``info usernet``: port 0 lets QEMU pick a free one
    (race-free, parallel-safe), and this is where it says which."""
    for line in info_usernet.splitlines():
        words = line.split()
        # TCP[HOST_FORWARD]  FD  SRC_ADDR  SRC_PORT  DEST_ADDR  DEST_PORT ...
        if words and words[0] == 'TCP[HOST_FORWARD]' and len(words) >= 6 \
                and words[5] == str(guest_port):
            return int(words[3])
    raise SSHError(f"no TCP host forward to guest port {guest_port} in 'info usernet' "
                   f"(add hostfwd=tcp:127.0.0.1:0-:{guest_port} to the -netdev user):\n"
                   f"{info_usernet}")


def _host_key_name(host: str, port: int) -> str:
    return host if port == 22 else f'[{host}]:{port}'


class GuestSSH:
    """One SSH connection to a guest.  Use ``GuestSSH.connect(...)``."""

    def __init__(self, client: paramiko.SSHClient, host: str, port: int, user: str):
        self._client = client
        self.host, self.port, self.user = host, port, user

    @classmethod
    def connect(cls, host: str, port: int, user: str = 'root',
                key_path: Optional[str] = None, password: Optional[str] = None,
                host_key: Optional[str] = None,
                timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
                alive: Optional[Callable[[], bool]] = None) -> 'GuestSSH':
        """Retry until the guest accepts us or ``timeout_s`` passes.

        ``host_key``: the guest's OpenSSH public key line; when given, any
        other key is refused.  ``alive``: stop early once it returns False
        (the guest's QEMU exited).  Authentication and host-key failures
        are not retried: they will not fix themselves.
        """
        if not key_path and password is None:
            raise SSHConnectError("no SSH credentials: give a key (image ssh_key) "
                                  "or a password (image ssh_password)")
        pkey = paramiko.PKey.from_path(key_path) if key_path else None
        timeout_s = deadlines.cap(timeout_s, f'SSH to {host}:{port}')
        started = time.monotonic()
        deadline = started + timeout_s
        attempts = 0
        last_error: Optional[BaseException] = None
        while True:
            attempts += 1
            client = paramiko.SSHClient()
            if host_key:
                key_type, key_b64 = host_key.split()[:2]
                client.get_host_keys().add(
                    _host_key_name(host, port), key_type,
                    paramiko.PKey.from_type_string(key_type, base64.b64decode(key_b64)))
                client.set_missing_host_key_policy(paramiko.RejectPolicy())
            else:
                client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            budget = max(0.1, min(CONNECT_ATTEMPT_TIMEOUT_S, deadline - time.monotonic()))
            try:
                client.connect(host, port, username=user, pkey=pkey, password=password,
                               timeout=budget, banner_timeout=budget, auth_timeout=budget,
                               allow_agent=False, look_for_keys=False)
                return cls(client, host, port, user)
            except paramiko.BadHostKeyException as e:
                client.close()
                raise SSHConnectError(f"{host}:{port} presented a host key other than the "
                                      f"image's ({e}): is another guest on this port?") from e
            except paramiko.AuthenticationException as e:
                client.close()
                raise SSHConnectError(f"{user}@{host}:{port} refused our credentials ({e}): "
                                      f"check the image's ssh user/key/password") from e
            except (paramiko.SSHException, OSError, EOFError) as e:
                client.close()
                last_error = e
            if alive is not None and not alive():
                raise SSHConnectError(f"the guest's QEMU exited before SSH on {host}:{port} "
                                      f"answered (last error: {last_error!r})")
            if time.monotonic() + CONNECT_RETRY_INTERVAL_S >= deadline:
                raise SSHConnectError(f"no SSH on {host}:{port} within {timeout_s:.0f} s "
                                      f"({attempts} attempts; last error: {last_error!r})")
            time.sleep(CONNECT_RETRY_INTERVAL_S)

    # -------------------------------------------------------------- commands

    @staticmethod
    def _start(chan: paramiko.Channel, command: str, deadline: float) -> None:
        """exec_command() with a deadline: paramiko waits for the server's
        reply with none, so a timer closes the channel at the deadline."""
        fired = threading.Event()

        def give_up():
            fired.set()
            chan.close()
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), give_up)
        timer.start()
        try:
            chan.exec_command(command)
        except paramiko.SSHException:
            if fired.is_set():
                raise _NotStarted() from None
            raise
        finally:
            timer.cancel()

    def _exec(self, command: str, timeout_s: float, stdin: Optional[bytes],
              guest_timeout: bool) -> tuple:
        """(exit_status, stdout bytes, stderr bytes, elapsed_s)."""
        timeout_s = max(1.0, deadlines.cap(timeout_s + HOST_DEADLINE_MARGIN_S,
                                           f'guest command {command!r}')
                        - HOST_DEADLINE_MARGIN_S)
        wrapped = (f'timeout -s KILL {max(1, round(timeout_s))} sh -c {shlex.quote(command)}'
                   if guest_timeout else command)
        started = time.monotonic()
        deadline = started + timeout_s + HOST_DEADLINE_MARGIN_S
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise SSHError(f"SSH connection to {self.host}:{self.port} is closed")
        try:
            chan = transport.open_session(timeout=timeout_s)
        except paramiko.SSHException as err:
            if time.monotonic() - started < timeout_s:      # refused, not unanswered
                raise SSHError(f"guest command {command!r}: the guest refused an SSH "
                               f"channel ({err})") from None
            # A guest that stopped answering: paramiko says "Timeout opening channel."
            raise CommandTimeout(f"guest command {command!r} could not start: no SSH "
                                 f"channel within {timeout_s:.0f} s ({err})", '', '') from None
        out, err = bytearray(), bytearray()

        def expired(what: str) -> CommandTimeout:
            chan.close()
            return CommandTimeout(
                f"guest command {command!r} {what} after {timeout_s:.0f} s "
                f"(+{HOST_DEADLINE_MARGIN_S:.0f} s host margin)",
                out.decode(errors='replace'), err.decode(errors='replace'))

        try:
            chan.settimeout(timeout_s + HOST_DEADLINE_MARGIN_S)
            self._start(chan, wrapped, deadline)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            while True:
                while chan.recv_ready():
                    out += chan.recv(READ_CHUNK_BYTES)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(READ_CHUNK_BYTES)
                # All output is in once the exit status and EOF have arrived
                # and nothing is left buffered.
                if (chan.exit_status_ready() and chan.eof_received
                        and not chan.recv_ready() and not chan.recv_stderr_ready()):
                    break
                # A lost connection closes the channel without an EOF (and
                # paramiko then reports exit status -1 as ready).
                if not transport.is_active() or (chan.closed and not chan.eof_received):
                    raise EOFError('the connection closed before the command ended')
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise expired('did not finish (host deadline)')
                select.select([chan], [], [], min(remaining, SELECT_INTERVAL_S))
        except _NotStarted:
            raise expired('was not started (host deadline)') from None
        except socket.timeout:
            raise expired('stalled (host deadline)') from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            # The guest's end went away mid-command (its QEMU exited, say):
            # the same error as for a connection found closed, not paramiko's.
            chan.close()
            raise SSHError(f"SSH connection to {self.host}:{self.port} is closed while running "
                           f"{command!r} ({type(e).__name__}: {e})") from None
        status = chan.recv_exit_status()
        chan.close()
        elapsed = time.monotonic() - started
        if guest_timeout and status in KILLED_STATUSES and elapsed >= timeout_s - 1:
            raise CommandTimeout(f"guest command {command!r} was killed by the guest-side "
                                 f"timeout after {timeout_s:.0f} s",
                                 out.decode(errors='replace'), err.decode(errors='replace'))
        return status, bytes(out), bytes(err), elapsed

    def run(self, command: str, timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S,
            check: bool = False, stdin: Union[str, bytes, None] = None,
            guest_timeout: bool = True) -> CommandResult:
        """Run ``command`` with the guest's /bin/sh.  Raises CommandTimeout
        past ``timeout_s``, CommandFailed on a non-zero exit when ``check``.
        ``guest_timeout=False`` for guests without a ``timeout`` program."""
        if isinstance(stdin, str):
            stdin = stdin.encode()
        status, out, err, elapsed = self._exec(command, timeout_s, stdin, guest_timeout)
        result = CommandResult(command, status, out.decode(errors='replace'),
                               err.decode(errors='replace'), elapsed)
        if check and not result.ok:
            raise CommandFailed(result)
        return result

    def spawn(self, command: str, cpu: Optional[int] = None,
              timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S) -> None:
        """Start ``command`` in the background, detached from this SSH
        session (setsid: dropbear kills what is left in a closed session's
        process group, nohup or not).  Its output goes nowhere: have it
        write a file, and poll that file with run().

        ``cpu`` pins it to one vCPU: a vCPU blocked on a stopped device
        takes no interrupts, so a command that may block must stay off
        the vCPU that serves the NIC's interrupt (CPU 0), or SSH stalls."""
        if cpu is not None:
            command = f'taskset {1 << cpu:x} sh -c {shlex.quote(command)}'
        self.run(f'setsid sh -c {shlex.quote(command)} </dev/null >/dev/null 2>&1 &',
                 check=True, timeout_s=timeout_s)

    # -------------------------------------------------------------- files

    def write_bytes(self, remote_path: str, data: bytes, mode: int = 0o644,
                    timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S) -> None:
        path = shlex.quote(remote_path)
        status, _, err, _ = self._exec(f'cat > {path} && chmod {mode:o} {path}',
                                       timeout_s, data, True)
        if status != 0:
            raise SSHError(f"writing {remote_path} in the guest failed ({status}): "
                           f"{err.decode(errors='replace').strip()}")

    def read_bytes(self, remote_path: str,
                   timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S) -> bytes:
        status, out, err, _ = self._exec(f'cat {shlex.quote(remote_path)}',
                                         timeout_s, None, True)
        if status != 0:
            raise SSHError(f"reading {remote_path} from the guest failed ({status}): "
                           f"{err.decode(errors='replace').strip()}")
        return out

    def upload(self, local_path: str, remote_path: str, mode: Optional[int] = None,
               timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S) -> None:
        """Copy a host file into the guest (mode defaults to the local one)."""
        if mode is None:
            mode = os.stat(local_path).st_mode & 0o777
        with open(local_path, 'rb') as f:
            self.write_bytes(remote_path, f.read(), mode, timeout_s)

    def download(self, remote_path: str, local_path: str,
                 timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S) -> None:
        data = self.read_bytes(remote_path, timeout_s)
        with open(local_path, 'wb') as f:
            f.write(data)

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect_to_image(image, host: str, port: int,
                     timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
                     alive: Optional[Callable[[], bool]] = None) -> GuestSSH:
    """``GuestSSH.connect`` with the credentials a ``GuestImage`` carries."""
    return GuestSSH.connect(host, port, image.ssh_user, key_path=image.ssh_key,
                            password=image.ssh_password, host_key=image.ssh_host_key,
                            timeout_s=timeout_s, alive=alive)
