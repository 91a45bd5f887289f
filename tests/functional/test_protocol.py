"""A remote LSI 53C895A driven through a wire protocol alone.

No proxy QEMU and no guest: the test plays the proxy (harness.mpqemu's fake
proxy), owns the guest RAM the remote DMAs into (a memfd sent with
SYNC_SYSMEM) and the INTx eventfds (SET_IRQFD).  So these scenarios run in
milliseconds under any accelerator, on any QEMU with ``-machine x-remote``
(also 10.0, whose proxy cannot run without KVM), and they see interrupts
that a real proxy forwards only with KVM.

The same scenarios run over vfio-user (``RemoteLsiOverVfioUser``): the
test is then the vfio-user client (harness/vfio_user) of the remote's
``x-vfio-user-server``, DMA-maps the memfd with DMA_MAP and takes INTx
on the eventfd it gave with SET_IRQS.  Checks of vfio-user itself
(version negotiation, region and IRQ info, DMA_UNMAP) are that class's.

Each scenario is one property of the remote a proxy relies on; the remote's
log (with the ``lsi_reset`` trace event) and command line are in the output
directory, latencies and throughput in the whiteboard.
"""

import errno
import os
import signal
import socket
import time

from harness.base import bytecheck
from harness.base.figures import spread
from harness.devices import pci
from harness.devices.lsi import driver as lsi, registers as lsi_regs
from harness.devices import lsi_scenarios as scenarios
from harness.mpqemu import fake_remote, protocol, topology
from harness.vfio_user import client as vfu_client, protocol as vfu, server as vfu_server
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
PINGS = 200
EXIT_TIMEOUT_S = 5.0
# hw/remote/message.c (upstream), hw/i386/remote-msg.c (v8)
INVALID_MESSAGE_LOG = 'Received invalid message from proxy'
RESET_TRACE_EVENT = 'lsi_reset'


