"""The mpqemu wire codec and its framing, without QEMU.

Expected bytes are written out from include/hw/remote/mpqemu-link.h's
layouts (x86_64), independently of the struct formats in the module.
"""

import os
import struct
import threading
import time

import pytest

from harness.devices.lsi import registers as lsi_regs, scripts as lsi_scripts
from harness.mpqemu import protocol as p
from harness.qemu.guestmem import GuestMemory, GuestMemoryError, SysmemRegion

SHORT_TIMEOUT_S = 0.2
# A deadline overrun this large means the receive did not honour its timeout.
TIMEOUT_SLACK_S = 1.0


def test_layout_sizes_match_mpqemu_link_h():
    assert p.HEADER_SIZE == 16                  # offsetof(MPQemuMsg, data.u64)
    assert p.PCI_CONF_DATA.size == 12           # uint32 addr, uint32 val, int len
    assert p.BAR_ACCESS.size == 24              # hwaddr, uint64, unsigned, bool + pad
    assert p.SYNC_SYSMEM.size == 3 * 8 * 8      # gpas[8], sizes[8], offsets[8]
    assert p.DATA_UNION_SIZE == 192
    assert [c.name for c in p.Cmd] == ['SYNC_SYSMEM', 'RET', 'PCI_CFGWRITE', 'PCI_CFGREAD',
                                       'BAR_WRITE', 'BAR_READ', 'SET_IRQFD', 'DEVICE_RESET',
                                       'MAX']


def test_config_read_bytes():
    wire = p.pci_cfg_read(0x10, 4).encode()
    assert wire == (b'\x03\0\0\0' + b'\0' * 4 + b'\x0c' + b'\0' * 7
                    + b'\x10\0\0\0' + b'\0\0\0\0' + b'\x04\0\0\0')


def test_config_write_bytes_and_decode():
    message = p.pci_cfg_write(0x04, 0x0007, 2)
    assert message.encode()[:16] == struct.pack('<iIQ', 2, 0, 12)
    assert p.decode_pci_conf(message.data) == (0x04, 0x0007, 2)


def test_bar_access_bytes():
    wire = p.bar_write(0xe0000034, 0x12345678, 4, memory=True).encode()
    assert len(wire) == 16 + 24
    assert wire[16:] == (struct.pack('<Q', 0xe0000034) + struct.pack('<Q', 0x12345678)
                         + b'\x04\0\0\0' + b'\x01' + b'\0\0\0')
    assert p.decode_bar_access(p.bar_read(0xc034, 1, memory=False).data) == \
        (0xc034, 0, 1, False)


def test_sync_sysmem_pads_to_eight_entries_and_carries_fds():
    regions = [SysmemRegion(fd=7, gpa=0, size=0x100000, offset=0),
               SysmemRegion(fd=9, gpa=0x40000000, size=0x200000, offset=0x1000)]
    message = p.sync_sysmem(regions)
    assert message.cmd == p.Cmd.SYNC_SYSMEM
    assert message.fds == (7, 9)
    assert message.header_size == 192
    gpas = struct.unpack('<8Q', message.data[:64])
    sizes = struct.unpack('<8Q', message.data[64:128])
    offsets = struct.unpack('<8q', message.data[128:])
    assert gpas == (0, 0x40000000, 0, 0, 0, 0, 0, 0)
    assert sizes == (0x100000, 0x200000, 0, 0, 0, 0, 0, 0)
    assert offsets == (0, 0x1000, 0, 0, 0, 0, 0, 0)
    assert p.decode_sync_sysmem(message.data, message.fds) == regions


def test_sync_sysmem_refuses_more_than_eight_regions():
    with pytest.raises(p.ProtocolError, match='at most 8 fds'):
        p.sync_sysmem([SysmemRegion(3, i << 20, 1 << 20) for i in range(9)])


def test_set_irqfd_and_reset_have_no_data():
    assert p.set_irqfd(5, 6) == p.Message(p.Cmd.SET_IRQFD, b'', (5, 6))
    assert p.device_reset().encode() == struct.pack('<iIQ', 7, 0, 0)


def test_ret_round_trip():
    message, used = p.decode(p.ret(0xdeadbeef).encode())
    assert used == 24
    assert p.decode_ret(message) == 0xdeadbeef
    empty, used = p.decode(p.ret(None).encode())
    assert used == 16 and p.decode_ret(empty) is None


def test_decode_rejects_what_the_remote_rejects():
    with pytest.raises(p.ProtocolError, match='more than'):
        p.decode(struct.pack('<iIQ', 1, 0, 193) + b'\0' * 193)
    with pytest.raises(p.ProtocolError, match='truncated'):
        p.decode(struct.pack('<iIQ', 1, 0, 8) + b'\0' * 4)
    with pytest.raises(p.ProtocolError, match='header'):
        p.decode(b'\0' * 10)
    with pytest.raises(p.ProtocolError, match='expected a RET'):
        p.decode_ret(p.pci_cfg_read(0, 4))


