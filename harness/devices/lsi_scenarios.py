"""Device-level LSI 53C895A checks shared by every tier that reaches the
device through a :class:`harness.devices.pci.DeviceAccess`.

The protocol tier (tests/functional/test_protocol.py: a remote driven by
the fake proxy) and the qtest tier (tests/functional/test_qtest.py: a real
proxy, or the in-process device, driven through qtest) run the same
checks, so "config space works" or "DMA is byte exact" means the same
thing in both, and a difference between tiers points at the proxy.

Each check takes the running ``unittest.TestCase`` (for its asserts), the
driver and whatever else it needs, asserts exact values, and returns the
figures it measured for the test to record.

The benchmarks (harness/tools/bench.py through the fake proxy,
harness/tools/qtest_bench.py through qtest) measure the same accesses and
DMA over many runs, with :func:`measure_latency` and :func:`measure_dma`.
"""

import os
import statistics
import time
from typing import Callable, Dict

from ..base import bytecheck
from ..base.figures import spread, time_calls
from . import pci
from .lsi import driver as lsi, registers as lsi_regs
from .lsi.errors import LsiTimeout
from .lsi.scripts import INT_DONE, Script
from ..base.units import ms

BLOCK_SIZE = 512
SCSI_CLASS_STORAGE = 0x0100
LSI_ID_DWORD = lsi_regs.DEVICE_ID << 16 | lsi_regs.VENDOR_ID
EXPECTED_BARS = [(0, True, 0x100), (1, False, 0x400), (2, False, 0x2000)]
LATENCY_SAMPLES = 200
BAR_MOVE_BYTES = 0x10_0000
WARMUP_CALLS = 50                       # calls of a probe before it is measured
SCRIPT_RAM_MARKER = 0x1000              # past the code, inside the 8 KiB SCRIPTS RAM
SCRIPT_RAM_TIMEOUT_S = 2.0              # three instructions: milliseconds when they run


def latency_us(call: Callable[[], object], samples: int = LATENCY_SAMPLES) -> Dict[str, float]:
    """Median and spread, in microseconds, of ``samples`` calls."""
    return spread(time_calls(call, samples), 1e6)


def identity_and_bar_programming(test, device: lsi.Lsi53c895a) -> Dict[str, dict]:
    """Config space answers like the real chip, and the BARs programmed
    there decide where the registers appear (moving a BAR moves them)."""
    access = device.access
    test.assertEqual(access.config_read(pci.VENDOR_ID, 4), LSI_ID_DWORD)
    test.assertEqual(access.config_read(pci.CLASS_DEVICE, 2), SCSI_CLASS_STORAGE)
    test.assertEqual(access.config_read(pci.INTERRUPT_PIN, 1), 1)

    layout = [(bar.index, bar.io, bar.size) for bar in device.function.bars]
    test.assertEqual(layout, EXPECTED_BARS)
    for bar in device.function.bars:
        mask = pci.BAR_IO_MASK if bar.io else pci.BAR_MEM_MASK
        raw = access.config_read(pci.BASE_ADDRESS_0 + 4 * bar.index, 4)
        test.assertEqual(raw & mask, bar.address, str(bar))

    mmio = device.function.bar(lsi_regs.MMIO_BAR)
    device.write_reg(lsi_regs.SCRATCHA, 0x600d_cafe, 4)
    mmio.address += BAR_MOVE_BYTES
    device.function.program_bar(mmio)
    test.assertEqual(access.bar_read(mmio.address + lsi_regs.SCRATCHA, 4, True), 0x600d_cafe)

    return {'config_read_us': latency_us(lambda: access.config_read(pci.VENDOR_ID, 4)),
            'config_write_us': latency_us(
                lambda: access.config_write(pci.INTERRUPT_LINE, 0x0b, 1))}