class RemoteLsiOverProtocol(MultiprocessTest):
    """The remote LSI through the mpqemu proxy protocol (a fake proxy).

    :avocado: enable
    :avocado: tags=protocol
    """

    # How the test reaches the remote: a launch() that returns an object
    # with .remote, .access, .memory, .irq, device_reset(),
    # map_new_regions(), reply_timeout() and close().
    launcher = staticmethod(fake_remote.launch)
    harness_speaks = 'mpqemu'
    served = None               # until setUp has launched it

    def setUp(self):
        super().setUp()
        self.image = bytecheck.write_random_image(os.path.join(self.workdir, 'disk.raw'),
                                                  IMAGE_BYTES)
        started = time.monotonic()
        self.served = self.launcher(self.remote_caps, log_dir=self.outputdir, drive=self.image,
                                    ram_size=RAM_BYTES, timeout_s=REPLY_TIMEOUT_S,
                                    extra_args=['-trace', RESET_TRACE_EVENT],
                                    confinement=self.confinement)
        self.remote = self.served.remote
        self.lsi = lsi.Lsi53c895a(self.served.access)
        self.lsi.setup()
        self.record(remote_up_ms=ms(time.monotonic() - started))

    def tearDown(self):
        if self.served is not None:
            self.served.close()
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
        """RAM added after start-up (a new SYNC_SYSMEM table, or a DMA_MAP,
        as a client sends on memory hotplug) is mapped by the remote and
        its DMA reaches it in both directions."""
        memory = self.served.memory
        high = memory.add_region(HIGH_RAM_GPA, HIGH_RAM_BYTES, 'guest-ram-high')
        self.served.map_new_regions()
        self.assertIn(self.served.mapped_ram_marker, self.high_ram_mapping(), 'high RAM unmapped')

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

    def high_ram_mapping(self):
        """The line of the remote's flat memory tree that maps the high
        RAM region, or None."""
        span = f'{HIGH_RAM_GPA:016x}-{HIGH_RAM_GPA + HIGH_RAM_BYTES - 1:016x}'
        lines = [line for line in self.remote.process.hmp('info mtree -f').splitlines()
                 if span in line]
        return lines[0] if lines else None

    # ------------------------------------------------------------ interrupts

    def test_interrupt_is_observed_on_the_eventfd(self):
        """With DIEN set, the SCRIPTS INT that ends a command raises INTx:
        one edge on the irqfd, and none once DSTAT has been read."""
        self.record(**scenarios.interrupt_ends_command(self, self.lsi, self.served.irq))

    # ------------------------------------------------------------ reset

    def test_device_reset_clears_device_state(self):
        """DEVICE_RESET runs the chip's reset (traced as lsi_reset in the
        remote's log) and clears its registers; being a device reset, not
        a bus reset, it leaves the BARs where the proxy (or client) put
        them."""
        resets = self.remote.process.count_trace_events(RESET_TRACE_EVENT)
        for register in (lsi_regs.SCRATCHA, lsi_regs.SCRATCHB, lsi_regs.DSA):
            self.lsi.write_reg(register, 0xdead_beef, 4)
        self.lsi.write_reg(lsi_regs.DIEN, lsi_regs.DSTAT_SIR)

        self.served.device_reset()

        for register in (lsi_regs.SCRATCHA, lsi_regs.SCRATCHB, lsi_regs.DSA):
            self.assertEqual(self.lsi.read_reg(register, 4), 0, lsi_regs.REGISTER_NAMES[register])
        self.assertEqual(self.lsi.read_reg(lsi_regs.DIEN), 0)
        self.assertEqual(self.remote.process.count_trace_events(RESET_TRACE_EVENT), resets + 1)
        mmio = self.lsi.function.bar(lsi_regs.MMIO_BAR)
        self.assertEqual(self.served.access.config_read(pci.BASE_ADDRESS_0 + 4 * mmio.index, 4)
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
        self.remote.faults.hang()
        try:
            started = time.monotonic()
            with self.assertRaisesRegex(protocol.RemoteTimeout, 'SIGSTOP'), \
                    self.served.reply_timeout(STOPPED_REPLY_TIMEOUT_S):
                self.lsi.read_reg(lsi_regs.SCRATCHA, 4)
            waited = time.monotonic() - started
        finally:
            self.remote.faults.resume()
        self.assertLess(waited, STOPPED_REPLY_TIMEOUT_S + 1.0)
        self.assertEqual(self.lsi.read_reg(lsi_regs.SCRATCHA, 4), 0x5a5a_5a5a)
        self.record(stop_timeout_ms=ms(waited))


class RemoteLsiOverVfioUser(RemoteLsiOverProtocol):
    """The same scenarios with the harness as the vfio-user client of the
    remote's x-vfio-user-server (vfio_user_server, a 10.0 build with
    --enable-vfio-user-server), and what vfio-user adds.

    :avocado: recursive
    :avocado: tags=protocol,vfio-user
    """

    placement = topology.VFIO_USER
    harness_speaks = 'vfio-user'
    launcher = staticmethod(vfu_server.launch)

    def test_scripts_run_from_the_on_chip_ram(self):
        with self.known_issue_guard('vfio-user-device-dma-misses-its-own-bar'):
            super().test_scripts_run_from_the_on_chip_ram()

    # ------------------------------------------------------------ vfio-user itself

    def test_version_negotiation(self):
        """The server answers VERSION with libvfio-user's 0.1 and the
        capabilities it announces (lib/tran.c, send_version): 8 fds per
        message, 1 MiB per transfer, no migration (QEMU's server has none)."""
        version = self.served.version
        self.assertEqual((version.major, version.minor), (vfu.MAJOR, vfu.MINOR))
        self.assertEqual(version.capabilities, {'max_msg_fds': 8,
                                                'max_data_xfer_size': 1 << 20})
        self.record(server_version=f'{version.major}.{version.minor}',
                    server_capabilities=version.capabilities)

    def test_region_info_matches_the_chip(self):
        """DEVICE_GET_INFO says PCI with reset; the config region is 256
        bytes (conventional PCI); BAR regions are the LSI's 0x100 I/O,
        0x400 MMIO and 0x2000 SCRIPTS RAM, the same sizes config space
        reports, and the unused BARs are empty."""
        info = self.served.device
        self.assertEqual(info.flags, vfu.DEVICE_FLAG_PCI | vfu.DEVICE_FLAG_RESET)
        self.assertGreaterEqual(info.num_regions, vfu.VGA_REGION_INDEX + 1)
        self.assertEqual(info.num_irqs, vfu.REQ_IRQ_INDEX + 1)
        config = self.served.client.region_info(vfu.CONFIG_REGION_INDEX)
        self.assertEqual(config.size, pci.CONFIG_SPACE_SIZE)
        self.assertTrue(config.readable and config.writable, config)
        sizes = {i: r.size for i, r in self.served.regions.items()}
        self.assertEqual(sizes, {0: 0x100, 1: 0x400, 2: 0x2000, 3: 0, 4: 0, 5: 0})
        self.assertEqual({bar.index: bar.size for bar in self.lsi.function.bars},
                         {i: size for i, size in sizes.items() if size})
        self.record(device_info=vars(info), region_sizes=sizes)

    def test_irq_info_has_one_intx(self):
        """DEVICE_GET_IRQ_INFO: one INTx vector (vfu_object_setup_irqs), no
        MSI-X (the LSI has none)."""
        intx = self.served.client.irq_info(vfu.INTX_IRQ_INDEX)
        self.assertEqual(intx.count, 1)
        self.assertEqual(self.served.client.irq_info(vfu.MSIX_IRQ_INDEX).count, 0)
        self.record(irq_counts={i: self.served.client.irq_info(i).count
                                for i in range(self.served.device.num_irqs)})

    def test_dma_to_an_unmapped_range_does_not_reach_it(self):
        """After DMA_UNMAP the server must not touch the region
        (docs/interop/vfio-user.rst, DMA_UNMAP): a READ(10) into it
        completes, its memfd keeps every byte it had, the server's memory
        tree no longer holds it, and the server keeps answering.  An
        unmap of a range never mapped is refused (ENOENT)."""
        memory = self.served.memory
        high = memory.add_region(HIGH_RAM_GPA, HIGH_RAM_BYTES, 'guest-ram-high')
        self.served.map_new_regions()
        length = 64 * 1024
        buf = memory.alloc(length, 4096, region=high)
        memory.write(buf, b'\xa5' * length)
        self.assertIn(self.served.mapped_ram_marker, self.high_ram_mapping())
        self.served.client.dma_unmap(high.gpa, high.size)
        self.assertIsNone(self.high_ram_mapping(), 'the server still maps unmapped RAM')

        self.lsi.wait_ready()
        self.lsi.read10_to(buf, 100, length // BLOCK_SIZE)
        self.assertEqual(memory.read(buf, length), b'\xa5' * length,
                         'the device wrote into RAM the client had unmapped')
        self.lsi.write_reg(lsi_regs.SCRATCHA, 0x0bad_f00d, 4)
        self.assertEqual(self.lsi.read_reg(lsi_regs.SCRATCHA, 4), 0x0bad_f00d)
        self.assertEqual(self.served.access.config_read(pci.VENDOR_ID, 2), lsi_regs.VENDOR_ID)
        with self.assertRaises(vfu_client.ServerRejected) as refused:
            self.served.client.dma_unmap(HIGH_RAM_GPA + HIGH_RAM_BYTES, HIGH_RAM_BYTES)
        self.assertEqual(refused.exception.errno, errno.ENOENT, str(refused.exception))


class RemoteAnswersTheSeedHeartbeat(MultiprocessTest):
    """The remote's half of the v8 series' heartbeat (its patch 17): the
    proxy sends PROXY_PING every second and exits when an exchange fails
    (test_faults.py:RemoteDetection.test_qemu_heartbeat times that side).
    Upstream dropped the heartbeat; there the test cancels.

    :avocado: enable
    :avocado: tags=protocol,heartbeat
    """

    harness_speaks = 'mpqemu'

    def test_ping_is_answered_in_order_and_not_when_stopped(self):
        """Pings interleaved with config reads are answered by an empty RET,
        each in its turn; a stopped remote leaves a ping unanswered (what
        the proxy's heartbeat relies on) and answers it once continued."""
        if self.caps.multiprocess.flavour != 'v8':
            self.cancel(f'{self.caps.version_string} has no PROXY_PING (the v8 series has)')
        with fake_remote.launch(self.remote_caps, log_dir=self.outputdir,
                                confinement=self.confinement) as served:
            proxy = served.proxy
            round_trips = []
            for _ in range(PINGS):
                started = time.monotonic()
                proxy.ping()
                round_trips.append(time.monotonic() - started)
                self.assertEqual(proxy.config_read(pci.VENDOR_ID, 2), lsi_regs.VENDOR_ID)
            served.remote.faults.hang()
            try:
                with self.assertRaises(protocol.RemoteTimeout):
                    proxy.ping(STOPPED_REPLY_TIMEOUT_S)
            finally:
                served.remote.faults.resume()
            proxy.ping()                # after the late reply, drained
            self.assertEqual(proxy.config_read(pci.VENDOR_ID, 2), lsi_regs.VENDOR_ID)
        self.record(ping_round_trip_us=spread(round_trips, 1e6, 1))


class InvalidMessageEndsTheRemote(MultiprocessTest):
    """A remote that receives a message mpqemu_msg_valid() refuses logs it
    and exits: it does not serve on, and does not linger without a proxy.

    :avocado: enable
    :avocado: tags=protocol,faults
    """

    harness_speaks = 'mpqemu'

    def test_set_irqfd_without_fds_ends_the_remote(self):
        """SET_IRQFD needs exactly two fds; sent with none, the remote logs
        the invalid message and exits by itself with status 0, or at the
        latest when its proxy hangs up."""
        with fake_remote.launch(self.remote_caps, log_dir=self.outputdir,
                                confinement=self.confinement) as served:
            process = served.remote.process
            self.assertEqual(served.proxy.config_read(pci.VENDOR_ID, 2), lsi_regs.VENDOR_ID)
            sent = time.monotonic()
            served.proxy.send(protocol.Message(protocol.Cmd.SET_IRQFD))
            exited = process.wait_exit(EXIT_TIMEOUT_S)
            self.record(remote_exit_ms=ms(time.monotonic() - sent) if exited else None)
            self.assertIn(INVALID_MESSAGE_LOG, process.log_tail())
            with self.known_issue_guard('v8-remote-ignores-its-socket-after-an-invalid-message'):
                if not exited:
                    served.proxy.link.sock.shutdown(socket.SHUT_RDWR)
                    self.assertTrue(process.wait_exit(EXIT_TIMEOUT_S),
                                    f'the remote neither exited after the invalid message nor '
                                    f'{EXIT_TIMEOUT_S} s after its proxy hung up: '
                                    f'{process.state_description()}')
                self.assertEqual(process.exitcode, 0, process.state_description())
