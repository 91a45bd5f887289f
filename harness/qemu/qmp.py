"""A synchronous QMP channel with a deadline on every call.

qemu.qmp's legacy shim has no timeout on ``connect`` and its event calls
wait for ever when given an int; tests need every call bounded, so this
wraps the asynchronous ``QMPClient`` with ``asyncio.wait_for`` throughout.
The channel talks over one end of a socketpair whose other end QEMU
inherits (``-chardev socket,fd=N``): no socket path, no accept race, and a
QEMU that dies during start-up shows up as EOF at once.

Every command, reply and event is appended to a per-process log file.
"""

import asyncio
import json
import socket
import threading
import time
from typing import Any, Dict, Optional

from qemu.qmp import ExecuteError, QMPClient
from qemu.qmp.protocol import ConnectError, StateError

from ..base.errors import QMPError

QMP_CONNECT_TIMEOUT_S = 10.0
QMP_COMMAND_TIMEOUT_S = 10.0

_loops = threading.local()


def _loop() -> asyncio.AbstractEventLoop:
    """One private event loop per thread, shared by the channels it uses."""
    loop = getattr(_loops, 'loop', None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _loops.loop = loop
    return loop


class QMPChannel:
    def __init__(self, sock: socket.socket, name: str, log_path: Optional[str] = None):
        self.name = name
        self._sock = sock
        self._loop = _loop()
        self._client = self._sync(self._make_client(), QMP_CONNECT_TIMEOUT_S)
        self._log = open(log_path, 'a', encoding='utf-8') if log_path else None
        self.greeting: Optional[Dict[str, Any]] = None

    async def _make_client(self) -> QMPClient:
        # Created inside the loop so that its asyncio primitives bind to it.
        return QMPClient(self.name)

    def _sync(self, coro, timeout: float):
        return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def _record(self, direction: str, payload: Any) -> None:
        if self._log:
            self._log.write(f'{time.time():.6f} {direction} {json.dumps(payload)}\n')
            self._log.flush()

    def connect(self, timeout_s: float = QMP_CONNECT_TIMEOUT_S) -> None:
        try:
            self._sync(self._client.connect(self._sock), timeout_s)
        except asyncio.TimeoutError:
            raise QMPError(f"{self.name}: no QMP greeting within {timeout_s:.1f} s") from None
        except ConnectError as err:
            raise QMPError(f"{self.name}: QMP connection failed: {err}") from None
        self.greeting = self._client.greeting._asdict() if self._client.greeting else None
        self._record('<', self.greeting)

    def cmd(self, command: str, timeout_s: float = QMP_COMMAND_TIMEOUT_S, **args) -> Any:
        """Run ``command``; its ``return`` value, or QMPError (failure,
        timeout, or the process went away)."""
        self._record('>', {'execute': command, 'arguments': args})
        try:
            reply = self._sync(self._client.execute(command, args or None), timeout_s)
        except asyncio.TimeoutError:
            self._record('!', f'timeout after {timeout_s} s')
            raise QMPError(f"{self.name}: QMP {command} got no reply within "
                           f"{timeout_s:.1f} s") from None
        except ExecuteError as err:
            self._record('<', {'error': err.error.error.to_json() if hasattr(err.error.error, 'to_json') else str(err)})
            raise QMPError(f"{self.name}: QMP {command} failed: {err}") from None
        except (StateError, ConnectionError, EOFError, OSError) as err:
            self._record('!', str(err))
            raise QMPError(f"{self.name}: QMP {command} failed, connection lost: "
                           f"{type(err).__name__}: {err}") from None
        except Exception as err:  # qemu.qmp raises its own wrappers on EOF
            self._record('!', repr(err))
            raise QMPError(f"{self.name}: QMP {command} failed: {type(err).__name__}: {err}") from None
        self._record('<', {'return': reply})
        return reply

    def hmp(self, command_line: str, timeout_s: float = QMP_COMMAND_TIMEOUT_S,
            cpu_index: Optional[int] = None) -> str:
        """An HMP command; ``cpu_index`` is the vCPU that commands such as
        ``x`` (virtual addresses) act on, else the monitor's current one."""
        args = {'command-line': command_line}
        if cpu_index is not None:
            args['cpu-index'] = cpu_index
        return self.cmd('human-monitor-command', timeout_s=timeout_s, **args)

    def send_fd(self, fd: int, fdname: str, timeout_s: float = QMP_COMMAND_TIMEOUT_S) -> None:
        """Hand ``fd`` to QEMU under ``fdname`` (QMP getfd, SCM_RIGHTS)."""
        self._record('>', {'scm_rights': fd})
        self._client.send_fd_scm(fd)
        self.cmd('getfd', timeout_s=timeout_s, fdname=fdname)

    def get_event(self, name: str, timeout_s: float) -> Dict[str, Any]:
        """The next event called ``name`` (others are consumed and logged)."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QMPError(f"{self.name}: no {name} event within {timeout_s:.1f} s")
            try:
                event = self._sync(self._client.events.get(), left)
            except asyncio.TimeoutError:
                continue
            # qemu.qmp's Message is a Mapping, not a dict: json.dumps needs one.
            event = dict(event)
            self._record('<', event)
            if event.get('event') == name:
                return dict(event)

    def close(self) -> None:
        try:
            self._sync(self._client.disconnect(), QMP_CONNECT_TIMEOUT_S)
        except Exception:  # pylint: disable=broad-except
            pass  # closing a dead connection must never fail a teardown
        finally:
            self._sock.close()
            if self._log:
                self._log.close()
                self._log = None
