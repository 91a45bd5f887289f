"""One vfio-user connection to a server, spoken by the harness.

:class:`VfioUserClient` connects to a server's unix socket, negotiates
(VERSION must come first, lib/tran.c), and offers one method per request
the harness needs.  Each request gets its own ``msg_id`` and waits for
the reply with that id, within a deadline: a silent server is a
:class:`~harness.base.fdstream.RemoteTimeout`, a closed socket a
:class:`~harness.base.fdstream.RemoteGone`.  A reply that arrives after
its request timed out is recognised by its id and dropped by the next
request, so a server that was stopped and continued can be used again.
An error reply (flags.error, errno in error_no) is :class:`ServerRejected`.

The INTx line is an eventfd given with SET_IRQS (ACTION_TRIGGER,
DATA_EVENTFD); QEMU's server signals it on each rising edge of the
device's level (hw/remote/vfio-user-obj.c, vfu_object_set_irq).
"""

import contextlib
import errno
import os
import socket
import time
from typing import Dict, Iterator, Optional

from ..base.waiting import wait_until
from ..base.fdstream import Connection, EventFdEdges, ProtocolError, RemoteError, RemoteGone
from ..qemu.guestmem import RamRegion
from . import protocol as p

DEFAULT_REPLY_TIMEOUT_S = 5.0
# The client's msg ids are 1..MAX_CLIENT_MSG_ID; the ids above are left to
# raw senders (the fuzzer's cases and follow-ups) so that replies to them
# can never be taken for replies to the client's requests.
MAX_CLIENT_MSG_ID = 0x7fff
CONNECT_RETRY_S = 0.002
CONNECT_RETRY_MAX_S = 0.05


class ServerRejected(RemoteError):
    """The server answered a request with an error reply."""

    def __init__(self, message: p.Message, request: p.Message):
        self.errno = message.error_no
        self.request = request
        name = errno.errorcode.get(message.error_no, str(message.error_no))
        super().__init__(f"the vfio-user server refused {request.name()} with {name} "
                         f"({os.strerror(message.error_no) if message.error_no else 'no errno'})")


class IntxLine(EventFdEdges):
    """The device's INTx as the harness sees it: an eventfd the server
    signals.  ``ack`` unmasks INTx (SET_IRQS ACTION_UNMASK), what a
    vfio-user client does at EOI (hw/vfio/pci.c, vfio_intx_eoi)."""

    def __init__(self, client: 'VfioUserClient'):
        super().__init__()
        self.client = client

    def ack(self) -> None:
        self.client.set_irqs(p.INTX_IRQ_INDEX, p.IRQ_SET_DATA_NONE | p.IRQ_SET_ACTION_UNMASK)


