"""The serving thread of a hostile remote: the proxy's requests in, replies out.

:class:`HostileRemote` holds the remote's end of an ``x-pci-proxy-dev``'s
socketpair (harness/mpqemu/topology.py ``Machine.add_peer``) and answers
each request from its :class:`~.model.FunctionModel`, as hw/remote/message.c
would -- unless a reply has been armed (:meth:`HostileRemote.arm`): the
next config or BAR access (or DEVICE_RESET) then gets that
:class:`~.replies.Reply` instead.  Requests that expect no answer are
handled as a remote handles them: SYNC_SYSMEM's fds are closed (the table
is kept for inspection), SET_IRQFD's pair is kept, so a scenario can
raise the guest's interrupt or close the resample fd.

The proxy has no sequence numbers: after a reply that left extra RETs in
the socket (a duplicate, an unsolicited one), the proxy's next requests
take those, so the remote does not answer them itself -- the link is back
in step once the extras are used up.

Every wait of the thread and of its callers is bounded; ``close()``
stops the thread whatever it is doing.
"""

import os
import random
import select
import socket
import threading
from dataclasses import dataclass
from typing import List, Optional, Tuple

from ...base.errors import HarnessError
from ...base.fdstream import RemoteError, RemoteGone, RemoteTimeout, close_fds
from ...fuzz.cases import open_fd
from .. import protocol
from ..protocol import Cmd, Link, Message
from .model import UINT64_MAX, FunctionModel
from .replies import END_EOF, END_SHUTDOWN, END_SILENT, END_TRUNCATE, Reply

POLL_S = 0.05                 # how often the thread looks at its stop flag
SEND_TIMEOUT_S = 2.0          # a proxy that reads nothing for this long is stuck
FRAME_TIMEOUT_S = 2.0         # from a header's first byte to its last data byte
STOP_TIMEOUT_S = 5.0
UNSOLICITED_VALUE = 0x5a5a5a5a5a5a5a5a


@dataclass
class Exchange:
    """One request of the proxy and what the remote did about it."""
    cmd: int
    args: Tuple[int, ...]
    right: Optional[int]          # what the model answered (None: no answer due)
    reply: Optional[Reply] = None  # the hostile reply it got instead
    taken_by_queue: bool = False  # the proxy took a RET already in the socket

    def describe(self) -> str:
        name = Cmd(self.cmd).name if self.cmd in Cmd._value2member_map_ else f'cmd#{self.cmd}'
        args = ', '.join(f'{a:#x}' for a in self.args)
        what = (f'hostile: {self.reply.describe()}' if self.reply
                else 'queued RET' if self.taken_by_queue
                else f'= {self.right:#x}' if self.right is not None
                else 'RET' if self.cmd == Cmd.DEVICE_RESET else 'no answer due')
        return f'{name}({args}) {what}'


