"""A unix stream socket that carries messages with fds, every wait bounded.

Both wire protocols a remote device process speaks (the mpqemu proxy
protocol, harness/mpqemu/protocol.py, and vfio-user,
harness/vfio_user/protocol.py) frame messages on a ``SOCK_STREAM`` unix
socket and pass fds as ``SCM_RIGHTS`` with the first byte of a message.
:class:`FdStream` is that framing's lower half: send bytes with fds and
receive an exact number of bytes (collecting fds) before a deadline, so
neither a stopped peer nor a full socket buffer can hang the harness.
The errors say what the peer is likely doing, the same for both
protocols: a peer that closed is :class:`RemoteGone`, a silent one a
:class:`RemoteTimeout`.
"""

import errno
import os
import select
import socket
import struct
import time
from typing import Callable, List, Optional, Sequence, Tuple

from .errors import HarnessError, Timeout

# Enough room for the most fds either protocol sends with one message
# (mpqemu: 8; libvfio-user's SERVER_MAX_FDS: 8), with margin for a peer
# that sends more (the excess is closed, never leaked).
MAX_RECV_FDS = 16
_CMSG_FD_SPACE = socket.CMSG_SPACE(MAX_RECV_FDS * 4)


class RemoteError(HarnessError):
    """The remote process did not answer as the protocol says it must."""


class RemoteTimeout(RemoteError, Timeout):
    """No reply within the deadline: the remote is stopped, hung or busy."""


class RemoteGone(RemoteError):
    """The remote closed its end of the socket: it exited or was killed."""


class ProtocolError(RemoteError):
    """A malformed message, or a reply that does not fit the request."""


class FdStream:
    """Bytes and fds over one stream socket, with deadlines.

    The socket is switched to non-blocking mode; every send and receive
    waits with ``poll`` against a deadline.
    """

    def __init__(self, sock: socket.socket):
        self.sock = sock
        sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, payload: bytes, fds: Sequence[int], timeout_s: float) -> None:
        """Send bytes (and fds with the first byte) before the deadline."""
        deadline = time.monotonic() + timeout_s
        view = memoryview(payload)
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f'{len(fds)}i', *fds))] \
            if fds else []
        while view or ancillary:
            self._wait(select.POLLOUT, deadline, 'send to')
            try:
                sent = self.sock.sendmsg([view], ancillary)
            except (BlockingIOError, InterruptedError):
                continue
            except (BrokenPipeError, ConnectionResetError) as err:
                raise RemoteGone(f"the remote closed its socket ({err.strerror}): "
                                 f"it has exited or was killed; see its log") from None
            view = view[sent:]
            ancillary = []

    def recv_exact(self, length: int, deadline: float,
                   want_fds: bool) -> Tuple[bytes, List[int]]:
        """``length`` bytes (and, with ``want_fds``, the fds that came with
        them) before ``deadline`` (a time.monotonic() value)."""
        chunks, got, fds = [], 0, []
        while got < length:
            self._wait(select.POLLIN, deadline, 'reply from')
            try:
                data, ancdata, _, _ = self.sock.recvmsg(length - got,
                                                        _CMSG_FD_SPACE if want_fds else 0)
            except (BlockingIOError, InterruptedError):
                continue
            except ConnectionResetError:
                data, ancdata = b'', []
            fds += _fds_from(ancdata)
            if not data:
                close_fds(fds)
                raise RemoteGone(f"the remote closed its socket after {got} of {length} "
                                 f"bytes: it has exited or was killed; see its log")
            chunks.append(data)
            got += len(data)
        return b''.join(chunks), fds

    def recv_frame(self, header_size: int, body_size: Callable[[bytes], int],
                   timeout_s: float) -> Tuple[bytes, bytes, List[int]]:
        """One message: its header, then as many body bytes as
        ``body_size(header)`` says (it raises ProtocolError for a size
        the protocol forbids), and the fds that came with the header;
        fds are closed on any error, nobody else would ever see them."""
        deadline = time.monotonic() + timeout_s
        header, fds = self.recv_exact(header_size, deadline, want_fds=True)
        try:
            size = body_size(header)
            body, _ = self.recv_exact(size, deadline, want_fds=False) if size else (b'', [])
        except BaseException:
            close_fds(fds)
            raise
        return header, body, fds

    def _wait(self, event: int, deadline: float, what: str) -> None:
        poller = select.poll()
        poller.register(self.sock, event)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RemoteTimeout(f"no {what} the remote within the deadline: it is stopped "
                                    f"(SIGSTOP), hung or overloaded; check its state and log")
            try:
                events = poller.poll(left * 1000)
            except InterruptedError:
                continue
            if events:
                # POLLHUP/POLLERR: let sendmsg/recvmsg report what happened.
                return


def _fds_from(ancdata) -> List[int]:
    fds: List[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds += list(struct.unpack(f'{usable // 4}i', data[:usable]))
    return fds


def close_fds(fds: Sequence[int]) -> None:
    """Close each fd; one already closed is not an error."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError as err:
            if err.errno != errno.EBADF:
                raise


class Connection:
    """What owns a link to a remote and, once given, the eventfd of its
    INTx line: closing it closes both (the fake proxy, the vfio-user
    client)."""

    link: FdStream
    irq: Optional['EventFdEdges'] = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.link.close()
        if self.irq:
            self.irq.close()
            self.irq = None


class EventFdEdges:
    """An eventfd a device process signals, seen as counted edges.

    Created non-blocking, but that cannot be relied on: a QEMU that
    receives the fd over a socket channel makes it blocking
    (io/channel-socket.c, qio_channel_socket_copy_fds: "O_NONBLOCK is
    preserved across SCM_RIGHTS so reset it"), and O_NONBLOCK belongs to
    the open file description both processes share.  So every read here
    is preceded by a zero-timeout poll.
    """

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.count = 0          # edges seen so far

    def wait(self, timeout_s: float) -> bool:
        """True once the line has been raised (consuming the edge), False
        if it was not within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.pending():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([self.fd], [], [], left)

    def pending(self) -> bool:
        """Consume a raised edge without waiting."""
        if not select.select([self.fd], [], [], 0)[0]:
            return False
        try:
            self.count += os.eventfd_read(self.fd)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = -1
