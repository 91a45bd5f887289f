"""The vfio-user codec, its framing and the client's request bookkeeping,
without QEMU.

Expected bytes are written out from libvfio-user's include/vfio-user.h
layouts (packed, little endian), independently of the struct formats in
harness/vfio_user/protocol.py.  The peer of the client tests is a
scripted thread on a socketpair; the real server is
tests/functional/test_protocol.py's RemoteLsiOverVfioUser.
"""

import errno
import json
import os
import struct
import threading
import time

import pytest

from harness.base.fdstream import ProtocolError, RemoteGone, RemoteTimeout
from harness.qemu.guestmem import GuestMemory
from harness.vfio_user import protocol as p
from harness.vfio_user.access import NoBarThere, VfioUserAccess
from harness.vfio_user.client import ServerRejected, VfioUserClient

SHORT_TIMEOUT_S = 0.2
TIMEOUT_SLACK_S = 1.0


def test_layout_sizes_match_vfio_user_h():
    assert p.HEADER_SIZE == 16          # u16 msg_id, u16 cmd, u32 msg_size, u32 flags, u32 errno
    assert p.DMA_MAP.size == 32
    assert p.DMA_UNMAP.size == 24
    assert p.DEVICE_INFO.size == 16
    assert p.REGION_INFO.size == 32
    assert p.IRQ_INFO.size == 16
    assert p.IRQ_SET.size == 20
    assert p.REGION_ACCESS.size == 16
    assert [c.value for c in p.Cmd] == list(range(1, 15))
    assert p.CONFIG_REGION_INDEX == 7 and p.INTX_IRQ_INDEX == 0


def test_header_bytes():
    wire = p.region_read(p.CONFIG_REGION_INDEX, 0x10, 4).with_id(0x1234).encode()
    assert wire == (b'\x34\x12' + b'\x09\x00' + struct.pack('<I', 32) + b'\0' * 4 + b'\0' * 4
                    + struct.pack('<Q', 0x10) + struct.pack('<I', 7) + struct.pack('<I', 4))


def test_reply_and_error_flags():
    reply = p.Message(p.Cmd.DMA_UNMAP, flags=p.TYPE_REPLY | p.FLAG_ERROR, error_no=errno.ENOENT)
    assert reply.encode()[8:16] == struct.pack('<II', 0x21, errno.ENOENT)
    decoded, used = p.decode(reply.encode())
    assert used == 16 and decoded.is_reply and decoded.is_error
    assert decoded.error_no == errno.ENOENT
    assert not p.Message(p.Cmd.VERSION).is_reply


def test_lying_size_is_encoded_as_given_and_refused_on_decode():
    message = p.Message(p.Cmd.DEVICE_RESET, size=4)
    assert struct.unpack('<I', message.encode()[4:8]) == (4,)
    with pytest.raises(ProtocolError, match='less than its header'):
        p.decode(message.encode())
    with pytest.raises(ProtocolError, match='truncated'):
        p.decode(p.Message(p.Cmd.DEVICE_RESET, size=64).encode())


def test_version_carries_nul_terminated_json():
    data = p.version().data
    assert data[:4] == struct.pack('<HH', 0, 1) and data.endswith(b'\0')
    assert json.loads(data[4:-1]) == {'capabilities': {'max_msg_fds': 8,
                                                       'max_data_xfer_size': 1 << 20}}
    server = p.decode_version(struct.pack('<HH', 0, 1)
                              + b'{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576}}\0')
    assert (server.major, server.minor, server.max_msg_fds, server.max_data_xfer_size) == \
        (0, 1, 8, 1 << 20)
    with pytest.raises(ProtocolError, match='NUL'):
        p.decode_version(struct.pack('<HH', 0, 1) + b'{}')
    with pytest.raises(ProtocolError, match='parse'):
        p.decode_version(struct.pack('<HH', 0, 1) + b'{not json\0')


def test_dma_map_and_unmap_bytes():
    message = p.dma_map(0x4000_0000, 0x80_0000, fd=5, offset=0x1000)
    assert message.fds == (5,)
    assert message.data == struct.pack('<IIQQQ', 32, 3, 0x1000, 0x4000_0000, 0x80_0000)
    assert p.dma_unmap(0x1000, 0x2000).data == struct.pack('<IIQQ', 24, 0, 0x1000, 0x2000)


def test_info_replies_decode():
    assert p.decode_region_info(struct.pack('<IIIIQQ', 32, 3, 2, 0, 0x2000, 0)) == \
        p.RegionInfo(2, 3, 0x2000, 0, 0)
    assert p.decode_irq_info(struct.pack('<IIII', 16, 1, 0, 1)).count == 1
    assert p.decode_device_info(struct.pack('<IIII', 16, 3, 10, 5)) == p.DeviceInfo(3, 10, 5)
    with pytest.raises(ProtocolError, match='at least 32'):
        p.decode_region_info(b'\0' * 16)


def test_set_irqs_argsz_counts_its_data():
    message = p.set_irqs(0, p.IRQ_SET_DATA_BOOL | p.IRQ_SET_ACTION_TRIGGER, data=b'\x01')
    assert message.data == struct.pack('<IIIII', 21, 0x22, 0, 0, 1) + b'\x01'


# ---------------------------------------------------------------- framing, client