class HostileRemote:
    """The remote end of one proxy device, played by the harness."""

    def __init__(self, model: Optional[FunctionModel] = None, seed: int = 0,
                 workdir: Optional[str] = None):
        self.model = model or FunctionModel()
        self.rng = random.Random(seed)
        self.workdir = workdir or '/tmp'
        self.transcript: List[Exchange] = []
        self.sysmem: List[protocol.SysmemRegion] = []   # the last memory table
        self.sysmem_messages = 0
        self.irqfd: Optional[int] = None
        self.resamplefd: Optional[int] = None
        self.link: Optional[Link] = None
        self.error: Optional[BaseException] = None    # what ended the thread early
        self.closed_by_peer = False     # the proxy closed its end
        self.hung_up = False            # we closed ours
        self._armed: List[Reply] = []
        self._queued = 0
        self._silent = False            # requests are read but never answered
        # A RET value sent after each SYNC_SYSMEM and SET_IRQFD, which want
        # no answer (None: none is sent, as hw/remote/message.c does).
        self.answer_unasked: Optional[int] = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    # -- life cycle

    def attach(self, sock: socket.socket) -> None:
        """Serve the proxy at the other end of ``sock`` (now ours)."""
        if self._thread:
            raise HarnessError("a hostile remote serves one proxy device; make a new one")
        self.link = Link(sock)
        self._thread = threading.Thread(target=self._serve, name='hostile-remote', daemon=True)
        self._thread.start()

    @property
    def serving(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    def close(self) -> None:
        """Stop serving and close the socket and every fd kept."""
        self._stop.set()
        if self._thread:
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                raise HarnessError("the hostile remote's thread did not stop within "
                                   f"{STOP_TIMEOUT_S} s")
        if self.link:
            self.link.close()
        close_fds([fd for fd in (self.irqfd, self.resamplefd) if fd is not None])
        self.irqfd = self.resamplefd = None

    def hang_up(self) -> None:
        """Close the socket now (ends a proxy's wait for a silent reply)."""
        self._silent = self.hung_up = True
        if self.link:
            try:
                self.link.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- what the next requests get

    def arm(self, reply: Reply) -> None:
        """The next config/BAR access or DEVICE_RESET gets ``reply``."""
        with self._lock:
            self._armed.append(reply)

    @property
    def armed(self) -> int:
        with self._lock:
            return len(self._armed)

    @property
    def queued(self) -> int:
        """RETs in the socket that the proxy has not taken yet."""
        with self._lock:
            return self._queued

    def requests(self, *cmds: int) -> List[Exchange]:
        with self._lock:
            return [e for e in self.transcript if not cmds or e.cmd in cmds]

    def close_resamplefd(self) -> None:
        """Close the remote's copy of the resample eventfd (the proxy keeps
        its own)."""
        if self.resamplefd is not None:
            os.close(self.resamplefd)
            self.resamplefd = None

    def raise_irq(self, times: int = 1) -> None:
        """Signal the irqfd ``times`` times (an interrupt storm if many)."""
        if self.irqfd is None:
            raise HarnessError("the proxy has sent no SET_IRQFD: is the device's INTx "
                               "routed (KVM only)?")
        for _ in range(times):
            os.eventfd_write(self.irqfd, 1)

    # -- the thread

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    message = self._recv()
                except RemoteTimeout:
                    continue
                if message is not None:
                    self._handle(message)
        except RemoteGone:
            self.closed_by_peer = not self.hung_up
        except (OSError, RemoteError) as err:
            if not self._stop.is_set():
                self.error = err

    def _recv(self) -> Optional[Message]:
        """A message, or None if none began within POLL_S."""
        if not _readable(self.link.sock, POLL_S):
            return None
        return self.link.recv(FRAME_TIMEOUT_S)

    def _handle(self, message: Message) -> None:
        if message.cmd == Cmd.SYNC_SYSMEM:
            regions = protocol.decode_sync_sysmem(message.data, message.fds)
            close_fds(message.fds)
            self.sysmem, self.sysmem_messages = regions, self.sysmem_messages + 1
            self._log(Exchange(message.cmd, tuple(r.gpa for r in regions), None))
            self._unasked()
            return
        if message.cmd == Cmd.SET_IRQFD:
            close_fds([fd for fd in (self.irqfd, self.resamplefd) if fd is not None])
            self.irqfd, self.resamplefd = message.fds
            self._log(Exchange(message.cmd, tuple(message.fds), None))
            self._unasked()
            return
        close_fds(message.fds)
        right, args = self._answer(message)
        exchange = Exchange(message.cmd, args, right)
        with self._lock:
            if self._silent:
                self.transcript.append(exchange)
                return
            if self._queued:
                # The proxy takes a RET already in the socket for this one.
                self._queued -= 1
                exchange.taken_by_queue = True
                reply = None
            else:
                reply = self._armed.pop(0) if self._armed else None
                exchange.reply = reply
            self.transcript.append(exchange)
        if exchange.taken_by_queue:
            return
        if reply is None:
            self.link.send(protocol.ret(right), SEND_TIMEOUT_S)
            return
        self._misbehave(reply, right, message.cmd == Cmd.DEVICE_RESET)

    def _unasked(self) -> None:
        value = self.answer_unasked
        if value is not None and not self._silent:
            with self._lock:
                self._queued += 1
            self.link.send(protocol.ret(value), SEND_TIMEOUT_S)

    def _answer(self, message: Message) -> Tuple[Optional[int], Tuple[int, ...]]:
        """The model's answer to an access (None for DEVICE_RESET)."""
        model = self.model
        if message.cmd == Cmd.PCI_CFGREAD:
            addr, _, length = protocol.decode_pci_conf(message.data)
            return model.config_read(addr, length), (addr, length)
        if message.cmd == Cmd.PCI_CFGWRITE:
            addr, value, length = protocol.decode_pci_conf(message.data)
            return model.config_write(addr, value, length), (addr, value, length)
        if message.cmd == Cmd.BAR_READ:
            addr, _, size, memory = protocol.decode_bar_access(message.data)
            return model.bar_read(addr, size, memory), (addr, size, memory)
        if message.cmd == Cmd.BAR_WRITE:
            addr, value, size, memory = protocol.decode_bar_access(message.data)
            return model.bar_write(addr, value, size, memory), (addr, value, size, memory)
        if message.cmd == Cmd.DEVICE_RESET:
            model.reset()
            return None, ()
        # Anything else is a proxy bug; a real remote would exit.
        return UINT64_MAX, (message.cmd,)

    def _misbehave(self, reply: Reply, right: Optional[int], reset: bool) -> None:
        sock = self.link.sock
        with self._lock:
            self._queued += reply.queued
        for _ in range(reply.before):
            value = UNSOLICITED_VALUE if reply.value is None else reply.value
            self.link.send(protocol.ret(value), SEND_TIMEOUT_S)
        if reply.delay_s:
            self._stop.wait(reply.delay_s)
        if reply.end == END_SILENT:
            self._silent = True
            return
        fds, to_close = [], []
        try:
            for kind in reply.fds:
                fd, opened = open_fd(kind, self.workdir)
                fds.append(fd)
                to_close += opened
            frame = reply.frame(right, reset, self.rng)
            for copy in range(reply.copies):
                for index, piece in enumerate(reply.pieces(frame)):
                    if index and reply.gap_s:
                        self._stop.wait(reply.gap_s)
                    self.link.send_raw(piece, fds if copy == 0 and index == 0 else (),
                                       SEND_TIMEOUT_S)
        finally:
            close_fds(to_close)     # the proxy holds its copies, if it kept them
        if reply.end in (END_EOF, END_TRUNCATE):
            self.hang_up()
        elif reply.end == END_SHUTDOWN:
            self._silent = True
            sock.shutdown(socket.SHUT_WR)

    def _log(self, exchange: Exchange) -> None:
        with self._lock:
            self.transcript.append(exchange)


def _readable(sock: socket.socket, timeout_s: float) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLHUP)
    return bool(poller.poll(timeout_s * 1000))