class VfioUserClient(Connection):
    """A connection to one vfio-user server (see the module docstring)."""

    def __init__(self, sock: socket.socket, timeout_s: float = DEFAULT_REPLY_TIMEOUT_S):
        self.link = p.Link(sock)
        self.timeout_s = timeout_s
        self.server: Optional[p.ServerVersion] = None
        self.irq: Optional[IntxLine] = None
        self.requests = 0
        self.late_replies = 0
        self._next_id = 1
        self._owed: Dict[int, p.Message] = {}       # msg_id -> request, timed out
        self._mapped: Dict[int, int] = {}           # DMA addr -> size

    @classmethod
    def connect(cls, path: str, timeout_s: float = DEFAULT_REPLY_TIMEOUT_S) -> 'VfioUserClient':
        """Connect within ``timeout_s``.  The socket file appears at bind(),
        a moment before the server's listen(): ECONNREFUSED (and ENOENT)
        are retried until the deadline."""
        last_error = ['']

        def connected() -> Optional[socket.socket]:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.settimeout(timeout_s)
            try:
                sock.connect(path)
                return sock
            except OSError as err:
                sock.close()
                if err.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                    raise gone(err.strerror) from None
                last_error[0] = err.strerror
                return None

        def gone(why: str) -> RemoteGone:
            return RemoteGone(f"cannot connect to the vfio-user server at {path}: {why}; "
                              f"is the remote running and listening?")

        sock = wait_until(connected, timeout_s, f'the vfio-user server at {path}',
                          CONNECT_RETRY_S, max_interval_s=CONNECT_RETRY_MAX_S,
                          error=lambda _: gone(last_error[0]))
        return cls(sock, timeout_s)

    @contextlib.contextmanager
    def reply_timeout(self, timeout_s: float) -> Iterator[None]:
        """Requests in the block wait ``timeout_s`` for their reply."""
        saved, self.timeout_s = self.timeout_s, timeout_s
        try:
            yield
        finally:
            self.timeout_s = saved

    # -- raw access, for fuzzing and for tests of the protocol itself

    def send(self, message: p.Message, timeout_s: Optional[float] = None) -> None:
        self.link.send(message, self._timeout(timeout_s))

    def recv(self, timeout_s: Optional[float] = None) -> p.Message:
        return self.link.recv(self._timeout(timeout_s))

    def request(self, message: p.Message, timeout_s: Optional[float] = None) -> p.Message:
        """Send ``message`` with a fresh id; its reply, or ServerRejected."""
        deadline = time.monotonic() + self._timeout(timeout_s)
        msg_id = self._next_id
        self._next_id = self._next_id % MAX_CLIENT_MSG_ID + 1
        message = message.with_id(msg_id)
        self.link.send(message, max(0.0, deadline - time.monotonic()))
        self.requests += 1
        self._owed[msg_id] = message
        while True:
            reply = self.link.recv(max(0.0, deadline - time.monotonic()))
            p_fds = reply.fds
            if p_fds:
                for fd in p_fds:
                    os.close(fd)
                raise ProtocolError(f"the server's {reply.name()} reply carries "
                                    f"{len(p_fds)} fds, which no reply the harness asks for has")
            if not reply.is_reply:
                raise ProtocolError(f"the server sent a {reply.name()} command (id "
                                    f"{reply.msg_id}); the harness maps all DMA with fds, so "
                                    f"no request from the server is expected")
            request = self._owed.pop(reply.msg_id, None)
            if request is None:
                raise ProtocolError(f"reply {reply.name()} with id {reply.msg_id}, which no "
                                    f"request of ours has")
            if reply.msg_id != msg_id:
                self.late_replies += 1        # of a request that timed out
                continue
            if reply.cmd != message.cmd:
                raise ProtocolError(f"the reply to {message.name()} (id {msg_id}) says "
                                    f"{reply.name()}")
            if reply.is_error:
                raise ServerRejected(reply, message)
            return reply

    def _timeout(self, timeout_s: Optional[float]) -> float:
        return self.timeout_s if timeout_s is None else timeout_s

    # -- what a client does (hw/vfio-user/ in QEMU 10.1 and later)

    def negotiate(self, capabilities: Optional[dict] = None) -> p.ServerVersion:
        """VERSION: the server's version and capabilities."""
        self.server = p.decode_version(self.request(p.version(capabilities)).data)
        return self.server

    def device_info(self) -> p.DeviceInfo:
        return p.decode_device_info(self.request(p.device_get_info()).data)

    def region_info(self, index: int) -> p.RegionInfo:
        return p.decode_region_info(self.request(p.region_info(index)).data)

    def irq_info(self, index: int) -> p.IrqInfo:
        return p.decode_irq_info(self.request(p.irq_info(index)).data)

    def dma_map(self, region: RamRegion) -> None:
        """Map a harness RAM region (its memfd) at its guest address."""
        self.request(p.dma_map(region.gpa, region.size, region.fd))
        self._mapped[region.gpa] = region.size

    def dma_unmap(self, gpa: int, size: int) -> None:
        self.request(p.dma_unmap(gpa, size))
        self._mapped.pop(gpa, None)

    @property
    def mapped(self) -> Dict[int, int]:
        """What this client has DMA-mapped: address -> size."""
        return dict(self._mapped)

    def set_irqs(self, index: int, flags: int, start: int = 0, count: int = 1,
                 fds=()) -> None:
        self.request(p.set_irqs(index, flags, start, count, fds))

    def set_intx_eventfd(self) -> IntxLine:
        """Give the server a fresh INTx eventfd; returns it."""
        line = IntxLine(self)
        try:
            self.set_irqs(p.INTX_IRQ_INDEX, p.IRQ_SET_DATA_EVENTFD | p.IRQ_SET_ACTION_TRIGGER,
                          fds=(line.fd,))
        except BaseException:
            line.close()
            raise
        if self.irq:
            self.irq.close()
        self.irq = line
        return line

    def region_read(self, region: int, offset: int, count: int) -> bytes:
        reply = self.request(p.region_read(region, offset, count))
        got_offset, got_region, got_count, data = p.decode_region_access(reply.data)
        if (got_offset, got_region, got_count, len(data)) != (offset, region, count, count):
            raise ProtocolError(f"REGION_READ of {count} bytes at {offset:#x} of region "
                                f"{region} answered with {got_count} (data {len(data)}) at "
                                f"{got_offset:#x} of region {got_region}")
        return data

    def region_write(self, region: int, offset: int, data: bytes) -> None:
        reply = self.request(p.region_write(region, offset, data))
        _, _, count, _ = p.decode_region_access(reply.data)
        if count != len(data):
            raise ProtocolError(f"REGION_WRITE of {len(data)} bytes at {offset:#x} of region "
                                f"{region} wrote {count}")

    def device_reset(self) -> None:
        self.request(p.device_reset())