def test_lying_size_field_is_encoded_as_given():
    message = p.Message(p.Cmd.PCI_CFGREAD, b'\0' * 12, size=4096)
    assert struct.unpack('<iIQ', message.encode()[:16])[2] == 4096


# ---------------------------------------------------------------- the v8 dialect
# Expected bytes from the v8 series' include/io/mpqemu-link.h: int cmd,
# int bytestream, size_t size, then data1 (a 192-byte union) or data2.

def test_v8_config_read_is_a_bytestream_numbered_from_init():
    wire = p.pci_cfg_read(0x10, 4).encode(p.V8)
    assert wire == (b'\x04\0\0\0' + b'\x01\0\0\0' + b'\x0c' + b'\0' * 7
                    + b'\x10\0\0\0' + b'\0\0\0\0' + b'\x04\0\0\0')


def test_v8_bar_access_carries_the_whole_union():
    wire = p.bar_write(0xfebf1000, 0x11223344, 4).encode(p.V8)
    assert struct.unpack('<iiQ', wire[:16]) == (5, 0, 192)     # BAR_WRITE, data1
    assert struct.unpack('<QQI?', wire[16:37]) == (0xfebf1000, 0x11223344, 4, True)
    assert wire[37:] == b'\0' * (192 - 21)


def test_v8_set_irqfd_sync_sysmem_and_reset_keep_their_sizes():
    assert struct.unpack('<iiQ', p.set_irqfd(5, 6).encode(p.V8)) == (7, 0, 0)
    assert struct.unpack('<iiQ', p.device_reset().encode(p.V8)) == (10, 0, 0)
    regions = [SysmemRegion(0, 4096, 0, 9)]
    assert struct.unpack('<iiQ', p.sync_sysmem(regions).encode(p.V8)[:16]) == (1, 0, 192)


def test_v8_replies_decode_from_the_union(pair):
    a, b = pair
    a.sendall(struct.pack('<iiQ', 2, 0, 192) + struct.pack('<Q', 0x1234).ljust(192, b'\0'))
    a.sendall(struct.pack('<iiQ', 2, 0, 0))                   # DEVICE_RESET's, PROXY_PING's
    link = p.Link(b, p.V8)
    first = link.recv(SHORT_TIMEOUT_S)
    assert first.cmd == p.Cmd.RET and p.decode_ret(first, p.V8) == 0x1234
    assert p.decode_ret(link.recv(SHORT_TIMEOUT_S), p.V8) is None
    with pytest.raises(p.ProtocolError, match='must be 8 bytes, got 192'):
        p.decode_ret(first)                                   # not upstream's RET


def test_v8_ping_is_its_own_command_and_upstream_has_none(pair):
    a, b = pair
    server = threading.Thread(target=_serve, args=(b, [p.ret(None)], p.V8))
    server.start()
    p.FakeProxy(a, timeout_s=1.0, dialect=p.V8).ping()
    server.join(2.0)
    assert p.V8.wire_cmd(p.V8Cmd.PROXY_PING) == 9
    with pytest.raises(p.ProtocolError, match='no PROXY_PING'):
        p.FakeProxy(a, timeout_s=1.0).ping()


def test_upstream_bytes_are_unchanged_by_the_dialects():
    for message in (p.pci_cfg_read(0x3c, 1), p.bar_read(0x1000, 8, False), p.ret(7)):
        cmd, size = struct.unpack('<i4xQ', message.encode()[:16])
        assert (cmd, size) == (message.cmd, len(message.data))
        assert message.encode()[4:8] == b'\0' * 4


# ---------------------------------------------------------------- framing

def test_link_carries_fds_with_the_message(pair):
    a, b = pair
    r, w = os.pipe()
    try:
        p.Link(a).send(p.set_irqfd(r, w), SHORT_TIMEOUT_S)
        received = p.Link(b).recv(SHORT_TIMEOUT_S)
        assert received.cmd == p.Cmd.SET_IRQFD and len(received.fds) == 2
        os.write(w, b'x')
        assert os.read(received.fds[0], 1) == b'x'       # same pipe, new fd number
    finally:
        for fd in (r, w, *received.fds):
            os.close(fd)


def test_link_reassembles_a_message_split_across_writes(pair):
    a, b = pair
    wire = p.ret(42).encode()
    a.sendall(wire[:5])
    threading.Timer(0.05, a.sendall, [wire[5:]]).start()
    assert p.decode_ret(p.Link(b).recv(1.0)) == 42


def test_recv_times_out_within_the_deadline(pair):
    _, b = pair
    started = time.monotonic()
    with pytest.raises(p.RemoteTimeout, match='stopped'):
        p.Link(b).recv(SHORT_TIMEOUT_S)
    assert time.monotonic() - started < SHORT_TIMEOUT_S + TIMEOUT_SLACK_S


