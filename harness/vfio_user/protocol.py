"""The vfio-user wire protocol, as a client sends and reads it.

Layouts follow docs/interop/vfio-user.rst and libvfio-user's
include/vfio-user.h (bundled in QEMU 10.0 as subprojects/libvfio-user),
little endian, packed::

    struct vfio_user_header {           offset size
        uint16_t msg_id;                  0     2   echoed in the reply
        uint16_t cmd;                     2     2
        uint32_t msg_size;                4     4   header included
        uint32_t flags;                   8     4   type:4 (0 command, 1 reply),
                                                    no_reply:1, error:1
        uint32_t error_no;               12     4   errno of an error reply
    };

Payloads (all structs packed): VERSION ``u16 major, u16 minor`` then a
NUL-terminated JSON object ``{"capabilities": {"max_msg_fds": N,
"max_data_xfer_size": N, "migration": {...}}}``; DMA_MAP ``argsz, flags,
offset, addr, size`` (u32 u32 u64 u64 u64, one fd: the memory);
DMA_UNMAP ``argsz, flags, addr, size``; DEVICE_GET_INFO ``argsz, flags,
num_regions, num_irqs``; DEVICE_GET_REGION_INFO ``argsz, flags, index,
cap_offset, size, offset`` (u32 x4, u64 x2); DEVICE_GET_IRQ_INFO
``argsz, flags, index, count``; DEVICE_SET_IRQS ``argsz, flags, index,
start, count`` (+ one eventfd per vector); REGION_READ/WRITE ``offset,
region, count`` (u64 u32 u32) then the data.  Replies repeat the
request's payload struct with the results filled in.

libvfio-user negotiates first (lib/tran.c, tran_negotiate): the first
message must be VERSION with major 0 and no fds, or the connection is
refused.  Fds travel as SCM_RIGHTS; the server accepts up to
SERVER_MAX_FDS (8) per message.
"""

import enum
import json
import struct
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from ..base.fdstream import FdStream, ProtocolError

HEADER = struct.Struct('<HHIII')            # msg_id, cmd, msg_size, flags, error_no
HEADER_SIZE = HEADER.size                   # 16
VERSION = struct.Struct('<HH')              # major, minor (+ JSON)
DMA_MAP = struct.Struct('<IIQQQ')           # argsz, flags, offset, addr, size: 32
DMA_UNMAP = struct.Struct('<IIQQ')          # argsz, flags, addr, size: 24
DEVICE_INFO = struct.Struct('<IIII')        # argsz, flags, num_regions, num_irqs: 16
REGION_INFO = struct.Struct('<IIIIQQ')      # argsz, flags, index, cap_offset, size, offset
IRQ_INFO = struct.Struct('<IIII')           # argsz, flags, index, count: 16
IRQ_SET = struct.Struct('<IIIII')           # argsz, flags, index, start, count: 20
REGION_ACCESS = struct.Struct('<QII')       # offset, region, count: 16

FLAG_TYPE_MASK = 0xf
TYPE_COMMAND = 0
TYPE_REPLY = 1
FLAG_NO_REPLY = 1 << 4
FLAG_ERROR = 1 << 5

MAJOR = 0                                   # libvfio-user's LIB_VFIO_USER_MAJOR
MINOR = 1
CLIENT_MAX_MSG_FDS = 8
CLIENT_MAX_DATA_XFER_SIZE = 1 << 20         # VFIO_USER_DEFAULT_MAX_DATA_XFER_SIZE
# What the harness accepts from the server in one message: its largest
# reply is a REGION_READ of max_data_xfer_size, plus some slack.
MAX_REPLY_SIZE = HEADER_SIZE + REGION_ACCESS.size + CLIENT_MAX_DATA_XFER_SIZE + 4096

DMA_FLAG_READ = 1 << 0
DMA_FLAG_WRITE = 1 << 1

# VFIO's PCI region and IRQ indices (linux/vfio.h)
BAR0_REGION_INDEX = 0
ROM_REGION_INDEX = 6
CONFIG_REGION_INDEX = 7                     # VFIO_PCI_CONFIG_REGION_INDEX
VGA_REGION_INDEX = 8
INTX_IRQ_INDEX = 0                          # VFIO_PCI_INTX_IRQ_INDEX
MSI_IRQ_INDEX = 1
MSIX_IRQ_INDEX = 2
ERR_IRQ_INDEX = 3
REQ_IRQ_INDEX = 4

REGION_FLAG_READ = 1 << 0                   # VFIO_REGION_INFO_FLAG_*
REGION_FLAG_WRITE = 1 << 1
REGION_FLAG_MMAP = 1 << 2
DEVICE_FLAG_RESET = 1 << 0                  # VFIO_DEVICE_FLAGS_*
DEVICE_FLAG_PCI = 1 << 1

