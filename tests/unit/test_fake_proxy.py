"""A real remote LSI 53C895A driven by the harness's fake proxy.

No proxy QEMU and no guest: the test owns the socket, the guest RAM (a
memfd it sends with SYNC_SYSMEM) and the INTx eventfds (SET_IRQFD), so
everything here runs in milliseconds under any accelerator, and sees
interrupts that a real proxy only forwards with KVM.
"""

import os
import time
from dataclasses import dataclass

import pytest

from harness.base.bytecheck import assert_same_bytes, read_image, write_random_image
from harness.base.figures import spread, time_calls
from harness.devices import pci
from harness.devices.lsi import driver as lsi, registers as lsi_regs, scsi
from harness.devices.lsi.errors import SelectionTimeout
from harness.mpqemu import fake_remote, protocol
from harness.qemu.guestmem import GuestMemory
from harness.mpqemu.faults import FaultInjector
from harness.qemu.process import QEMUProcess

from conftest import pid_alive

IMAGE_SIZE = 16 << 20
BLOCK_SIZE = 512
RAM_SIZE = 32 << 20
SECOND_RAM_GPA = 0x4000_0000
SECOND_RAM_SIZE = 8 << 20
DMA_BYTES = 6 << 20                 # "several MiB", and more than one scsi-disk chunk
REPLY_TIMEOUT_S = 5.0               # generous: only there so that nothing hangs
STOPPED_TIMEOUT_S = 0.3
EXIT_TIMEOUT_S = 5.0
LATENCY_SAMPLES = 500


@dataclass
class Remote:
    process: QEMUProcess
    faults: FaultInjector
    proxy: protocol.FakeProxy
    memory: GuestMemory
    device: lsi.Lsi53c895a
    image: str

    def image_bytes(self, offset: int, length: int) -> bytes:
        return read_image(self.image, offset, length)


@pytest.fixture
def image(tmp_path):
    return write_random_image(str(tmp_path / 'disk.raw'), IMAGE_SIZE)


@pytest.fixture
def remote(caps, image, tmp_path):
    with fake_remote.launch(caps, log_dir=str(tmp_path), drive=image, ram_size=RAM_SIZE,
                            extra_args=['-trace', 'lsi_reset'],
                            timeout_s=REPLY_TIMEOUT_S) as launched:
        device = lsi.Lsi53c895a(launched.access)
        device.setup()
        yield Remote(launched.remote.process, launched.remote.faults, launched.proxy, launched.memory, device, image)


def lsi_resets_logged(remote: Remote) -> int:
    return remote.process.count_trace_events('lsi_reset')


# ---------------------------------------------------------------- config space

def test_identity_through_config_space(remote):
    proxy = remote.proxy
    assert proxy.config_read(pci.VENDOR_ID, 2) == lsi_regs.VENDOR_ID == 0x1000
    assert proxy.config_read(pci.DEVICE_ID, 2) == lsi_regs.DEVICE_ID == 0x0012
    assert proxy.config_read(pci.VENDOR_ID, 4) == 0x0012_1000
    assert proxy.config_read(pci.CLASS_DEVICE, 2) == 0x0100        # SCSI storage
    assert proxy.config_read(pci.INTERRUPT_PIN, 1) == 1            # INTA


def test_bars_are_sized_and_programmed(remote):
    bars = {bar.index: bar for bar in remote.device.function.bars}
    assert sorted(bars) == [lsi_regs.IO_BAR, lsi_regs.MMIO_BAR, lsi_regs.SCRIPT_RAM_BAR]
    assert (bars[0].io, bars[0].size) == (True, 0x100)
    assert (bars[1].io, bars[1].size) == (False, 0x400)
    assert (bars[2].io, bars[2].size) == (False, 0x2000)
    for bar in bars.values():
        offset = pci.BASE_ADDRESS_0 + 4 * bar.index
        mask = pci.BAR_IO_MASK if bar.io else pci.BAR_MEM_MASK
        assert remote.proxy.config_read(offset, 4) & mask == bar.address
    assert remote.device.function.command() & 0x7 == \
        pci.COMMAND_IO | pci.COMMAND_MEMORY | pci.COMMAND_MASTER


