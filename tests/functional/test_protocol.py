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

from harness.base import bytecheck
from harness.devices import pci
from harness.devices.lsi import driver as lsi, registers as lsi_regs
from harness.devices import lsi_scenarios as scenarios
from harness.mpqemu import fake_remote, protocol
from harness.base.units import MIB, ms
from harness.testing import MultiprocessTest

IMAGE_BYTES = 16 * MIB
BLOCK_SIZE = 512
RAM_BYTES = 32 * MIB
DMA_BYTES = 6 * MIB                 # several MiB: more than one scsi-disk request
HIGH_RAM_GPA = 0x4000_0000          # the region synced later, 1 GiB up
HIGH_RAM_BYTES = 8 * MIB
REPLY_TIMEOUT_S = 5.0               # generous: it only keeps a broken remote from hanging us
STOPPED_REPLY_TIMEOUT_S = 0.3
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
        self.fake = fake_remote.launch(self.caps, log_dir=self.outputdir, drive=self.image,
                                         ram_size=RAM_BYTES, timeout_s=REPLY_TIMEOUT_S,
                                         extra_args=['-trace', RESET_TRACE_EVENT])
        self.remote, self.proxy = self.fake.remote, self.fake.proxy
        self.lsi = lsi.Lsi53c895a(self.fake.access)
        self.lsi.setup()
        self.record(remote_up_ms=ms(time.monotonic() - started))

    def tearDown(self):
        self.fake.close()
        super().tearDown()

    # ------------------------------------------------------------ config space

    def test_identity_and_bar_programming_through_config_space(self):
        """The remote answers config space like the real chip, and the BARs
        the proxy programs there decide where its registers appear."""
        self.record(**scenarios.identity_and_bar_programming(self, self.lsi))

    # ------------------------------------------------------------ registers

    def test_register_round_trips(self):
        """Writes through either register window land in the one register
        file; SCRIPTS RAM keeps what is written at both ends."""
        self.record(**scenarios.register_round_trips(self, self.lsi))

    def test_scripts_run_from_the_on_chip_ram(self):
        """SCRIPTS written into the chip's SCRIPTS RAM run there, fetched by
        the chip from its own BAR (Linux's sym53c8xx works this way)."""
        self.record(**scenarios.scripts_run_from_script_ram(self, self.lsi))

    # ------------------------------------------------------------ DMA

    def test_dma_read_is_byte_exact(self):
        """READ(10) of several MiB puts the image's bytes, every one of
        them, into guest RAM; and the check does notice one wrong byte."""
        self.record(**scenarios.dma_read_is_byte_exact(self, self.lsi, self.image, DMA_BYTES))

    def test_dma_write_is_byte_exact(self):
        """WRITE(10) of several MiB from guest RAM reaches the image file."""
        self.record(**scenarios.dma_write_is_byte_exact(self, self.lsi, self.image, DMA_BYTES))

    def test_second_memory_region_synced_later_is_usable_for_dma(self):
        """RAM added after start-up (a new SYNC_SYSMEM table, as the proxy
        sends on memory hotplug) is mapped by the remote and its DMA
        reaches it in both directions."""
        memory = self.fake.memory
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
        self.record(**scenarios.interrupt_ends_command(self, self.lsi, self.proxy.irq))

    # ------------------------------------------------------------ reset

    def test_device_reset_clears_device_state(self):
        """DEVICE_RESET runs the chip's reset (traced as lsi_reset in the
        remote's log) and clears its registers; being a device reset, not
        a bus reset, it leaves the BARs where the proxy put them."""
        resets = self.remote.process.count_log_lines(RESET_TRACE_EVENT)
        for register in (lsi_regs.SCRATCHA, lsi_regs.SCRATCHB, lsi_regs.DSA):
            self.lsi.write_reg(register, 0xdead_beef, 4)
        self.lsi.write_reg(lsi_regs.DIEN, lsi_regs.DSTAT_SIR)

        self.proxy.device_reset()

        for register in (lsi_regs.SCRATCHA, lsi_regs.SCRATCHB, lsi_regs.DSA):
            self.assertEqual(self.lsi.read_reg(register, 4), 0, lsi_regs.REGISTER_NAMES[register])
        self.assertEqual(self.lsi.read_reg(lsi_regs.DIEN), 0)
        self.assertEqual(self.remote.process.count_log_lines(RESET_TRACE_EVENT), resets + 1)
        mmio = self.lsi.function.bar(lsi_regs.MMIO_BAR)
        self.assertEqual(self.proxy.config_read(pci.BASE_ADDRESS_0 + 4 * mmio.index, 4)
                         & pci.BAR_MEM_MASK, mmio.address)

    # ------------------------------------------------------------ faults

    def test_killed_remote_is_a_bounded_remote_gone(self):
        """A remote killed by SIGKILL turns the next access into
        RemoteGone at once, not into a wait."""
        self.lsi.write_reg(lsi_regs.SCRATCHA, 1, 4)
        killed = time.monotonic()
        self.remote.faults.kill()
        with self.assertRaisesRegex(protocol.RemoteGone, 'exited or was killed'):
            self.lsi.read_reg(lsi_regs.SCRATCHA, 4)
        detected = time.monotonic() - killed
        self.assertLess(detected, REPLY_TIMEOUT_S)
        self.assertTrue(self.remote.process.wait_exit(REPLY_TIMEOUT_S))
        self.assertEqual(self.remote.process.exitcode, -signal.SIGKILL)
        self.record(kill_detect_ms=ms(detected, 2))

    def test_stopped_remote_is_a_bounded_timeout_then_recovers(self):
        """A SIGSTOPped remote (alive, silent) is a RemoteTimeout after the
        deadline; once continued, its late reply is drained and the link
        is usable again."""
        self.lsi.write_reg(lsi_regs.SCRATCHA, 0x5a5a_5a5a, 4)
        scratcha = self.lsi.function.bar(lsi_regs.MMIO_BAR).address + lsi_regs.SCRATCHA
        self.remote.faults.hang()
        try:
            started = time.monotonic()
            with self.assertRaisesRegex(protocol.RemoteTimeout, 'SIGSTOP'):
                self.proxy.bar_read(scratcha, 4, timeout_s=STOPPED_REPLY_TIMEOUT_S)
            waited = time.monotonic() - started
        finally:
            self.remote.faults.resume()
        self.assertLess(waited, STOPPED_REPLY_TIMEOUT_S + 1.0)
        self.assertEqual(self.lsi.read_reg(lsi_regs.SCRATCHA, 4), 0x5a5a_5a5a)
        self.record(stop_timeout_ms=ms(waited))
