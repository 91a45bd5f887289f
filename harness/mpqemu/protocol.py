"""The mpqemu wire protocol between proxy and remote, and a fake proxy.

Upstream QEMU (6.0 and later, ``--enable-multiprocess``) links an
``x-pci-proxy-dev`` to its remote process with a private protocol over a
unix stream socket.  Layouts mirror include/hw/remote/mpqemu-link.h as of
QEMU 7.2 (unchanged through 10.0), for x86_64 (LP64, little endian)::

    typedef struct {                    offset size
        int cmd;                          0     4
        /* padding */                     4     4
        size_t size;                      8     8   bytes of data that follow
        union {                          16   192   (largest: SyncSysmemMsg)
            uint64_t u64;
            PciConfDataMsg pci_conf_data;   uint32 addr, uint32 val, int len
            SyncSysmemMsg sync_sysmem;      hwaddr gpas[8], u64 sizes[8], off_t offsets[8]
            BarAccessMsg bar_access;        hwaddr addr, u64 val, unsigned size, bool memory
        } data;
        int fds[8]; int num_fds;          not on the wire: fds go as SCM_RIGHTS
    } MPQemuMsg;

On the wire a message is the 16-byte header (``MPQEMU_MSG_HDR_SIZE ==
offsetof(MPQemuMsg, data.u64)``) then ``size`` bytes of data, written by one
``sendmsg`` carrying the fds (hw/remote/mpqemu-link.c, mpqemu_msg_send).
The remote reads the header, rejects ``size > 192``, reads the data, and
checks it (mpqemu_msg_valid): SYNC_SYSMEM needs 1..7 fds (the check is
``num_fds >= REMOTE_MAX_FDS``, so 8 fds are refused although the proxy may
send 8) and size 192; config accesses size 12; BAR accesses size 24 and no
fds; SET_IRQFD size 0 and exactly 2 fds.  Anything invalid, or a config or
BAR access the device rejects, ends the remote's message loop and the
remote exits (hw/remote/message.c).

Replies (hw/remote/message.c): config and BAR accesses answer RET with a
u64 (the value read, or 0 / UINT64_MAX for writes); DEVICE_RESET answers
RET with no data; SYNC_SYSMEM and SET_IRQFD get no answer.  The remote
handles one message at a time, in order, so a later request/reply acts as
a barrier for the messages before it.

The v8 series (seed:v8, July 2020) speaks an earlier dialect of it
(io/mpqemu-link.h and hw/i386/remote-msg.c of that series), :data:`V8`:
the header's padding is ``int bytestream`` (1: the data is a byte stream,
``data2``, as config accesses are); the commands are numbered from
``INIT = 0`` and include GET_PCI_INFO and PROXY_PING (its heartbeat, answered
by an empty RET); BAR accesses and RET replies carry the whole 192-byte
``data1`` union; a config access is refused when ``addr + 4`` passes the end
of config space.  An invalid message makes that remote stop reading its
socket (the GLib watch returns FALSE) instead of exiting.

Upstream's proxy waits for a reply for ever (a SIGSTOPped remote hangs the
vCPU).  The fake proxy never does: every receive has a deadline and ends in
:class:`RemoteTimeout` or :class:`RemoteGone`.
"""

import enum
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import FrozenSet, List, Optional, Sequence, Tuple, Type

from ..base.fdstream import (Connection, EventFdEdges, FdStream, ProtocolError, RemoteError,
                             RemoteGone, RemoteTimeout)
from ..qemu.guestmem import GuestMemory, HarnessRamAccess, SysmemRegion

# The errors live in harness/base/fdstream.py (the vfio-user client raises
# the same ones); callers of the fake proxy know them as protocol.RemoteGone.
ERRORS = (RemoteError, RemoteTimeout, RemoteGone, ProtocolError)

REMOTE_MAX_FDS = 8
# mpqemu_msg_valid() refuses num_fds >= REMOTE_MAX_FDS: 7 is what works.
REMOTE_MAX_USABLE_FDS = REMOTE_MAX_FDS - 1

HEADER = struct.Struct('<i4xQ')                 # int cmd; size_t size
HEADER_SIZE = HEADER.size                       # 16
PCI_CONF_DATA = struct.Struct('<IIi')           # PciConfDataMsg: 12 bytes
BAR_ACCESS = struct.Struct('<QQI?3x')           # BarAccessMsg: 24 bytes
SYNC_SYSMEM = struct.Struct(f'<{REMOTE_MAX_FDS}Q{REMOTE_MAX_FDS}Q{REMOTE_MAX_FDS}q')  # 192
RET_U64 = struct.Struct('<Q')
DATA_UNION_SIZE = max(PCI_CONF_DATA.size, BAR_ACCESS.size, SYNC_SYSMEM.size, RET_U64.size)