# ---------------------------------------------------------------- registers

@pytest.mark.parametrize('regs_bar', [lsi_regs.IO_BAR, lsi_regs.MMIO_BAR], ids=['io', 'mmio'])
def test_scratcha_round_trip(remote, regs_bar):
    device = remote.device
    device.regs_bar = regs_bar
    for value in (0x12345678, 0xa5a5a5a5, 0):
        device.write_reg(lsi_regs.SCRATCHA, value, 4)
        assert device.read_reg(lsi_regs.SCRATCHA, 4) == value
    device.write_reg(lsi_regs.SCRATCHA + 2, 0xee, 1)
    assert device.read_reg(lsi_regs.SCRATCHA, 4) == 0x00ee0000


def test_script_ram_round_trip(remote):
    remote.device.script_ram_write(0x1ffc, 0xfeedf00d)
    assert remote.device.script_ram_read(0x1ffc) == 0xfeedf00d


def test_device_reset_clears_scratcha(remote):
    device = remote.device
    resets_before = lsi_resets_logged(remote)
    device.write_reg(lsi_regs.SCRATCHA, 0xdeadbeef, 4)
    remote.proxy.device_reset()
    assert device.read_reg(lsi_regs.SCRATCHA, 4) == 0
    assert lsi_resets_logged(remote) == resets_before + 1


# ---------------------------------------------------------------- SCSI

def test_inquiry(remote):
    inquiry = remote.device.inquiry()
    assert (inquiry.peripheral_type, inquiry.vendor, inquiry.product) == \
        (0, 'QEMU', 'QEMU HARDDISK')


def test_first_command_after_reset_reports_unit_attention(remote):
    assert remote.device.test_unit_ready() == scsi.STATUS_CHECK_CONDITION
    sense = remote.device.request_sense()
    assert (sense[2] & 0xf, sense[12]) == (0x6, 0x29)     # UNIT ATTENTION, power on/reset
    assert remote.device.test_unit_ready() == scsi.STATUS_GOOD


def test_absent_target_is_a_selection_timeout(remote):
    remote.device.target = 5
    with pytest.raises(SelectionTimeout, match='scsi-id=5'):
        remote.device.inquiry()


