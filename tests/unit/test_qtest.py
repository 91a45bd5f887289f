"""harness/qemu/qtest.py: the client against a scripted peer (replies, IRQ lines
interleaved with them, deadlines, a peer that goes away), and, where the
QEMU under test has the qtest accelerator, against a real one."""

import os
import socket
import threading

import pytest

from harness.qemu import qtest
from harness.devices import pci
from harness.devices.lsi import driver as lsi
from harness.mpqemu import topology


class ScriptedQEMU:
    """The QEMU side of a qtest socket: answers each command line from a
    script of (expected command, reply lines)."""

    def __init__(self, script):
        self.ours, theirs = socket.socketpair()
        self.client = qtest.QTestClient(theirs, timeout_s=1.0)
        self.received = []
        self.thread = threading.Thread(target=self._serve, args=(list(script),), daemon=True)
        self.thread.start()

    def _serve(self, script):
        reader = self.ours.makefile('rb')
        for expected, replies in script:
            line = reader.readline().decode().rstrip('\n')
            self.received.append(line)
            assert line == expected, (line, expected)
            for reply in replies:
                if reply is None:          # go silent: the client must time out
                    return
                self.ours.sendall(reply.encode() + b'\n')

    def close(self):
        self.client.close()
        self.ours.close()


def test_port_and_memory_commands_and_their_replies():
    peer = ScriptedQEMU([
        ('outl 0xcf8 0x80001800', ['OK']),
        ('inl 0xcfc', ['OK 0x00121000']),
        ('b64write 0x100000 0x3 AQID', ['OK']),
        ('b64read 0x100000 0x3', ['OK AQID']),
    ])
    try:
        peer.client.out(0xcf8, 0x80001800, 4)
        assert peer.client.in_(0xcfc, 4) == 0x00121000
        peer.client.memwrite(0x100000, b'\x01\x02\x03')
        assert peer.client.memread(0x100000, 3) == b'\x01\x02\x03'
        assert peer.client.commands == 4
    finally:
        peer.close()


def test_irq_lines_interleaved_with_replies_are_collected():
    peer = ScriptedQEMU([
        ('irq_intercept_in ioapic', ['OK']),
        ('writeb 0xe0000000 0x1', ['IRQ raise 11', 'OK']),
        ('readb 0xe000000c', ['IRQ lower 11', 'OK 0x84']),
    ])
    try:
        peer.client.irq_intercept_in('ioapic')
        line = qtest.QTestIrqLine(peer.client, 11)
        peer.client.write(0xe0000000, 1, 1)
        assert line.count == 1
        assert line.pending() is True
        assert line.pending() is False          # consumed, like an eventfd
        assert peer.client.read(0xe000000c, 1) == 0x84
        assert line.level() is False
    finally:
        peer.close()


def test_silent_qemu_is_a_timeout_and_an_error_reply_an_error():
    peer = ScriptedQEMU([('inb 0x70', ['FAIL bad port']), ('inb 0x71', [None])])
    try:
        with pytest.raises(qtest.QTestError, match='FAIL bad port'):
            peer.client.in_(0x70, 1)
        with pytest.raises(qtest.QTestTimeout, match='no reply within'):
            peer.client.command('inb 0x71', timeout_s=0.2)
    finally:
        peer.close()


def test_closed_connection_says_qemu_went_away():
    peer = ScriptedQEMU([])
    peer.ours.close()
    with pytest.raises(qtest.QTestError, match='QEMU is gone|closed the qtest connection'):
        peer.client.command('inb 0x70')
    peer.client.close()


def test_listener_without_a_qemu_times_out_and_cleans_up():
    listener = qtest.QTestListener()
    path = listener.path
    assert listener.qemu_args('/tmp/x.log') == ['-qtest', f'unix:{path}', '-qtest-log',
                                                 '/tmp/x.log']
    with pytest.raises(qtest.QTestTimeout, match='no QEMU connected'):
        listener.accept(timeout_s=0.1)
    assert not os.path.exists(os.path.dirname(path))


def test_in_process_lsi_through_real_qtest(caps, tmp_path, disk):
    """The LSI inside a qtest QEMU: config via 0xcf8/0xcfc, BARs, INTx at
    the ioapic after PIRQ routing."""
    if not caps.has_qtest:
        pytest.skip(f'{caps.path} has no qtest accelerator (set QEMU_BIN to a source build: '
                    f'python -m harness.tools.qemu_build debian:bookworm)')
    with topology.Machine(caps, str(tmp_path), placement=topology.IN_PROCESS, accel='qtest',
                          memory_mb=64) as vm:
        client, access = qtest.launch_lsi(vm, drive=disk, slot=3, ram_bytes=64 << 20,
                                          irq_gsi=11)
        try:
            assert access.config_read(pci.VENDOR_ID, 4) == 0x0012_1000
            device = lsi.Lsi53c895a(access, use_irq=True)
            device.setup()
            assert device.inquiry().product == 'QEMU HARDDISK'
            assert device.last_stop.by_irq
        finally:
            client.close()