def register_round_trips(test, device: lsi.Lsi53c895a) -> Dict[str, dict]:
    """Writes through either register window land in the one register
    file; byte writes merge; SCRIPTS RAM keeps what is written at both
    ends."""
    regs_bar = device.regs_bar
    try:
        for value in (0x1234_5678, 0xa5a5_a5a5, 0xffff_ffff, 0):
            device.regs_bar = lsi_regs.IO_BAR
            device.write_reg(lsi_regs.SCRATCHB, value, 4)
            device.regs_bar = lsi_regs.MMIO_BAR
            test.assertEqual(device.read_reg(lsi_regs.SCRATCHB, 4), value)
    finally:
        device.regs_bar = regs_bar
    device.write_reg(lsi_regs.SCRATCHA, 0, 4)
    device.write_reg(lsi_regs.SCRATCHA + 3, 0x7e, 1)
    test.assertEqual(device.read_reg(lsi_regs.SCRATCHA, 4), 0x7e00_0000)

    for offset, value in ((0, 0x0bad_f00d), (lsi_regs.SCRIPT_RAM_SIZE - 4, 0xfeed_beef)):
        device.script_ram_write(offset, value)
        test.assertEqual(device.script_ram_read(offset), value)

    access = device.access
    scratcha = device.function.bar(lsi_regs.MMIO_BAR).address + lsi_regs.SCRATCHA
    io_scratcha = device.function.bar(lsi_regs.IO_BAR).address + lsi_regs.SCRATCHA
    return {'bar_read_us': latency_us(lambda: access.bar_read(scratcha, 4, True)),
            'bar_write_us': latency_us(lambda: access.bar_write(scratcha, 1, 4, True)),
            'bar_read_io_us': latency_us(lambda: access.bar_read(io_scratcha, 4, False))}