IRQ_SET_DATA_NONE = 1 << 0                  # VFIO_IRQ_SET_*
IRQ_SET_DATA_BOOL = 1 << 1
IRQ_SET_DATA_EVENTFD = 1 << 2
IRQ_SET_ACTION_MASK = 1 << 3
IRQ_SET_ACTION_UNMASK = 1 << 4
IRQ_SET_ACTION_TRIGGER = 1 << 5


class Cmd(enum.IntEnum):
    """enum vfio_user_command (libvfio-user include/vfio-user.h)."""
    VERSION = 1
    DMA_MAP = 2
    DMA_UNMAP = 3
    DEVICE_GET_INFO = 4
    DEVICE_GET_REGION_INFO = 5
    DEVICE_GET_REGION_IO_FDS = 6
    DEVICE_GET_IRQ_INFO = 7
    DEVICE_SET_IRQS = 8
    REGION_READ = 9
    REGION_WRITE = 10
    DMA_READ = 11
    DMA_WRITE = 12
    DEVICE_RESET = 13
    DIRTY_PAGES = 14


@dataclass(frozen=True)
class Message:
    """One vfio-user message.  ``size`` is the header's msg_size; it is
    ``HEADER_SIZE + len(data)`` unless set on purpose (a lying header)."""
    cmd: int
    data: bytes = b''
    msg_id: int = 0
    flags: int = TYPE_COMMAND
    error_no: int = 0
    fds: Tuple[int, ...] = ()
    size: Optional[int] = None

    @property
    def msg_size(self) -> int:
        return HEADER_SIZE + len(self.data) if self.size is None else self.size

    @property
    def is_reply(self) -> bool:
        return self.flags & FLAG_TYPE_MASK == TYPE_REPLY

    @property
    def is_error(self) -> bool:
        return bool(self.flags & FLAG_ERROR)

    def with_id(self, msg_id: int) -> 'Message':
        return Message(self.cmd, self.data, msg_id & 0xffff, self.flags, self.error_no,
                       self.fds, self.size)

    def encode(self) -> bytes:
        """The bytes on the wire (fds travel separately, as SCM_RIGHTS)."""
        return HEADER.pack(self.msg_id & 0xffff, self.cmd & 0xffff, self.msg_size & 0xffffffff,
                           self.flags & 0xffffffff, self.error_no & 0xffffffff) + self.data

    def name(self) -> str:
        try:
            return Cmd(self.cmd).name
        except ValueError:
            return f'cmd#{self.cmd}'


def decode(raw: bytes, fds: Sequence[int] = ()) -> Tuple[Message, int]:
    """Decode one message from the start of ``raw``; returns it and the
    number of bytes used."""
    if len(raw) < HEADER_SIZE:
        raise ProtocolError(f"vfio-user header is {len(raw)} bytes, expected {HEADER_SIZE}")
    msg_id, cmd, size, flags, error_no = HEADER.unpack(raw[:HEADER_SIZE])
    if size < HEADER_SIZE:
        raise ProtocolError(f"message {cmd} has msg_size {size}, less than its header")
    if len(raw) < size:
        raise ProtocolError(f"message {cmd} truncated: {len(raw)} of {size} bytes")
    return Message(cmd, bytes(raw[HEADER_SIZE:size]), msg_id, flags, error_no,
                   tuple(fds)), size


# ---------------------------------------------------------------- requests

def version(capabilities: Optional[dict] = None, major: int = MAJOR,
            minor: int = MINOR) -> Message:
    caps = {'capabilities': {'max_msg_fds': CLIENT_MAX_MSG_FDS,
                             'max_data_xfer_size': CLIENT_MAX_DATA_XFER_SIZE}} \
        if capabilities is None else capabilities
    return Message(Cmd.VERSION, VERSION.pack(major, minor) + json.dumps(caps).encode() + b'\0')


def dma_map(addr: int, size: int, fd: int, offset: int = 0,
            flags: int = DMA_FLAG_READ | DMA_FLAG_WRITE) -> Message:
    return Message(Cmd.DMA_MAP, DMA_MAP.pack(DMA_MAP.size, flags, offset, addr, size), fds=(fd,))


def dma_unmap(addr: int, size: int, flags: int = 0) -> Message:
    return Message(Cmd.DMA_UNMAP, DMA_UNMAP.pack(DMA_UNMAP.size, flags, addr, size))


def device_get_info() -> Message:
    return Message(Cmd.DEVICE_GET_INFO, DEVICE_INFO.pack(DEVICE_INFO.size, 0, 0, 0))


def region_info(index: int) -> Message:
    return Message(Cmd.DEVICE_GET_REGION_INFO,
                   REGION_INFO.pack(REGION_INFO.size, 0, index, 0, 0, 0))


def irq_info(index: int) -> Message:
    return Message(Cmd.DEVICE_GET_IRQ_INFO, IRQ_INFO.pack(IRQ_INFO.size, 0, index, 0))