def test_dma_read_matches_the_image(remote, record_property):
    device = remote.device
    device.wait_ready()
    lba = 1001                     # not aligned to anything on purpose
    started = time.monotonic()
    data = device.read10(lba, DMA_BYTES // BLOCK_SIZE)
    elapsed = time.monotonic() - started
    assert_same_bytes(data, remote.image_bytes(lba * BLOCK_SIZE, DMA_BYTES), 'READ(10)')
    record_property('dma_read_MBps', round(DMA_BYTES / elapsed / 1e6, 1))


def test_dma_write_reaches_the_image(remote, record_property):
    device = remote.device
    device.wait_ready()
    lba = 3333
    payload = os.urandom(DMA_BYTES)
    started = time.monotonic()
    device.write10(lba, payload)
    elapsed = time.monotonic() - started
    assert_same_bytes(remote.image_bytes(lba * BLOCK_SIZE, DMA_BYTES), payload,
                      'image after WRITE(10)')
    assert_same_bytes(device.read10(lba, DMA_BYTES // BLOCK_SIZE), payload,
                      'READ(10) after WRITE(10)')
    record_property('dma_write_MBps', round(DMA_BYTES / elapsed / 1e6, 1))


def test_a_single_corrupted_byte_fails_the_comparison(remote):
    device = remote.device
    device.wait_ready()
    length = 1 << 20
    buf = remote.memory.alloc(length, 4096)
    device.read10_to(buf, 0, length // BLOCK_SIZE)
    expected = remote.image_bytes(0, length)
    assert_same_bytes(remote.memory.read(buf, length), expected, 'READ(10)')
    corrupt_at = 123457
    remote.memory.write(buf + corrupt_at, bytes([expected[corrupt_at] ^ 0x01]))
    with pytest.raises(AssertionError, match=f'1 byte.* offset {corrupt_at} '):
        assert_same_bytes(remote.memory.read(buf, length), expected, 'READ(10)')


def test_memory_to_memory_move(remote):
    length = 3 << 20
    src = remote.memory.alloc(length)
    dst = remote.memory.alloc(length)
    payload = os.urandom(length)
    remote.memory.write(src, payload)
    remote.device.memory_move(dst, src, length)
    assert_same_bytes(remote.memory.read(dst, length), payload, 'MEMORY MOVE')


def test_second_memory_region_synced_later_is_usable_for_dma(remote):
    memory, device = remote.memory, remote.device
    second = memory.add_region(SECOND_RAM_GPA, SECOND_RAM_SIZE, 'guest-ram-high')
    # SYNC_SYSMEM replaces the remote's whole table (hw/remote/memory.c).
    remote.proxy.sync_sysmem(memory.sysmem_table())
    mtree = remote.process.hmp('info mtree -f')
    assert mtree.count('remote-mem-') >= 2, mtree

    device.wait_ready()
    length = 2 << 20
    high = memory.alloc(length, 4096, region=second)
    device.read10_to(high, 64, length // BLOCK_SIZE)
    assert_same_bytes(memory.read(high, length), remote.image_bytes(64 * BLOCK_SIZE, length),
                      'READ(10) into the second region')
    low = memory.alloc(length, 4096)
    device.memory_move(low, high, length)
    assert_same_bytes(memory.read(low, length), memory.read(high, length),
                      'MEMORY MOVE from the second region')


# ---------------------------------------------------------------- interrupts

def test_interrupt_is_seen_on_the_eventfd(remote):
    device, irq = remote.device, remote.proxy.irq
    device.use_irq = True
    edges_before = irq.count
    assert device.inquiry().vendor == 'QEMU'
    assert device.last_stop.by_irq
    assert irq.count == edges_before + 1
    # Reading DSTAT lowered the line: nothing more is pending.
    assert not irq.wait(0.05)


def test_no_interrupt_while_dien_masks_it(remote):
    device, irq = remote.device, remote.proxy.irq
    device.inquiry()                          # polled: DIEN = 0
    assert not device.last_stop.by_irq
    assert not irq.pending()


# ---------------------------------------------------------------- faults

def test_killed_remote_is_a_bounded_remote_gone(remote):
    remote.faults.kill()
    started = time.monotonic()
    with pytest.raises(protocol.RemoteGone, match='exited or was killed'):
        remote.device.read_reg(lsi_regs.SCRATCHA, 4)
    assert time.monotonic() - started < REPLY_TIMEOUT_S


def test_stopped_remote_is_a_bounded_timeout_and_recovers(remote):
    remote.device.write_reg(lsi_regs.SCRATCHA, 0x5a5a5a5a, 4)
    remote.faults.hang()
    try:
        started = time.monotonic()
        with pytest.raises(protocol.RemoteTimeout, match='SIGSTOP'):
            remote.proxy.bar_read(remote.device.function.bar(lsi_regs.MMIO_BAR).address
                                  + lsi_regs.SCRATCHA, 4, timeout_s=STOPPED_TIMEOUT_S)
        assert time.monotonic() - started < STOPPED_TIMEOUT_S + REPLY_TIMEOUT_S
    finally:
        remote.faults.resume()
    # The late reply is drained; the link is in step again.
    assert remote.device.read_reg(lsi_regs.SCRATCHA, 4) == 0x5a5a5a5a


def test_remote_exits_when_the_proxy_side_closes(remote):
    remote.proxy.close()
    assert remote.process.wait_exit(EXIT_TIMEOUT_S)
    assert not pid_alive(remote.process.pid)


# ---------------------------------------------------------------- figures

def test_round_trip_latency_is_recorded(remote, record_property):
    """Figures, not asserts: benchmarks compare them across runs."""
    proxy, device = remote.proxy, remote.device
    samples = {'config_read_us': lambda: proxy.config_read(pci.VENDOR_ID, 4),
               'bar_read_us': lambda: device.read_reg(lsi_regs.SCRATCHA, 4),
               'bar_write_us': lambda: device.write_reg(lsi_regs.SCRATCHA, 1, 4)}
    for name, access in samples.items():
        times = time_calls(access, LATENCY_SAMPLES)
        record_property(name, spread(times, 1e6)['median'])