UINT64_MAX = (1 << 64) - 1
PCI_CONFIG_SPACE_SIZE = 256                     # conventional PCI, what the LSI has

DEFAULT_REPLY_TIMEOUT_S = 5.0


class Cmd(enum.IntEnum):
    """MPQemuCmd, in the enum's order (include/hw/remote/mpqemu-link.h)."""
    SYNC_SYSMEM = 0
    RET = 1
    PCI_CFGWRITE = 2
    PCI_CFGREAD = 3
    BAR_WRITE = 4
    BAR_READ = 5
    SET_IRQFD = 6
    DEVICE_RESET = 7
    MAX = 8


class V8Cmd(enum.IntEnum):
    """MPQemuCmd of the v8 series (its include/io/mpqemu-link.h)."""
    INIT = 0
    SYNC_SYSMEM = 1
    RET = 2
    PCI_CFGWRITE = 3
    PCI_CFGREAD = 4
    BAR_WRITE = 5
    BAR_READ = 6
    SET_IRQFD = 7
    GET_PCI_INFO = 8
    PROXY_PING = 9
    DEVICE_RESET = 10


@dataclass(frozen=True)
class Dialect:
    """How one QEMU lays the protocol's messages on the wire.  Messages
    are built with :class:`Cmd` (or, for a command only one dialect has,
    its own enum's member); :meth:`wire_cmd` and :meth:`cmd` translate."""
    name: str
    cmds: Type[enum.IntEnum]
    bytestream: FrozenSet[Cmd] = frozenset()    # sent with bytestream = 1
    padded: FrozenSet[Cmd] = frozenset()        # data padded to the whole union
    ret_size: int = RET_U64.size                # a RET with a value carries this

    def wire_cmd(self, cmd: int) -> int:
        if isinstance(cmd, Cmd) and self.cmds is not Cmd:
            return int(self.cmds[cmd.name])
        return int(cmd)

    def cmd(self, wire: int) -> int:
        """The :class:`Cmd` of a wire number where it has one."""
        try:
            known = self.cmds(wire)
        except ValueError:
            return wire
        return Cmd[known.name] if known.name in Cmd.__members__ else known

    def encode(self, message: 'Message') -> bytes:
        cmd = message.cmd
        data = message.data
        if cmd in self.padded:
            data = data.ljust(DATA_UNION_SIZE, b'\0')
        size = len(data) if message.size is None else message.size
        return DIALECT_HEADER.pack(self.wire_cmd(cmd), int(cmd in self.bytestream), size) + data

    def decode_header(self, raw: bytes) -> Tuple[int, int]:
        """(command, data size) of a header."""
        cmd, _, size = DIALECT_HEADER.unpack(raw)
        return self.cmd(cmd), size


# The header's second int is padding upstream (zero: messages are built
# from zeroed structs), v8's bytestream flag.
DIALECT_HEADER = struct.Struct('<iiQ')
UPSTREAM = Dialect('upstream', Cmd)
V8 = Dialect('v8', V8Cmd,
             bytestream=frozenset({Cmd.PCI_CFGREAD, Cmd.PCI_CFGWRITE}),
             padded=frozenset({Cmd.BAR_READ, Cmd.BAR_WRITE}), ret_size=DATA_UNION_SIZE)


def dialect_of(caps) -> Dialect:
    """The dialect the multi-process QEMU ``caps`` (harness/qemu/binary.py's
    Capabilities) speaks."""
    return V8 if caps.require_multiprocess().flavour == 'v8' else UPSTREAM


class RemoteRejected(RemoteError):
    """The remote answered with its error value (upstream's exits right
after; the v8 series' serves on)."""


# ---------------------------------------------------------------- codec

@dataclass(frozen=True)
class Message:
    """One protocol message.  ``size`` is the header's size field; it is
    ``len(data)`` unless set on purpose (fuzzing a lying header)."""
    cmd: int
    data: bytes = b''
    fds: Tuple[int, ...] = ()
    size: Optional[int] = None

    @property
    def header_size(self) -> int:
        return len(self.data) if self.size is None else self.size

    def encode(self, dialect: Dialect = UPSTREAM) -> bytes:
        """The bytes on the wire (fds travel separately, as SCM_RIGHTS)."""
        return dialect.encode(self)

    def name(self) -> str:
        if isinstance(self.cmd, enum.IntEnum):
            return self.cmd.name
        try:
            return Cmd(self.cmd).name
        except ValueError:
            return f'cmd#{self.cmd}'


