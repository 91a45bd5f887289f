"""A remote LSI 53C895A driven through the multi-process wire protocol alone.

No proxy QEMU and no guest: the test plays the proxy (harness.mpqemu's fake
proxy), owns the guest RAM the remote DMAs into (a memfd sent with
SYNC_SYSMEM) and the INTx eventfds (SET_IRQFD).  So these scenarios run in
milliseconds under any accelerator, on any QEMU with ``-machine x-remote``
(also 10.0, whose proxy cannot run without KVM), and they see interrupts
that a real proxy forwards only with KVM.

Each scenario is one property of the remote a proxy relies on; the remote's
log (with the ``lsi_reset`` trace event) and command line are in the output
directory, latencies and throughput in the whiteboard.
"""

import os
import signal
import time

from harness import bench, bytecheck
from harness.devices import lsi, pci
from harness.mpqemu import fake_remote, protocol
from harness.testing import MIB, MultiprocessTest

IMAGE_BYTES = 16 * MIB
BLOCK_SIZE = 512
RAM_BYTES = 32 * MIB
DMA_BYTES = 6 * MIB                 # several MiB: more than one scsi-disk request
HIGH_RAM_GPA = 0x4000_0000          # the region synced later, 1 GiB up
HIGH_RAM_BYTES = 8 * MIB
REPLY_TIMEOUT_S = 5.0               # generous: it only keeps a broken remote from hanging us
STOPPED_REPLY_TIMEOUT_S = 0.3
LATENCY_SAMPLES = 200
SCSI_CLASS_STORAGE = 0x0100
RESET_TRACE_EVENT = 'lsi_reset'


