"""The hostile remote without QEMU: its model, its replies as bytes, and
its serving thread against the harness's own fake proxy (which, unlike
QEMU's proxy, refuses every illegal reply)."""

import socket

import pytest

from harness.agent import hostile_fuzz
from harness.base.fdstream import ProtocolError, RemoteGone
from harness.base.waiting import wait_until
from harness.devices import pci
from harness.mpqemu import protocol
from harness.mpqemu.hostile import model, replies
from harness.mpqemu.hostile.remote import UNSOLICITED_VALUE, HostileRemote
from harness.mpqemu.hostile.replies import CORRECT, Reply
from harness.mpqemu.protocol import Cmd, FakeProxy

IDENTITY = model.DEVICE_ID << 16 | model.VENDOR_ID


@pytest.fixture
def link():
    """A hostile remote serving a fake proxy over a socketpair."""
    proxy_end, remote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    remote = HostileRemote()
    remote.attach(remote_end)
    proxy = FakeProxy(proxy_end, timeout_s=2.0)
    yield proxy, remote
    proxy.close()
    remote.close()


def test_model_answers_the_identity_and_sizes_its_bars():
    function = model.FunctionModel()
    assert function.config_read(pci.VENDOR_ID, 4) == IDENTITY
    assert function.config_read(pci.CLASS_DEVICE, 2) == model.CLASS_OTHERS
    bar = pci.BASE_ADDRESS_0 + 4 * model.MMIO_BAR
    function.config_write(bar, 0xffffffff, 4)
    assert function.config_read(bar, 4) == (~(model.MMIO_BAR_SIZE - 1) & 0xffffffff)
    function.config_write(bar, 0xfebff123, 4)
    assert function.config_read(bar, 4) == 0xfebff000
    function.config_write(pci.VENDOR_ID, 0, 2)                 # read-only
    assert function.config_read(pci.VENDOR_ID, 2) == model.VENDOR_ID
    assert function.config_read(0xfe, 4) == model.UINT64_MAX   # past the end
    function.bar_write(0xfebff010, 0xbeef, 2, memory=True)
    assert function.bar_read(0xfebff010, 2, memory=True) == 0xbeef
    function.reset()
    assert function.bar_read(0xfebff010, 2, memory=True) == 0


def test_a_probe_answer_replaces_the_size_mask():
    bars = model.default_bars()
    bars[2] = model.Bar(0x10, io=False, probe_answer=0xfffffe10)
    function = model.FunctionModel(bars=bars)
    function.config_write(0x18, 0xffffffff, 4)
    assert function.config_read(0x18, 4) == 0xfffffe10


def test_reply_bytes():
    rng = hostile_fuzz.random.Random(0)
    frame = CORRECT.frame(0x1234, False, rng)
    assert frame == protocol.ret(0x1234).encode()
    assert CORRECT.frame(None, True, rng) == protocol.ret(None).encode()
    assert len(Reply(size=106).frame(1, False, rng)) == protocol.HEADER_SIZE + 106
    assert len(Reply(size=1 << 40, data_len=0).frame(1, False, rng)) == protocol.HEADER_SIZE
    split = Reply(fragments=3)
    assert b''.join(split.pieces(frame)) == frame and len(split.pieces(frame)) == 3
    assert Reply(end='truncate', data_len=5).pieces(frame) == [frame[:5]]


def test_which_replies_are_legal():
    assert CORRECT.legal() and CORRECT.legal(reset=True)
    assert Reply('lie', value=7).legal() and Reply('late', delay_s=1).legal()
    for reply in (Reply(size=4), Reply(cmd=Cmd.PCI_CFGREAD), Reply(fds=('eventfd',)),
                  Reply(copies=2), Reply(before=1), Reply(end='eof')):
        assert not reply.legal(), reply
    assert Reply(copies=2).queued == 1 and Reply(before=1).queued == 1
    with pytest.raises(ValueError, match='reply end'):
        Reply(end='explode')


def test_cases_are_deterministic_and_cover_every_family():
    assert hostile_fuzz.generate(3, 17) == hostile_fuzz.generate(3, 17)
    cases = [hostile_fuzz.generate(1, i) for i in range(3000)]
    assert {c.reply.family for c in cases} == set(replies.FAMILIES)
    assert {(c.access.kind, c.access.write, c.access.size) for c in cases} >= {
        (kind, write, size) for kind in ('io', 'mem') for write in (False, True)
        for size in (1, 2, 4)}
    case = cases[5]
    assert hostile_fuzz.Case.from_json(case.to_json()) == case


def test_correct_remote_answers_the_fake_proxy(link):
    proxy, remote = link
    assert proxy.config_read(pci.VENDOR_ID, 4) == IDENTITY
    proxy.config_write(0x0c, 0x10, 1)
    assert proxy.config_read(0x0c, 1) == 0x10
    proxy.device_reset()
    assert remote.model.resets == 1
    assert [e.cmd for e in remote.requests()] == [Cmd.PCI_CFGREAD, Cmd.PCI_CFGWRITE,
                                                  Cmd.PCI_CFGREAD, Cmd.DEVICE_RESET]


def test_armed_replies_reach_the_next_access_only(link):
    proxy, remote = link
    remote.arm(Reply('wrong-cmd', cmd=Cmd.BAR_READ, size=24))
    with pytest.raises(ProtocolError, match='expected a RET'):
        proxy.config_read(pci.VENDOR_ID, 4)
    remote.arm(Reply('fds', fds=('memfd:8192', 'socket')))
    with pytest.raises(ProtocolError, match='2 unexpected fds'):
        proxy.config_read(pci.VENDOR_ID, 4)
    assert proxy.config_read(pci.VENDOR_ID, 4) == IDENTITY


def test_extra_replies_are_taken_by_the_next_requests_then_in_step(link):
    proxy, remote = link
    remote.arm(Reply('unsolicited', before=1))
    assert proxy.config_read(pci.VENDOR_ID, 4) == UNSOLICITED_VALUE & 0xffffffff
    assert remote.queued == 1
    assert proxy.config_read(pci.CLASS_DEVICE, 2) == IDENTITY & 0xffff    # stale
    # The proxy had the queued RET before the remote read its request.
    wait_until(lambda: remote.queued == 0, 2.0, 'the remote to see the request')
    assert proxy.config_read(pci.CLASS_DEVICE, 2) == model.CLASS_OTHERS
    assert remote.requests()[1].taken_by_queue


def test_hang_up_ends_the_proxy_wait(link):
    proxy, remote = link
    remote.arm(Reply('ends', end='silent'))
    with pytest.raises(protocol.RemoteTimeout):
        proxy.config_read(pci.VENDOR_ID, 4, timeout_s=0.3)
    remote.hang_up()
    with pytest.raises(RemoteGone):
        proxy.config_read(pci.VENDOR_ID, 4, timeout_s=2.0)
    remote.close()
    assert not remote.serving