def decode_header(raw: bytes) -> Tuple[int, int]:
    if len(raw) != HEADER_SIZE:
        raise ProtocolError(f"message header is {len(raw)} bytes, expected {HEADER_SIZE}")
    return HEADER.unpack(raw)


def decode(raw: bytes, fds: Sequence[int] = ()) -> Tuple[Message, int]:
    """Decode one message from the start of ``raw``; returns it and the
    number of bytes used.  Applies the remote's own size limit."""
    cmd, size = decode_header(raw[:HEADER_SIZE])
    if size > DATA_UNION_SIZE:
        raise ProtocolError(f"message {cmd} claims {size} bytes of data, more than "
                            f"the {DATA_UNION_SIZE} MPQemuMsg can hold")
    end = HEADER_SIZE + size
    if len(raw) < end:
        raise ProtocolError(f"message {cmd} truncated: {len(raw) - HEADER_SIZE} of {size} "
                            f"data bytes")
    return Message(cmd, bytes(raw[HEADER_SIZE:end]), tuple(fds)), end


def pci_cfg_read(addr: int, length: int) -> Message:
    return Message(Cmd.PCI_CFGREAD, PCI_CONF_DATA.pack(addr, 0, length))


def pci_cfg_write(addr: int, value: int, length: int) -> Message:
    return Message(Cmd.PCI_CFGWRITE, PCI_CONF_DATA.pack(addr, value & 0xffffffff, length))


def decode_pci_conf(data: bytes) -> Tuple[int, int, int]:
    """(addr, val, len) of a PCI_CFGREAD/PCI_CFGWRITE payload."""
    _expect_size('PciConfDataMsg', data, PCI_CONF_DATA.size)
    return PCI_CONF_DATA.unpack(data)


def bar_read(addr: int, size: int, memory: bool = True) -> Message:
    return Message(Cmd.BAR_READ, BAR_ACCESS.pack(addr, 0, size, memory))


def bar_write(addr: int, value: int, size: int, memory: bool = True) -> Message:
    return Message(Cmd.BAR_WRITE, BAR_ACCESS.pack(addr, value & UINT64_MAX, size, memory))


def decode_bar_access(data: bytes) -> Tuple[int, int, int, bool]:
    """(addr, val, size, memory) of a BAR_READ/BAR_WRITE payload."""
    _expect_size('BarAccessMsg', data, BAR_ACCESS.size)
    return BAR_ACCESS.unpack(data)


def sync_sysmem(regions: Sequence[SysmemRegion]) -> Message:
    """The memory table; the remote replaces all its RAM with these."""
    if len(regions) > REMOTE_MAX_FDS:
        raise ProtocolError(f"{len(regions)} memory regions: a message carries at most "
                            f"{REMOTE_MAX_FDS} fds")
    pad = [0] * (REMOTE_MAX_FDS - len(regions))
    data = SYNC_SYSMEM.pack(*[r.gpa for r in regions], *pad,
                            *[r.size for r in regions], *pad,
                            *[r.offset for r in regions], *pad)
    return Message(Cmd.SYNC_SYSMEM, data, tuple(r.fd for r in regions))


def decode_sync_sysmem(data: bytes, fds: Sequence[int]) -> List[SysmemRegion]:
    _expect_size('SyncSysmemMsg', data, SYNC_SYSMEM.size)
    values = SYNC_SYSMEM.unpack(data)
    n = REMOTE_MAX_FDS
    gpas, sizes, offsets = values[:n], values[n:2 * n], values[2 * n:]
    return [SysmemRegion(fd, gpas[i], sizes[i], offsets[i]) for i, fd in enumerate(fds)]


def set_irqfd(irqfd: int, resamplefd: int) -> Message:
    return Message(Cmd.SET_IRQFD, b'', (irqfd, resamplefd))


def device_reset() -> Message:
    return Message(Cmd.DEVICE_RESET)


def ret(value: Optional[int] = None) -> Message:
    """A RET message; ``None`` encodes DEVICE_RESET's empty reply."""
    return Message(Cmd.RET, b'' if value is None else RET_U64.pack(value & UINT64_MAX))


def decode_ret(message: Message, dialect: Dialect = UPSTREAM) -> Optional[int]:
    if message.cmd != Cmd.RET:
        raise ProtocolError(f"expected a RET reply, got {message.name()}")
    if message.fds:
        raise ProtocolError(f"RET reply carries {len(message.fds)} unexpected fds")
    if not message.data:
        return None
    _expect_size('RET u64', message.data, dialect.ret_size)
    return RET_U64.unpack_from(message.data)[0]