def _serve(sock, answer, count):
    """A scripted server: answer each of ``count`` requests with
    ``answer(request)`` (a list of messages to send back)."""
    link = p.Link(sock)
    for _ in range(count):
        request = link.recv(2.0)
        for fd in request.fds:
            os.close(fd)
        for reply in answer(request):
            link.send(reply, 2.0)


def _reply(request, data=b'', flags=p.TYPE_REPLY, error_no=0):
    return p.Message(request.cmd, data, request.msg_id, flags, error_no)


def test_link_carries_an_fd_with_the_message(pair):
    a, b = pair
    memfd = os.memfd_create('t')
    try:
        p.Link(a).send(p.dma_map(0, 4096, memfd), SHORT_TIMEOUT_S)
        received = p.Link(b).recv(SHORT_TIMEOUT_S)
        assert received.cmd == p.Cmd.DMA_MAP and len(received.fds) == 1
        assert os.fstat(received.fds[0]).st_ino == os.fstat(memfd).st_ino
    finally:
        os.close(memfd)
        for fd in received.fds:
            os.close(fd)


def test_link_refuses_a_header_smaller_than_itself(pair):
    a, b = pair
    a.sendall(p.Message(p.Cmd.VERSION, size=8).encode())
    with pytest.raises(ProtocolError, match='corrupt'):
        p.Link(b).recv(SHORT_TIMEOUT_S)


def test_request_times_out_within_the_deadline(pair):
    a, _ = pair
    client = VfioUserClient(a, timeout_s=SHORT_TIMEOUT_S)
    started = time.monotonic()
    with pytest.raises(RemoteTimeout, match='SIGSTOP'):
        client.device_reset()
    assert time.monotonic() - started < SHORT_TIMEOUT_S + TIMEOUT_SLACK_S


def test_request_to_a_closed_server_is_remote_gone(pair):
    a, b = pair
    b.close()
    with pytest.raises(RemoteGone, match='exited or was killed'):
        VfioUserClient(a, timeout_s=SHORT_TIMEOUT_S).device_reset()


def test_late_reply_is_dropped_by_its_id(pair):
    a, b = pair
    client = VfioUserClient(a, timeout_s=SHORT_TIMEOUT_S)
    with pytest.raises(RemoteTimeout):
        client.region_read(p.CONFIG_REGION_INDEX, 0, 2)      # nobody answers it yet
    link = p.Link(b)
    late = link.recv(1.0)
    link.send(_reply(late, p.REGION_ACCESS.pack(0, 7, 2) + b'\x11\x11'), 1.0)

    def answer(request):
        return [_reply(request, p.REGION_ACCESS.pack(0, 7, 2) + b'\x00\x10')]
    server = threading.Thread(target=_serve, args=(b, answer, 1))
    server.start()
    with client.reply_timeout(1.0):
        assert client.region_read(p.CONFIG_REGION_INDEX, 0, 2) == b'\x00\x10'
    server.join(2.0)
    assert client.late_replies == 1


def test_error_reply_is_server_rejected_with_its_errno(pair):
    a, b = pair
    server = threading.Thread(target=_serve, args=(
        b, lambda r: [_reply(r, flags=p.TYPE_REPLY | p.FLAG_ERROR, error_no=errno.ENOENT)], 1))
    server.start()
    with pytest.raises(ServerRejected, match='DMA_UNMAP with ENOENT') as refused:
        VfioUserClient(a, timeout_s=1.0).dma_unmap(0x1000, 0x1000)
    assert refused.value.errno == errno.ENOENT
    server.join(2.0)


def test_a_command_from_the_server_is_a_protocol_error(pair):
    a, b = pair
    server = threading.Thread(target=_serve, args=(
        b, lambda r: [p.Message(p.Cmd.DMA_READ, b'\0' * 16, 7)], 1))
    server.start()
    with pytest.raises(ProtocolError, match='DMA_READ command'):
        VfioUserClient(a, timeout_s=1.0).device_reset()
    server.join(2.0)


def test_access_decodes_absolute_bar_addresses_from_config_space(pair):
    """BAR1 (MMIO, 0x400) programmed at 0xe0000000 with memory decoding
    on: an access there is REGION_READ of region 1 at the offset."""
    a, b = pair
    config = bytearray(256)
    struct.pack_into('<H', config, 0x04, 0x0002)                # COMMAND: memory
    struct.pack_into('<I', config, 0x14, 0xe000_0000)           # BAR1
    seen = []

    def answer(request):
        offset, region, count, _ = p.decode_region_access(request.data)
        seen.append((region, offset, count))
        data = bytes(config[offset:offset + count]) if region == 7 else b'\x78\x56\x34\x12'
        return [_reply(request, p.REGION_ACCESS.pack(offset, region, count) + data)]
    server = threading.Thread(target=_serve, args=(b, answer, 3))
    server.start()
    with GuestMemory() as memory:
        access = VfioUserAccess(VfioUserClient(a, timeout_s=1.0), memory, {1: 0x400})
        assert access.bar_read(0xe000_0034, 4, True) == 0x1234_5678
        with pytest.raises(NoBarThere, match='0xe0000400'):
            access.bar_read(0xe000_0400, 4, True)                # just past BAR1
        with pytest.raises(NoBarThere):
            access.bar_read(0xe000_0034, 4, False)               # I/O, not memory
    server.join(2.0)
    assert seen == [(7, 0x04, 2), (7, 0x14, 4), (1, 0x34, 4)]