def dma_read_is_byte_exact(test, device: lsi.Lsi53c895a, image: str,
                           length: int, lba: int = 2047) -> Dict[str, float]:
    """READ(10) of ``length`` bytes puts the image's bytes, every one of
    them, into guest RAM; and the check does notice one wrong byte."""
    access = device.access
    device.wait_ready()
    buf = access.dma_alloc(length, 4096)
    try:
        started = time.monotonic()
        device.read10_to(buf, lba, length // BLOCK_SIZE)
        elapsed = time.monotonic() - started
        expected = bytecheck.read_image(image, lba * BLOCK_SIZE, length)
        bytecheck.assert_same_bytes(access.mem_read(buf, length), expected,
                                    'guest RAM after READ(10)')

        corrupt_at = length - 3
        access.mem_write(buf + corrupt_at, bytes([expected[corrupt_at] ^ 0x80]))
        with test.assertRaisesRegex(AssertionError, f'1 byte.* offset {corrupt_at} '):
            bytecheck.assert_same_bytes(access.mem_read(buf, length), expected,
                                        'guest RAM with one flipped bit')
    finally:
        access.dma_free(buf)
    return {'dma_read_MBps': round(length / elapsed / 1e6, 1), 'dma_read_bytes': length}


def dma_write_is_byte_exact(test, device: lsi.Lsi53c895a, image: str,
                            length: int, lba: int = 5) -> Dict[str, float]:
    """WRITE(10) of ``length`` bytes from guest RAM reaches the image."""
    device.wait_ready()
    payload = os.urandom(length)
    started = time.monotonic()
    device.write10(lba, payload)
    elapsed = time.monotonic() - started
    bytecheck.assert_same_bytes(bytecheck.read_image(image, lba * BLOCK_SIZE, length),
                                payload, 'image file after WRITE(10)')
    return {'dma_write_MBps': round(length / elapsed / 1e6, 1), 'dma_write_bytes': length}


def interrupt_ends_command(test, device: lsi.Lsi53c895a, irq) -> Dict[str, float]:
    """With DIEN set, the SCRIPTS INT that ends a command raises INTx:
    one edge, and none again once DSTAT has been read."""
    device.use_irq = True
    try:
        edges = irq.count
        test.assertEqual(device.inquiry().product, 'QEMU HARDDISK')
        test.assertTrue(device.last_stop.by_irq, str(device.last_stop))
        test.assertEqual(irq.count, edges + 1)
        test.assertFalse(irq.wait(0.05), 'INTx raised again after DSTAT was read')
    finally:
        device.use_irq = False
    return {'irq_command_ms': ms(device.last_stop.elapsed_s, 3)}


def scripts_run_from_script_ram(test, device: lsi.Lsi53c895a) -> Dict[str, float]:
    """SCRIPTS loaded into the chip's own SCRIPTS RAM run there, and MEMORY
    MOVEs reach that RAM in both directions, as with Linux's sym53c8xx
    (which runs its SCRIPTS from on-chip RAM).  The chip fetches those
    instructions by DMA from its own BAR 2, so the address space the
    device DMAs into must hold its BARs, not only guest RAM."""
    base = device.function.bar(lsi_regs.SCRIPT_RAM_BAR).address
    marker = int.from_bytes(os.urandom(4), 'little') | 1
    device.script_ram_write(SCRIPT_RAM_MARKER, marker)
    device.script_ram_write(SCRIPT_RAM_MARKER + 4, 0)
    buf = device.access.dma_alloc(4)
    try:
        device.access.mem_write(buf, bytes(4))
        script = Script() \
            .memory_move(4, base + SCRIPT_RAM_MARKER, buf) \
            .memory_move(4, buf, base + SCRIPT_RAM_MARKER + 4) \
            .int_(INT_DONE)
        try:
            stop = device.run_in_script_ram(script, timeout_s=SCRIPT_RAM_TIMEOUT_S)
        except LsiTimeout as err:
            device.soft_reset()         # the chip runs on; stop it before the next check
            test.fail(f"SCRIPTS loaded into the chip's SCRIPTS RAM at {base:#x} did not "
                      f"stop at their INT: {err}")
        test.assertEqual(int.from_bytes(device.access.mem_read(buf, 4), 'little'), marker,
                         'MEMORY MOVE out of the SCRIPTS RAM into guest RAM')
    finally:
        device.access.dma_free(buf)
    test.assertEqual(device.script_ram_read(SCRIPT_RAM_MARKER + 4), marker,
                     'MEMORY MOVE from guest RAM into the SCRIPTS RAM')
    return {'script_ram_run_ms': ms(stop.elapsed_s, 3)}


# ---------------------------------------------------------------- benchmarks

def latency_probes(device: lsi.Lsi53c895a) -> Dict[str, Callable[[], object]]:
    """The proxied accesses whose round trip is measured, by name.  They go
    through ``device.access`` (the fake proxy's in harness/tools/bench.py,
    qtest's in harness/tools/qtest_bench.py)."""
    proxy = device.access
    mmio = device.function.bar(lsi_regs.MMIO_BAR).address
    io = device.function.bar(lsi_regs.IO_BAR).address
    return {
        'config_read': lambda: proxy.config_read(pci.VENDOR_ID, 4),
        'config_write': lambda: proxy.config_write(pci.INTERRUPT_LINE, 0x0b, 1),
        'bar_read_mmio': lambda: proxy.bar_read(mmio + lsi_regs.SCRATCHA, 4, True),
        'bar_write_mmio': lambda: proxy.bar_write(mmio + lsi_regs.SCRATCHA, 0x5a5a5a5a, 4, True),
        'bar_read_io': lambda: proxy.bar_read(io + lsi_regs.SCRATCHA, 4, False),
    }


def measure_latency(device: lsi.Lsi53c895a, runs: int, samples: int) -> Dict[str, dict]:
    """Round-trip latency in microseconds of each probe: the spread over
    all samples of all runs, plus each run's median."""
    results = {}
    for name, probe in latency_probes(device).items():
        time_calls(probe, WARMUP_CALLS)
        all_times, run_medians = [], []
        for _ in range(runs):
            times = time_calls(probe, samples)
            all_times += times
            run_medians.append(round(statistics.median(times) * 1e6, 1))
        results[name] = dict(spread(all_times, 1e6), unit='us', run_medians=run_medians)
    return results


def measure_dma(device: lsi.Lsi53c895a, image: str, runs: int,
                length: int) -> Dict[str, dict]:
    """READ(10) and WRITE(10) throughput in MB/s (10^6 bytes per second),
    one figure per run; every run's data is checked byte for byte."""
    blocks = length // BLOCK_SIZE
    memory = device.access
    buf = memory.dma_alloc(length, 4096)
    reads, writes = [], []
    try:
        device.wait_ready()
        expected = bytecheck.read_image(image, 0, length)
        for run in range(runs):
            memory.mem_write(buf, b'\0' * length)
            started = time.perf_counter()
            device.read10_to(buf, 0, blocks)
            reads.append(length / (time.perf_counter() - started) / 1e6)
            bytecheck.assert_same_bytes(memory.mem_read(buf, length), expected,
                                        f'READ(10) run {run}')
        for run in range(runs):
            payload = os.urandom(length)
            memory.mem_write(buf, payload)
            started = time.perf_counter()
            device.write10_from(buf, 0, blocks)
            writes.append(length / (time.perf_counter() - started) / 1e6)
            bytecheck.assert_same_bytes(bytecheck.read_image(image, 0, length), payload,
                                        f'image after WRITE(10) run {run}')
    finally:
        memory.dma_free(buf)
    return {'dma_read': dict(spread(reads), unit='MB/s', bytes=length),
            'dma_write': dict(spread(writes), unit='MB/s', bytes=length)}