def set_irqs(index: int, flags: int, start: int = 0, count: int = 1,
             fds: Sequence[int] = (), data: bytes = b'') -> Message:
    return Message(Cmd.DEVICE_SET_IRQS,
                   IRQ_SET.pack(IRQ_SET.size + len(data), flags, index, start, count) + data,
                   fds=tuple(fds))


def region_read(region: int, offset: int, count: int) -> Message:
    return Message(Cmd.REGION_READ, REGION_ACCESS.pack(offset, region, count))


def region_write(region: int, offset: int, data: bytes) -> Message:
    return Message(Cmd.REGION_WRITE, REGION_ACCESS.pack(offset, region, len(data)) + data)


def device_reset() -> Message:
    return Message(Cmd.DEVICE_RESET)


# ---------------------------------------------------------------- replies

@dataclass(frozen=True)
class ServerVersion:
    major: int
    minor: int
    capabilities: dict

    @property
    def max_msg_fds(self) -> int:
        return int(self.capabilities.get('max_msg_fds', 1))

    @property
    def max_data_xfer_size(self) -> int:
        return int(self.capabilities.get('max_data_xfer_size', CLIENT_MAX_DATA_XFER_SIZE))


@dataclass(frozen=True)
class DeviceInfo:
    flags: int
    num_regions: int
    num_irqs: int


@dataclass(frozen=True)
class RegionInfo:
    index: int
    flags: int
    size: int
    offset: int
    cap_offset: int = 0

    @property
    def readable(self) -> bool:
        return bool(self.flags & REGION_FLAG_READ)

    @property
    def writable(self) -> bool:
        return bool(self.flags & REGION_FLAG_WRITE)


@dataclass(frozen=True)
class IrqInfo:
    index: int
    flags: int
    count: int


def decode_version(data: bytes) -> ServerVersion:
    _expect_at_least('VERSION reply', data, VERSION.size)
    major, minor = VERSION.unpack(data[:VERSION.size])
    text = data[VERSION.size:]
    if not text:
        return ServerVersion(major, minor, {})
    if not text.endswith(b'\0'):
        raise ProtocolError(f"VERSION reply's JSON is not NUL-terminated: {text[:80]!r}")
    try:
        parsed = json.loads(text[:-1].decode())
    except ValueError as err:
        raise ProtocolError(f"VERSION reply's JSON does not parse ({err}): {text[:80]!r}") from None
    return ServerVersion(major, minor, parsed.get('capabilities', {}))


def decode_device_info(data: bytes) -> DeviceInfo:
    _expect_at_least('DEVICE_GET_INFO reply', data, DEVICE_INFO.size)
    _, flags, regions, irqs = DEVICE_INFO.unpack(data[:DEVICE_INFO.size])
    return DeviceInfo(flags, regions, irqs)


def decode_region_info(data: bytes) -> RegionInfo:
    _expect_at_least('DEVICE_GET_REGION_INFO reply', data, REGION_INFO.size)
    _, flags, index, cap_offset, size, offset = REGION_INFO.unpack(data[:REGION_INFO.size])
    return RegionInfo(index, flags, size, offset, cap_offset)


def decode_irq_info(data: bytes) -> IrqInfo:
    _expect_at_least('DEVICE_GET_IRQ_INFO reply', data, IRQ_INFO.size)
    _, flags, index, count = IRQ_INFO.unpack(data[:IRQ_INFO.size])
    return IrqInfo(index, flags, count)


def decode_region_access(data: bytes) -> Tuple[int, int, int, bytes]:
    """(offset, region, count, data) of a REGION_READ/WRITE payload."""
    _expect_at_least('region access', data, REGION_ACCESS.size)
    offset, region, count = REGION_ACCESS.unpack(data[:REGION_ACCESS.size])
    return offset, region, count, data[REGION_ACCESS.size:]


def _expect_at_least(what: str, data: bytes, size: int) -> None:
    if len(data) < size:
        raise ProtocolError(f"{what} must be at least {size} bytes, got {len(data)}")


# ---------------------------------------------------------------- link

class Link(FdStream):
    """vfio-user message framing over one stream socket, with deadlines
    (harness/base/fdstream.py)."""

    def send(self, message: Message, timeout_s: float) -> None:
        self.send_raw(message.encode(), message.fds, timeout_s)

    def recv(self, timeout_s: float) -> Message:
        """Receive one message before the deadline."""
        header, data, fds = self.recv_frame(HEADER_SIZE, _payload_size, timeout_s)
        msg_id, cmd, _, flags, error_no = HEADER.unpack(header)
        return Message(cmd, data, msg_id, flags, error_no, tuple(fds))


def _payload_size(header: bytes) -> int:
    msg_id, cmd, size, _, _ = HEADER.unpack(header)
    if size < HEADER_SIZE or size > MAX_REPLY_SIZE:
        raise ProtocolError(f"the server sent message {cmd} (id {msg_id}) with msg_size "
                            f"{size} (header {HEADER_SIZE}, at most {MAX_REPLY_SIZE}): "
                            f"the stream is corrupt")
    return size - HEADER_SIZE