def test_recv_reports_a_closed_peer(pair):
    a, b = pair
    a.sendall(p.ret(1).encode()[:10])
    a.close()
    with pytest.raises(p.RemoteGone, match='after 10 of 16'):
        p.Link(b).recv(SHORT_TIMEOUT_S)


def test_send_to_a_closed_peer_is_remote_gone(pair):
    a, b = pair
    b.close()
    with pytest.raises(p.RemoteGone):
        p.Link(a).send(p.pci_cfg_read(0, 4), SHORT_TIMEOUT_S)


def test_send_into_a_full_socket_times_out(pair):
    a, _ = pair
    link = p.Link(a)
    with pytest.raises(p.RemoteTimeout):
        for _ in range(100000):           # nobody reads: the buffer fills
            link.send(p.bar_read(0, 4), SHORT_TIMEOUT_S)


def _serve(sock, replies, dialect=p.UPSTREAM):
    """A scripted remote: answer each request with the next reply."""
    link = p.Link(sock, dialect)
    for reply in replies:
        link.recv(2.0)
        if reply is not None:
            link.send(reply, 2.0)


def test_fake_proxy_drains_a_late_reply(pair):
    a, b = pair
    proxy = p.FakeProxy(a, timeout_s=1.0)
    link = p.Link(b)
    proxy.link.send(p.pci_cfg_read(0, 2), 1.0)     # a request whose reply is late
    proxy._replies_owed = 1                         # pylint: disable=protected-access
    link.recv(1.0)
    link.send(p.ret(0x1111), 1.0)                   # the late reply
    server = threading.Thread(target=_serve, args=(b, [p.ret(0x1000)]))
    server.start()
    assert proxy.config_read(0, 2) == 0x1000        # not the stale 0x1111
    server.join(2.0)


def test_fake_proxy_reports_the_remotes_error_value(pair):
    a, b = pair
    server = threading.Thread(target=_serve, args=(b, [p.ret(p.UINT64_MAX)]))
    server.start()
    proxy = p.FakeProxy(a, timeout_s=1.0)
    with pytest.raises(p.RemoteRejected, match='config read'):
        proxy.config_read(0x40, 4)
    with pytest.raises(ValueError, match='invalid'):
        proxy.config_read(0xfe, 4)                  # would make the remote exit
    server.join(2.0)


# ---------------------------------------------------------------- guest memory

def test_guest_memory_allocates_aligned_and_reuses_freed_space():
    with GuestMemory() as mem:
        mem.add_region(0, 1 << 20)
        first = mem.alloc(100, 4096)
        second = mem.alloc(100, 64)
        assert first % 4096 == 0 and second % 64 == 0 and second >= first + 100
        mem.free(first)
        assert mem.alloc(100, 4096) == first
        with pytest.raises(GuestMemoryError, match='no room'):
            mem.alloc(2 << 20)


def test_guest_memory_is_shared_through_its_fd():
    with GuestMemory() as mem:
        region = mem.add_region(0x100000, 1 << 20)
        mem.write(0x100010, b'hello')
        assert os.pread(region.fd, 5, 0x10) == b'hello'     # what the remote maps
        with pytest.raises(GuestMemoryError, match='not inside'):
            mem.read(0x1ffffe, 4)
        with pytest.raises(GuestMemoryError, match='overlaps'):
            mem.add_region(0x180000, 1 << 20)


# ---------------------------------------------------------------- SCRIPTS assembler

def test_scripts_encodings_match_seabios():
    # src/hw/lsi-scsi.c hand-assembles these.
    script = lsi_scripts.Script()
    script.select(3)
    script.jump(0x18, when=lsi_regs.PHASE_MSG_IN, if_not=True)
    script.wait_reselect(0)
    script.int_(0)
    words = struct.unpack('<8I', script.assemble(0))
    assert words[0] == 0x40000000 | 3 << 16
    assert words[2] & ~(1 << 23) == 0x87020000 & ~(1 << 23)   # SeaBIOS's is relative
    assert words[4] == 0x50000000
    assert words[6] == 0x98080000


def test_scripts_block_move_and_labels():
    script = lsi_scripts.Script()
    script.label('top')
    script.move(lsi_regs.PHASE_DATA_IN, 512, 0x2000)
    script.jump(script.ref('top'))
    words = struct.unpack('<4I', script.assemble(0x1000))
    assert words[0] == 0x09000200 and words[1] == 0x2000
    assert words[2] == 0x80080000 and words[3] == 0x1000
    with pytest.raises(ValueError, match='24 bits'):
        script.move(lsi_regs.PHASE_DATA_IN, 1 << 24, 0)
    with pytest.raises(ValueError, match='NOP'):
        lsi_scripts.Script().jump(0, if_not=True)