def _expect_size(what: str, data: bytes, size: int) -> None:
    if len(data) != size:
        raise ProtocolError(f"{what} must be {size} bytes, got {len(data)}")


# ---------------------------------------------------------------- link

class Link(FdStream):
    """mpqemu message framing over one stream socket, with deadlines
    (harness/base/fdstream.py), in one dialect."""

    def __init__(self, sock: socket.socket, dialect: Dialect = UPSTREAM):
        super().__init__(sock)
        self.dialect = dialect

    def send(self, message: Message, timeout_s: float) -> None:
        self.send_raw(message.encode(self.dialect), message.fds, timeout_s)

    def recv(self, timeout_s: float) -> Message:
        """Receive one message before the deadline."""
        header, data, fds = self.recv_frame(HEADER_SIZE, self._data_size, timeout_s)
        return Message(self.dialect.decode_header(header)[0], data, tuple(fds))

    def _data_size(self, header: bytes) -> int:
        cmd, size = self.dialect.decode_header(header)
        if size > DATA_UNION_SIZE:
            raise ProtocolError(f"the remote sent message {cmd} with {size} data bytes "
                                f"(at most {DATA_UNION_SIZE}): the stream is corrupt")
        return size


# ---------------------------------------------------------------- interrupts

class IntxEventFds(EventFdEdges):
    """The INTx pair a proxy sends with SET_IRQFD (hw/remote/iohub.c).

    The remote writes ``irqfd`` when the line goes from low to high.  When
    the interrupt has been handled, writing ``resamplefd`` (KVM does it at
    EOI) makes the remote signal ``irqfd`` again if the line is still high.
    Both are created non-blocking, like the proxy's event_notifier_init(),
    and read only after a poll (see EventFdEdges).
    """

    def __init__(self) -> None:
        super().__init__()
        self.resamplefd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    @property
    def irqfd(self) -> int:
        return self.fd

    def ack(self) -> None:
        """End of interrupt: ask the remote to re-raise a still-high line."""
        os.eventfd_write(self.resamplefd, 1)

    def close(self) -> None:
        super().close()
        if self.resamplefd >= 0:
            os.close(self.resamplefd)
        self.resamplefd = -1


# ---------------------------------------------------------------- fake proxy

