"""The LSI 53C895A behind a real proxy, driven through qtest: no guest OS.

The proxy QEMU runs with ``-accel qtest``; the harness plays the CPU: PCI
config space through 0xcf8/0xcfc, BAR programming, register accesses and
DMA buffers in the proxy's own (memfd-shared) RAM.  Every access crosses
the real ``x-pci-proxy-dev`` and the real remote, so both are under test.
The same checks as the protocol tier (harness/devices/lsi_scenarios.py)
run here, and once more against the in-process ``lsi53c895a`` as a
control: a check that passes in-process and fails proxied is the proxy's.

Needs a QEMU with the qtest accelerator: Debian's packages have none, so
these tests CANCEL there and say how to build one (``-p
qemu_src=debian:bookworm``).  QEMU 10.0's proxy crashes without KVM
(tests/known_issues/proxy-realize-crash-without-kvm.json); 7.2's proxy
forwards no INTx without KVM (proxy-intx-needs-kvm.json): both end as
known issues, not failures.
"""

import os
import signal
import time

from harness.base import bytecheck
from harness.qemu import qtest
from harness.devices import pci
from harness.devices.lsi import driver as lsi, registers as lsi_regs
from harness.devices import lsi_scenarios as scenarios
from harness.mpqemu import topology
from harness.base.units import MIB, ms
from harness.testing import MultiprocessTest

IMAGE_BYTES = 16 * MIB
RAM_MB = 64
DMA_BYTES = 6 * MIB
LSI_SLOT = 3                # 00:03.0: cf8 address 0x80001800
LSI_GSI = 11                # where the harness routes its INTx (PIIX3 PIRQ)
QTEST_MACHINE = 'pc'        # the access routes INTx through PIIX3
KILL_DETECT_TIMEOUT_S = 5.0
IRQ_WAIT_S = 3.0            # the command itself takes milliseconds
ALL_ONES_32 = 0xffff_ffff


class LsiOverQtest(MultiprocessTest):
    """Launches the VM (proxy + remote, or the control) under qtest and
    hands the tests ``self.access`` and ``self.lsi``.  Not a test class
    itself; its subclasses inherit its tests (``:avocado: recursive``).

    :avocado: disable
    """


    def setUp(self):
        super().setUp()
        if not self.caps.has_qtest:
            self.cancel(f"no qtest accelerator: QEMU at {self.caps.path} "
                        f"({self.caps.version_string}) rejects -accel qtest (Debian's packages "
                        f"ship without it); run the qtest tier against a source build, e.g. "
                        f"-p qemu_src=debian:bookworm (QEMU_SRC=debian:bookworm), or "
                        f"-p qemu_bin=<your build>")
        self.accel_in_use = 'qtest'
        self.image = bytecheck.write_random_image(os.path.join(self.workdir, 'disk.raw'),
                                                  IMAGE_BYTES)
        vm = self.new_vm(memory_mb=RAM_MB, accel='qtest', machine=QTEST_MACHINE)
        self.client, self.access = qtest.launch_lsi(
            vm, drive=self.image, slot=LSI_SLOT, ram_bytes=RAM_MB * MIB, irq_gsi=LSI_GSI,
            qtest_log=os.path.join(self.outputdir, 'qtest-proxy.log'), launch=self.launch)
        self.lsi = lsi.Lsi53c895a(self.access)
        self.lsi.setup()
        self.record(tier='proxied' if vm.multiprocess else 'in-process', accel='qtest')

    def tearDown(self):
        client = getattr(self, 'client', None)
        if client:
            self.record(qtest_commands=client.commands)
            client.close()
        super().tearDown()

    # The checks both tiers share (harness/devices/lsi_scenarios.py).

    def test_identity_and_bar_programming_through_config_space(self):
        """Config space through 0xcf8/0xcfc answers like the real chip;
        the BARs programmed there decide where the registers appear."""
        self.record(**scenarios.identity_and_bar_programming(self, self.lsi))

    def test_register_round_trips(self):
        """Both register windows reach the one register file; SCRIPTS RAM
        keeps what is written at both ends."""
        self.record(**scenarios.register_round_trips(self, self.lsi))

    def test_dma_read_is_byte_exact(self):
        """READ(10) of several MiB lands byte-exact in the VM's RAM (for
        the proxied device: written by the remote into the shared memfd,
        read back through the proxy's own memory map)."""
        self.record(**scenarios.dma_read_is_byte_exact(self, self.lsi, self.image, DMA_BYTES))

    def test_dma_write_is_byte_exact(self):
        """WRITE(10) of several MiB from the VM's RAM reaches the image."""
        self.record(**scenarios.dma_write_is_byte_exact(self, self.lsi, self.image, DMA_BYTES))

    def test_interrupt_reaches_the_ioapic(self):
        """The SCRIPTS INT that ends a command raises the device's INTx,
        seen at the ioapic input it is routed to."""
        self.lsi.timeout_s = IRQ_WAIT_S
        with self.known_issue_guard('proxy-intx-needs-kvm'):
            self.record(**scenarios.interrupt_ends_command(self, self.lsi, self.access.irq))


class ProxiedLsiOverQtest(LsiOverQtest):
    """The device in a remote process, behind x-pci-proxy-dev.

    :avocado: recursive
    :avocado: tags=qtest
    """

    def test_killed_remote_reads_as_all_ones_and_the_proxy_survives(self):
        """With the remote SIGKILLed, config space and BAR reads through
        the proxy return all-ones at once (no hang), and the proxy keeps
        running."""
        self.lsi.write_reg(lsi_regs.SCRATCHA, 0x1234_5678, 4)
        remote = self.vm.remote('lsi1')
        remote.faults.kill()
        self.assertTrue(remote.process.wait_exit(KILL_DETECT_TIMEOUT_S))
        started = time.monotonic()
        with self.known_issue_guard('v8-dead-remote-reads-as-zero'):
            self.assertEqual(self.access.config_read(pci.VENDOR_ID, 4), ALL_ONES_32)
            self.assertEqual(self.lsi.read_reg(lsi_regs.SCRATCHA, 4), ALL_ONES_32)
        detected = time.monotonic() - started
        self.assertLess(detected, KILL_DETECT_TIMEOUT_S)
        self.assertEqual(self.vm.qemu.qmp('query-status')['status'], 'running')
        self.assertEqual(remote.process.exitcode, -signal.SIGKILL)
        self.record(dead_remote_reads_ms=ms(detected, 2))


class InProcessLsiOverQtest(LsiOverQtest):
    """The control: the same device emulated inside the qtest QEMU.

    :avocado: recursive
    :avocado: tags=qtest,control
    """

    placement = topology.IN_PROCESS