class RemoteLsiOverProtocol(MultiprocessTest):
    """
    :avocado: enable
    :avocado: tags=protocol
    """

    def setUp(self):
        super().setUp()
        self.image = bytecheck.write_random_image(os.path.join(self.workdir, 'disk.raw'),
                                                  IMAGE_BYTES)
        started = time.monotonic()
        self.remote = fake_remote.launch(self.caps, log_dir=self.outputdir, drive=self.image,
                                         ram_size=RAM_BYTES, timeout_s=REPLY_TIMEOUT_S,
                                         extra_args=['-trace', RESET_TRACE_EVENT])
        self.proxy = self.remote.proxy
        self.lsi = lsi.Lsi53c895a(self.remote.access)
        self.lsi.setup()
        self.record(remote_up_ms=round((time.monotonic() - started) * 1000, 1))

    def tearDown(self):
        self.remote.close()
        super().tearDown()

    def record_latency(self, name, access):
        self.record(**{f'{name}_us': bench.spread(bench.time_calls(access, LATENCY_SAMPLES),
                                                  1e6)})

    # ------------------------------------------------------------ config space

    def test_identity_and_bar_programming_through_config_space(self):
        """The remote answers config space like the real chip, and the BARs
        the proxy programs there decide where its registers appear."""
        self.assertEqual(self.proxy.config_read(pci.VENDOR_ID, 4), 0x0012_1000)
        self.assertEqual(self.proxy.config_read(pci.CLASS_DEVICE, 2), SCSI_CLASS_STORAGE)
        self.assertEqual(self.proxy.config_read(pci.INTERRUPT_PIN, 1), 1)

        layout = [(bar.index, bar.io, bar.size) for bar in self.lsi.function.bars]
        self.assertEqual(layout, [(0, True, 0x100), (1, False, 0x400), (2, False, 0x2000)])
        for bar in self.lsi.function.bars:
            mask = pci.BAR_IO_MASK if bar.io else pci.BAR_MEM_MASK
            raw = self.proxy.config_read(pci.BASE_ADDRESS_0 + 4 * bar.index, 4)
            self.assertEqual(raw & mask, bar.address, str(bar))

        # Move the register BAR: the registers follow it.
        mmio = self.lsi.function.bar(lsi.MMIO_BAR)
        self.lsi.write_reg(lsi.SCRATCHA, 0x600d_cafe, 4)
        mmio.address += 0x10_0000
        self.lsi.function.program_bar(mmio)
        self.assertEqual(self.proxy.bar_read(mmio.address + lsi.SCRATCHA, 4), 0x600d_cafe)

        self.record_latency('config_read', lambda: self.proxy.config_read(pci.VENDOR_ID, 4))

    # ------------------------------------------------------------ registers

    def test_register_round_trips(self):
        """Writes through either register window land in the one register
        file; SCRIPTS RAM keeps what is written at both ends."""
        for value in (0x1234_5678, 0xa5a5_a5a5, 0xffff_ffff, 0):
            self.lsi.regs_bar = lsi.IO_BAR
            self.lsi.write_reg(lsi.SCRATCHB, value, 4)
            self.lsi.regs_bar = lsi.MMIO_BAR
            self.assertEqual(self.lsi.read_reg(lsi.SCRATCHB, 4), value)
        self.lsi.write_reg(lsi.SCRATCHA, 0, 4)
        self.lsi.write_reg(lsi.SCRATCHA + 3, 0x7e, 1)
        self.assertEqual(self.lsi.read_reg(lsi.SCRATCHA, 4), 0x7e00_0000)

        for offset, value in ((0, 0x0bad_f00d), (lsi.SCRIPT_RAM_SIZE - 4, 0xfeed_beef)):
            self.lsi.script_ram_write(offset, value)
            self.assertEqual(self.lsi.script_ram_read(offset), value)

        scratcha = self.lsi.function.bar(lsi.MMIO_BAR).address + lsi.SCRATCHA
        self.record_latency('bar_read', lambda: self.proxy.bar_read(scratcha, 4))
        self.record_latency('bar_write', lambda: self.proxy.bar_write(scratcha, 1, 4))

    # ------------------------------------------------------------ DMA

    def test_dma_read_is_byte_exact(self):
        """READ(10) of several MiB puts the image's bytes, every one of
        them, into guest RAM; and the check does notice one wrong byte."""
        self.lsi.wait_ready()
        lba = 2047                                  # deliberately unaligned
        buf = self.remote.memory.alloc(DMA_BYTES, 4096)
        started = time.monotonic()
        self.lsi.read10_to(buf, lba, DMA_BYTES // BLOCK_SIZE)
        elapsed = time.monotonic() - started
        expected = bytecheck.read_image(self.image, lba * BLOCK_SIZE, DMA_BYTES)
        bytecheck.assert_same_bytes(self.remote.memory.read(buf, DMA_BYTES), expected,
                                    'guest RAM after READ(10)')
        self.record(dma_read_MBps=round(DMA_BYTES / elapsed / 1e6, 1), dma_read_bytes=DMA_BYTES)

        corrupt_at = DMA_BYTES - 3
        self.remote.memory.write(buf + corrupt_at, bytes([expected[corrupt_at] ^ 0x80]))
        with self.assertRaisesRegex(AssertionError, f'1 byte.* offset {corrupt_at} '):
            bytecheck.assert_same_bytes(self.remote.memory.read(buf, DMA_BYTES), expected,
                                        'guest RAM with one flipped bit')

    def test_dma_write_is_byte_exact(self):
        """WRITE(10) of several MiB from guest RAM reaches the image file."""
        self.lsi.wait_ready()
        lba = 5
        payload = os.urandom(DMA_BYTES)
        started = time.monotonic()
        self.lsi.write10(lba, payload)
        elapsed = time.monotonic() - started
        bytecheck.assert_same_bytes(bytecheck.read_image(self.image, lba * BLOCK_SIZE,
                                                          DMA_BYTES),
                                    payload, 'image file after WRITE(10)')
        self.record(dma_write_MBps=round(DMA_BYTES / elapsed / 1e6, 1),
                    dma_write_bytes=DMA_BYTES)

    def test_second_memory_region_synced_later_is_usable_for_dma(self):
        """RAM added after start-up (a new SYNC_SYSMEM table, as the proxy
        sends on memory hotplug) is mapped by the remote and its DMA
        reaches it in both directions."""
        memory = self.remote.memory
        high = memory.add_region(HIGH_RAM_GPA, HIGH_RAM_BYTES, 'guest-ram-high')
        self.proxy.sync_sysmem(memory.sysmem_table())
        mtree = self.remote.process.hmp('info mtree -f')
        self.assertGreaterEqual(mtree.count('remote-mem-'), 2, mtree)

        self.lsi.wait_ready()
        length = 4 * MIB
        high_buf = memory.alloc(length, 4096, region=high)
        self.assertGreaterEqual(high_buf, HIGH_RAM_GPA)
        self.lsi.read10_to(high_buf, 100, length // BLOCK_SIZE)
        bytecheck.assert_same_bytes(memory.read(high_buf, length),
                                    bytecheck.read_image(self.image, 100 * BLOCK_SIZE, length),
                                    'second region after READ(10)')
        self.lsi.write10_from(high_buf, 20000, length // BLOCK_SIZE)
        bytecheck.assert_same_bytes(bytecheck.read_image(self.image, 20000 * BLOCK_SIZE, length),
                                    memory.read(high_buf, length),
                                    'image after WRITE(10) from the second region')

    # ------------------------------------------------------------ interrupts

    def test_interrupt_is_observed_on_the_eventfd(self):
        """With DIEN set, the SCRIPTS INT that ends a command raises INTx:
        one edge on the irqfd, and none once DSTAT has been read."""
        irq = self.proxy.irq
        self.lsi.use_irq = True
        edges = irq.count
        self.assertEqual(self.lsi.inquiry().product, 'QEMU HARDDISK')
        self.assertTrue(self.lsi.last_stop.by_irq, str(self.lsi.last_stop))
        self.assertEqual(irq.count, edges + 1)
        self.assertFalse(irq.wait(0.05), 'INTx raised again after DSTAT was read')
        self.record(irq_command_ms=round(self.lsi.last_stop.elapsed_s * 1000, 3))

    # ------------------------------------------------------------ reset

    def test_device_reset_clears_device_state(self):
        """DEVICE_RESET runs the chip's reset (traced as lsi_reset in the
        remote's log) and clears its registers; being a device reset, not
        a bus reset, it leaves the BARs where the proxy put them."""
        resets = self.remote.process.count_log_lines(RESET_TRACE_EVENT)
        for register in (lsi.SCRATCHA, lsi.SCRATCHB, lsi.DSA):
            self.lsi.write_reg(register, 0xdead_beef, 4)
        self.lsi.write_reg(lsi.DIEN, lsi.DSTAT_SIR)

        self.proxy.device_reset()

        for register in (lsi.SCRATCHA, lsi.SCRATCHB, lsi.DSA):
            self.assertEqual(self.lsi.read_reg(register, 4), 0, lsi.REGISTER_NAMES[register])
        self.assertEqual(self.lsi.read_reg(lsi.DIEN), 0)
        self.assertEqual(self.remote.process.count_log_lines(RESET_TRACE_EVENT), resets + 1)
        mmio = self.lsi.function.bar(lsi.MMIO_BAR)
        self.assertEqual(self.proxy.config_read(pci.BASE_ADDRESS_0 + 4 * mmio.index, 4)
                         & pci.BAR_MEM_MASK, mmio.address)

    # ------------------------------------------------------------ faults

    def test_killed_remote_is_a_bounded_remote_gone(self):
        """A remote killed by SIGKILL turns the next access into
        RemoteGone at once, not into a wait."""
        self.lsi.write_reg(lsi.SCRATCHA, 1, 4)
        killed = time.monotonic()
        os.kill(self.remote.process.pid, signal.SIGKILL)
        with self.assertRaisesRegex(protocol.RemoteGone, 'exited or was killed'):
            self.lsi.read_reg(lsi.SCRATCHA, 4)
        detected = time.monotonic() - killed
        self.assertLess(detected, REPLY_TIMEOUT_S)
        self.assertTrue(self.remote.process.wait_exit(REPLY_TIMEOUT_S))
        self.assertEqual(self.remote.process.exitcode, -signal.SIGKILL)
        self.record(kill_detect_ms=round(detected * 1000, 2))

    def test_stopped_remote_is_a_bounded_timeout_then_recovers(self):
        """A SIGSTOPped remote (alive, silent) is a RemoteTimeout after the
        deadline; once continued, its late reply is drained and the link
        is usable again."""
        self.lsi.write_reg(lsi.SCRATCHA, 0x5a5a_5a5a, 4)
        scratcha = self.lsi.function.bar(lsi.MMIO_BAR).address + lsi.SCRATCHA
        self.remote.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with self.assertRaisesRegex(protocol.RemoteTimeout, 'SIGSTOP'):
                self.proxy.bar_read(scratcha, 4, timeout_s=STOPPED_REPLY_TIMEOUT_S)
            waited = time.monotonic() - started
        finally:
            self.remote.process.send_signal(signal.SIGCONT)
        self.assertLess(waited, STOPPED_REPLY_TIMEOUT_S + 1.0)
        self.assertEqual(self.lsi.read_reg(lsi.SCRATCHA, 4), 0x5a5a_5a5a)
        self.record(stop_timeout_ms=round(waited * 1000, 1))