class FakeProxy(Connection):
    """The proxy's side of the protocol, spoken by the harness.

    ``sock`` is the harness's end of the socketpair whose other end the
    remote got as ``x-remote-object,fd=N``.  Methods mirror what
    hw/remote/proxy.c sends.  A timed-out request leaves its reply in
    flight; the next request first drains it (within its own deadline),
    so a remote that was stopped and continued can be used again.
    """

    def __init__(self, sock: socket.socket, timeout_s: float = DEFAULT_REPLY_TIMEOUT_S,
                 dialect: Dialect = UPSTREAM):
        self.link = Link(sock, dialect)
        self.dialect = dialect
        self.timeout_s = timeout_s
        self.irq: Optional[IntxEventFds] = None
        self._replies_owed = 0
        self.requests = 0

    # -- raw access, for fuzzing and for tests of the protocol itself

    def send(self, message: Message, timeout_s: Optional[float] = None) -> None:
        self.link.send(message, self._timeout(timeout_s))

    def recv(self, timeout_s: Optional[float] = None) -> Message:
        return self.link.recv(self._timeout(timeout_s))

    def request(self, message: Message, timeout_s: Optional[float] = None) -> Optional[int]:
        """Send ``message`` and return the value of its RET reply."""
        deadline = time.monotonic() + self._timeout(timeout_s)
        while self._replies_owed:
            decode_ret(self.link.recv(max(0.0, deadline - time.monotonic())), self.dialect)
            self._replies_owed -= 1
        self.link.send(message, max(0.0, deadline - time.monotonic()))
        self.requests += 1
        self._replies_owed += 1
        reply = self.link.recv(max(0.0, deadline - time.monotonic()))
        self._replies_owed -= 1
        return decode_ret(reply, self.dialect)

    def _timeout(self, timeout_s: Optional[float]) -> float:
        return self.timeout_s if timeout_s is None else timeout_s

    # -- what hw/remote/proxy.c does

    def config_read(self, offset: int, size: int, timeout_s: Optional[float] = None) -> int:
        _check_config_access(offset, size)
        value = self.request(pci_cfg_read(offset, size), timeout_s)
        if value == UINT64_MAX:
            raise RemoteRejected(f"the remote refused a config read of {size} bytes at "
                                 f"{offset:#x} (upstream's remote exits after this)")
        return value & _mask(size)

    def config_write(self, offset: int, value: int, size: int,
                     timeout_s: Optional[float] = None) -> None:
        _check_config_access(offset, size)
        if self.request(pci_cfg_write(offset, value, size), timeout_s) == UINT64_MAX:
            raise RemoteRejected(f"the remote refused a config write of {size} bytes at "
                                 f"{offset:#x} (upstream's remote exits after this)")

    def bar_read(self, addr: int, size: int, memory: bool = True,
                 timeout_s: Optional[float] = None) -> int:
        """Read at ``addr`` of the remote's memory (or I/O) address space,
        i.e. a BAR's programmed address plus an offset."""
        value = self.request(bar_read(addr, size, memory), timeout_s)
        if size < 8 and value == UINT64_MAX:
            raise RemoteRejected(f"the remote refused a {size}-byte {_space(memory)} read at "
                                 f"{addr:#x}: is a BAR programmed and enabled there?")
        return value

    def bar_write(self, addr: int, value: int, size: int, memory: bool = True,
                  timeout_s: Optional[float] = None) -> None:
        if self.request(bar_write(addr, value, size, memory), timeout_s):
            raise RemoteRejected(f"the remote refused a {size}-byte {_space(memory)} write at "
                                 f"{addr:#x}: is a BAR programmed and enabled there?")

    def sync_sysmem(self, regions: Sequence[SysmemRegion], barrier: bool = True) -> None:
        """Send the memory table.  The remote does not answer SYNC_SYSMEM;
        with ``barrier`` a config read follows, so that a remote which
        rejected the table is reported here rather than at the next call."""
        self.send(sync_sysmem(regions))
        if barrier:
            self.barrier()

    def set_irqfd(self, barrier: bool = True) -> IntxEventFds:
        """Give the remote a fresh INTx eventfd pair; returns it."""
        irq = IntxEventFds()
        try:
            self.send(set_irqfd(irq.irqfd, irq.resamplefd))
            if barrier:
                self.barrier()
        except BaseException:
            irq.close()
            raise
        if self.irq:
            self.irq.close()    # the remote closed its copies when replacing them
        self.irq = irq
        return irq

    def device_reset(self, timeout_s: Optional[float] = None) -> None:
        value = self.request(device_reset(), timeout_s)
        if value is not None:
            raise ProtocolError(f"DEVICE_RESET reply carries data ({value:#x}); "
                                f"hw/remote/message.c sends none")

    def ping(self, timeout_s: Optional[float] = None) -> None:
        """The v8 proxy's heartbeat (its patch 17): PROXY_PING, answered by
        a RET without a value."""
        if 'PROXY_PING' not in self.dialect.cmds.__members__:
            raise ProtocolError(f"the {self.dialect.name} protocol has no PROXY_PING")
        if self.request(Message(self.dialect.cmds['PROXY_PING']), timeout_s):
            raise ProtocolError("PROXY_PING answered with a value")

    def barrier(self, timeout_s: Optional[float] = None) -> None:
        """Round trip a harmless request: everything sent before it has
        been processed once it returns."""
        self.config_read(0, 2, timeout_s)


def _check_config_access(offset: int, size: int) -> None:
    if size not in (1, 2, 4) or offset < 0 or offset + size > PCI_CONFIG_SPACE_SIZE:
        raise ValueError(f"config access of {size} bytes at {offset:#x} is invalid "
                         f"(the remote would exit); use sizes 1/2/4 inside "
                         f"{PCI_CONFIG_SPACE_SIZE} bytes, or FakeProxy.send() to do it on purpose")


def _mask(size: int) -> int:
    return (1 << (8 * size)) - 1


def _space(memory: bool) -> str:
    return 'memory' if memory else 'I/O'


# ---------------------------------------------------------------- device access

class FakeProxyAccess(HarnessRamAccess):
    """A :class:`harness.devices.pci.DeviceAccess` over a fake proxy and
    harness-owned guest RAM: what the LSI engine needs to drive a remote
    device with no proxy QEMU and no guest."""

    def __init__(self, proxy: FakeProxy, memory: GuestMemory):
        super().__init__(memory)
        self.proxy = proxy

    @property
    def irq(self) -> Optional[IntxEventFds]:
        return self.proxy.irq

    def config_read(self, offset: int, size: int) -> int:
        return self.proxy.config_read(offset, size)

    def config_write(self, offset: int, value: int, size: int) -> None:
        self.proxy.config_write(offset, value, size)

    def bar_read(self, addr: int, size: int, memory: bool) -> int:
        return self.proxy.bar_read(addr, size, memory)

    def bar_write(self, addr: int, value: int, size: int, memory: bool) -> None:
        self.proxy.bar_write(addr, value, size, memory)
