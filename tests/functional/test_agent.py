"""The agent tier: a bare-metal guest on a real vCPU of the proxy drives the
remote LSI and takes its interrupts.

The guest (tests/images/agent, harness/agent) runs without paging, so it
runs under KVM on VMX/SVM hosts *and* under the PVM flavour of KVM, whose
instruction emulator executes only unpaged guests: the one tier that
exercises the proxy's KVM-only interrupt path everywhere there is a
/dev/kvm.  The remote's INTx reaches the guest through a KVM irqfd set up by
SET_IRQFD (hw/remote/proxy.c proxy_intx_update); the guest's EOI lowers it
and signals the resample eventfd, on which the remote raises it again if the
device still asserts it (hw/remote/iohub.c).

Every scenario of a Proxied class runs again in the matching InProcess
class against the LSI emulated inside the guest's QEMU, whose interrupts
work under TCG too: a failure seen only with the proxy is the proxy's.
Under TCG the proxy delivers no INTx at all: the Proxied interrupt checks
keep their asserts and report the known issue proxy-intx-needs-kvm.
"""

import os
import threading
import time

from harness.base import bytecheck, deadlines
from harness.base.figures import spread, time_calls
from harness.agent.access import AgentAccess
from harness.agent.client import AgentCommandError, AgentError, AgentFault, AgentTimeout
from harness.agent.lsi_intx import VECTOR, IntxSource
from harness.agent.mailbox import FAULT_EXIT_STATUS, Command, Op, Status
from harness.devices import lsi_scenarios as scenarios, pci
from harness.devices.lsi import driver as lsi, registers as lsi_regs, scripts as lsi_scripts, scsi
from harness.guest import lsi_dma
from harness.mpqemu import hotplug, memview, topology
from harness.mpqemu.proxyram import MappedRam
from harness.base.units import MIB
from harness.testing import AGENT, MultiprocessTest
from harness.base.waiting import wait_until

INTX_ISSUE = 'proxy-intx-needs-kvm'
IRQ_TIMEOUT_MS = 2000          # an interrupt that comes at all comes within milliseconds
NO_IRQ_MS = 200                # long enough for a wrongly re-raised line to arrive
INTERRUPTS = 1000
CYCLES_PER_BATCH = 150         # 6 commands each: within the mailbox's 1020
BLOCK = 512
DISK_MIB = 16
IO_SIZES_BLOCKS = (1, 8, 128, 2048)     # 512 B .. 1 MiB
OPS_SAMPLES = 20
BLOCKED_S = 1.5                # how long a stopped remote must keep the access blocked
WAITING_TIMEOUT_S = 5.0       # for the agent to be inside the batch the kill must hit
LATE_TIMEOUT_S = 10.0
DIMM_BYTES = 128 * MIB
DIMM_DMA_BYTES = 256 * 1024
LBA_PATTERN = 2048
LBA_FROM_DIMM = 8192
ALL_ONES_32 = 0xffffffff
LSI_ID_DWORD = lsi_regs.DEVICE_ID << 16 | lsi_regs.VENDOR_ID
SCSI_CLASS_STORAGE = 0x0100
PCI_IRQ_LINES = (5, 9, 10, 11)   # the PIRQ routes SeaBIOS and qboot choose


class AgentTest(MultiprocessTest):
    """Shared steps; no tests of its own."""

    guest = 'agent'
    timeout = deadlines.test_timeout(agent_boots=1, waits_s=60)

    def boot(self, drive=None, **vm_kwargs) -> lsi.Lsi53c895a:
        """The agent booted, the LSI found and set up through it."""
        vm = self.launch(guest=AGENT, disks=[drive], **vm_kwargs)
        self.session, self.agent = vm.guest, vm.guest.agent
        self.bdf = self.agent.find_device(lsi_regs.VENDOR_ID, lsi_regs.DEVICE_ID)
        self.access = AgentAccess(self.agent, self.bdf, self.vm.memory_mb * MIB)
        # Where the firmware or the agent placed the BARs (setup() moves them).
        self.boot_bars = {i: self.access.config_read(pci.BASE_ADDRESS_0 + 4 * i, 4)
                          for i in lsi_regs.BAR_SIZES}
        self.lsi = lsi.Lsi53c895a(self.access)
        self.lsi.setup()
        return self.lsi

    def intx(self) -> IntxSource:
        return IntxSource(self.access, self.lsi)

    def mmio(self, offset: int) -> int:
        return self.lsi.function.bar(lsi_regs.MMIO_BAR).address + offset

    def assert_bars_placed_at_boot(self) -> None:
        """qboot assigns no BARs, so the agent placed the LSI's three;
        SeaBIOS places them all and leaves the agent nothing to do."""
        placed = {bar: where for (bdf, bar), where in self.session.placed_bars().items()
                  if bdf == self.bdf}
        if self.session.boot_firmware == 'qboot':
            self.assertEqual(sorted(placed), sorted(lsi_regs.BAR_SIZES), 'BARs the agent placed')
            for bar, (space, address, _) in placed.items():
                self.assertEqual(self.boot_bars[bar] & ~0xf, address)
                self.assertEqual(space, 'io' if bar == lsi_regs.IO_BAR else 'mem')
        else:
            self.assertEqual(placed, {}, 'the agent placed BARs SeaBIOS had placed')
            self.assertTrue(all(v & ~0xf for v in self.boot_bars.values()),
                            f'SeaBIOS left a BAR unassigned: {self.boot_bars}')

    def assert_no_interrupt(self, what: str) -> None:
        late = self.agent.one(Op.IRQ_WAIT, arg=NO_IRQ_MS)
        self.assertEqual(late.status, Status.TIMEOUT, f'an interrupt arrived {what}')
        self.assertEqual(self.agent.header('spurious'), 0, 'spurious IRQ 7/15')
        self.assertEqual(self.agent.header('other_irqs'), 0, 'interrupts on other lines')


class ProxiedAgent(AgentTest):
    """The agent reaches the proxied LSI's configuration space and both of
    its register BARs, with every access width.

    :avocado: enable
    :avocado: tags=agent
    """

    # Known issues running SCRIPTS from the chip's own RAM may meet.
    script_ram_issues = ()

    def test_agent_drives_the_lsi(self):
        self.boot()
        access, agent = self.access, self.agent
        self.assertEqual(access.config_read(pci.VENDOR_ID, 4), LSI_ID_DWORD)
        self.assertEqual(access.config_read(pci.CLASS_DEVICE, 2), SCSI_CLASS_STORAGE)
        self.assertEqual(access.config_read(pci.INTERRUPT_PIN, 1), 1)
        line = access.config_read(pci.INTERRUPT_LINE, 1)
        self.assertIn(line, PCI_IRQ_LINES)
        self.assertTrue(agent.header('elcr') & 1 << line, 'the line is not level-triggered')
        self.assert_bars_placed_at_boot()

        emulator = self.vm.device_process('lsi1')
        io = self.lsi.function.bar(lsi_regs.IO_BAR).address
        for size, value in ((1, 0xa5), (2, 0xbeef), (4, 0x600dcafe)):
            for base, memory in ((io, False), (self.mmio(0), True)):
                access.bar_write(base + lsi_regs.SCRATCHA, 0, 4, memory)
                access.bar_write(base + lsi_regs.SCRATCHA, value, size, memory)
                self.assertEqual(access.bar_read(base + lsi_regs.SCRATCHA, size, memory), value)
                # The process that emulates the LSI holds the value itself.
                self.assertEqual(emulator.inl(io + lsi_regs.SCRATCHA), value)

        samples = [Command(Op.CFG_READ, arg=self.bdf, addr=0, size=4) for _ in range(200)]
        agent.run(samples)
        self.assertTrue(all(c.value == LSI_ID_DWORD for c in samples))
        self.record(config_read_in_guest_us=spread(
                        [agent.tsc_to_s(c.tsc_end - c.tsc_start) for c in samples], 1e6),
                    config_read_round_trip_us=spread(
                        time_calls(lambda: access.config_read(0, 4), 100), 1e6))

    def test_scripts_run_from_the_on_chip_ram(self):
        """The LSI runs SCRIPTS from its own SCRIPTS RAM, as sym53c8xx has
        it do: the chip fetches them by DMA from its BAR 2."""
        self.boot()
        with self.known_issue_guard(*self.script_ram_issues):
            self.record(**scenarios.scripts_run_from_script_ram(self, self.lsi))

    def test_bad_input_is_a_bounded_error_naming_the_step(self):
        self.boot()
        with self.assertRaisesRegex(AgentCommandError, r'refused command #0 '
                                    r'\(CFG_READ 00:.*\+0x00/3\): BAD_SIZE'):
            self.agent.one(Op.CFG_READ, arg=self.bdf, addr=0, size=3)
        with self.assertRaisesRegex(AgentError, r'no PCI device 1234:5678 on bus 0 '
                                    r'\(the agent found .*1000:0012 at '):
            self.agent.find_device(0x1234, 0x5678)
        self.assertEqual(self.access.config_read(pci.VENDOR_ID, 2), lsi_regs.VENDOR_ID)
        with self.assertRaises(AgentFault) as caught:
            self.agent.one(Op.TRAP)
        message = str(caught.exception)
        self.assertIn('the agent took CPU exception 6 (#UD) at eip', message)
        self.assertIn('running command #0 of 1 (TRAP)', message)
        self.assertEqual(self.vm.qemu.wait(5), FAULT_EXIT_STATUS)


class ProxiedAgentUnderSeaBios(ProxiedAgent):
    """The same booted from SeaBIOS instead of qboot: its POST sizes and
    places the proxied LSI's BARs, routes its interrupt and scans its
    targets through the remote before the agent starts (4 s under PVM
    KVM, which is why the other agent tests boot from qboot).

    :avocado: recursive
    :avocado: tags=agent,seabios
    """

    agent_firmware = 'seabios'


class InProcessAgent(ProxiedAgent):
    """The same with the LSI inside the guest's QEMU.

    :avocado: recursive
    :avocado: tags=agent,control
    """

    placement = topology.IN_PROCESS


class VfioUserAgent(ProxiedAgent):
    """The same with the LSI's remote reached over vfio-user.

    :avocado: recursive
    :avocado: tags=agent,vfio-user
    """

    placement = topology.VFIO_USER
    script_ram_issues = ('vfio-user-device-dma-misses-its-own-bar',)


class ProxiedIntx(AgentTest):
    """INTx from the remote LSI to the guest: asserted, seen, deasserted by
    the status read and EOI, re-delivered while still asserted at EOI.

    :avocado: enable
    :avocado: tags=agent,accel:kvm
    """

    # Known issues the interrupt checks may meet on this path.
    intx_issues = (INTX_ISSUE,)

    def test_status_read_and_eoi_deassert_the_line(self):
        self.boot()
        source = self.intx()
        with self.known_issue_guard(*self.intx_issues):
            start, wait, istat0, dstat, dsps, _ = self.agent.run(source.cycle(IRQ_TIMEOUT_MS))
            source.check(wait, 'a SCRIPTS INT')
        self.assertTrue(istat0.value & lsi_regs.ISTAT0_DIP, f'ISTAT0={istat0.value:#04x}')
        self.assertTrue(dstat.value & lsi_regs.DSTAT_SIR, f'DSTAT={dstat.value:#04x}')
        self.assertEqual(dsps.value, VECTOR)
        self.assertEqual(wait.irq_count, 1)
        self.assert_no_interrupt('after DSTAT was read and EOI sent')
        self.record(interrupt_latency_us=round(source.latency_s(start, wait) * 1e6, 1))

    def test_still_asserted_at_eoi_is_delivered_again(self):
        self.boot()
        source = self.intx()
        with self.known_issue_guard(*self.intx_issues):
            _, first, _, again = self.agent.run([source.start(), source.wait(IRQ_TIMEOUT_MS),
                                                 source.ack(), source.wait(IRQ_TIMEOUT_MS)])
            source.check(first, 'a SCRIPTS INT')
            source.check(again, 'an EOI with DSTAT still unread (the resample path)')
        self.assertEqual(again.irq_count, 2)
        _, dstat, dsps, _ = self.agent.run(source.read_status() + [source.ack()])
        self.assertTrue(dstat.value & lsi_regs.DSTAT_SIR)
        self.assertEqual(dsps.value, VECTOR)
        self.assert_no_interrupt('after the second EOI, DSTAT read')
        self.assertEqual(self.agent.header('irq_count'), 2)

    def test_a_thousand_interrupts_none_lost_none_duplicated(self):
        self.boot()
        source = self.intx()
        latencies = []
        with self.known_issue_guard(*self.intx_issues):
            cycle = self.agent.run(source.cycle(IRQ_TIMEOUT_MS))
            source.check(cycle[1], 'the first SCRIPTS INT')
        started = time.monotonic()
        done = 1
        while done < INTERRUPTS:
            n = min(CYCLES_PER_BATCH, INTERRUPTS - done)
            batch = [c for _ in range(n) for c in source.cycle(IRQ_TIMEOUT_MS)]
            self.agent.run(batch)
            for i in range(n):
                start, wait, _, dstat, _, _ = batch[6 * i:6 * i + 6]
                self.assertEqual(wait.status, Status.OK, f'interrupt {done + i + 1} lost')
                self.assertEqual(wait.irq_count, done + i + 1, f'interrupt {done + i + 1}')
                self.assertTrue(dstat.value & lsi_regs.DSTAT_SIR)
                latencies.append(source.latency_s(start, wait))
            done += n
        elapsed = time.monotonic() - started
        self.assert_no_interrupt(f'after {INTERRUPTS} acknowledged interrupts')
        self.assertEqual(self.agent.header('irq_count'), INTERRUPTS)
        self.record(interrupts=INTERRUPTS,
                    interrupt_latency_us=spread(latencies, 1e6),
                    interrupts_per_s=round((INTERRUPTS - 1) / elapsed, 1))


class InProcessIntx(ProxiedIntx):
    """The same with the LSI inside the guest's QEMU.

    :avocado: recursive
    :avocado: tags=agent,control
    """

    placement = topology.IN_PROCESS


class VfioUserIntx(ProxiedIntx):
    """The same with the LSI's remote reached over vfio-user, whose INTx
    the client takes from the server's eventfd (no KVM irqfd needed).

    :avocado: recursive
    :avocado: tags=agent,vfio-user
    """

    placement = topology.VFIO_USER
    intx_issues = (INTX_ISSUE, 'vfio-user-intx-not-redelivered-at-eoi')


class ProxiedScsi(AgentTest):
    """SCSI commands whose SCRIPTS end in INT, completed by the interrupt
    instead of polling, byte-exact against the disk file.

    :avocado: enable
    :avocado: tags=agent,diskio,accel:kvm
    """

    def test_interrupt_driven_read_and_write_are_byte_exact(self):
        disk = self.scratch_disk(DISK_MIB)
        device = self.boot(drive=disk)
        device.wait_ready()                     # polled: the UNIT ATTENTION of the reset
        device.use_irq = True
        with self.known_issue_guard(INTX_ISSUE):
            device.test_unit_ready()
        lba = 0
        for blocks in IO_SIZES_BLOCKS:
            data = os.urandom(blocks * BLOCK)
            device.write10(lba, data, fua=True)
            self.assertTrue(device.last_stop.by_irq)
            bytecheck.assert_same_bytes(bytecheck.read_image(disk, lba * BLOCK, len(data)),
                                        data, f'disk after WRITE(10) of {blocks} blocks')
            self.assertEqual(device.read10(lba, blocks), data)
            self.assertTrue(device.last_stop.by_irq)
            lba += blocks
        figures = {}
        for mode in ('interrupt', 'polled'):
            device.use_irq = mode == 'interrupt'
            times = time_calls(lambda: device.read10(0, 8), OPS_SAMPLES)
            figures[f'read_4k_{mode}_ops_per_s'] = round(len(times) / sum(times), 1)
        figures['interrupt_over_polled'] = round(figures['read_4k_interrupt_ops_per_s']
                                                 / figures['read_4k_polled_ops_per_s'], 3)
        self.record(**figures)


class InProcessScsi(ProxiedScsi):
    """The same with the LSI inside the guest's QEMU.

    :avocado: recursive
    :avocado: tags=agent,diskio,control
    """

    placement = topology.IN_PROCESS


class VfioUserScsi(ProxiedScsi):
    """The same with the LSI's remote reached over vfio-user.

    :avocado: recursive
    :avocado: tags=agent,diskio,vfio-user
    """

    placement = topology.VFIO_USER


class ProxiedAgentFaults(AgentTest):
    """What the guest sees when the remote dies or hangs while it waits.

    :avocado: enable
    :avocado: tags=agent,faults,accel:kvm
    """

    # What the diagnosis of the blocked batch names: the proxy's vCPU waits
    # on its socket to the remote, whose role the harness knows.
    stopped_remote_wait = 'waits for a reply on the socket to remote-lsi1, stopped (SIGSTOP)'
    stopped_remote_issues = ()

    def test_killed_remote_raises_no_interrupt_and_reads_all_ones(self):
        self.boot()
        source = self.intx()
        with self.known_issue_guard(INTX_ISSUE):
            source.check(self.agent.run(source.cycle(IRQ_TIMEOUT_MS))[1], 'a SCRIPTS INT')
        with self.known_issue_guard('v8-proxy-exits-when-its-remote-dies'):
            remote = self.vm.remote('lsi1')
            agent = self.agent

            def kill_once_the_guest_waits():
                wait_until(lambda: agent.header('request_seq') != agent.header('done_seq'),
                           WAITING_TIMEOUT_S, 'the agent to start waiting', 0.005)
                remote.faults.kill()
            killer = threading.Thread(target=kill_once_the_guest_waits)
            killer.start()
            try:        # the remote dies while the guest waits for its interrupt
                wait = self.agent.one(Op.IRQ_WAIT, arg=IRQ_TIMEOUT_MS)
            finally:
                killer.join()
            self.assertEqual(wait.status, Status.TIMEOUT, 'an interrupt from a killed remote')
            restart = self.agent.run([source.start(), source.wait(NO_IRQ_MS)])
            self.assertEqual(restart[1].status, Status.TIMEOUT, 'a dead remote interrupted')
            scratcha = self.access.bar_read(self.mmio(lsi_regs.SCRATCHA), 4, True)
            self.assertEqual(scratcha, ALL_ONES_32)
            self.assertEqual(self.access.config_read(pci.VENDOR_ID, 4), ALL_ONES_32)
            self.assertEqual(self.vm.qemu.qmp('query-status')['status'], 'running')

    def test_stopped_remote_blocks_the_access_until_it_continues(self):
        self.boot()
        scratcha = self.mmio(lsi_regs.SCRATCHA)
        self.access.bar_write(scratcha, 0x5a5a1234, 4, True)
        remote = self.vm.remote('lsi1')
        remote.faults.hang()
        with self.known_issue_guard('v8-heartbeat-blocks-on-a-stopped-remote'):
            with self.assertRaises(AgentTimeout) as caught:
                self.agent.run([Command(Op.MEM_READ, addr=scratcha, size=4)], timeout_s=BLOCKED_S)
            message = str(caught.exception)
            self.assertIn(f'command #0 of 1 (MEM_READ {scratcha:#010x}/4) within', message)
            self.assertIn("the guest's timer stopped at tick", message)
            self.assertIn(self.stopped_remote_wait, message)
            self.assertEqual(self.vm.qemu.qmp('query-status')['status'], 'running')
        remote.faults.resume()
        read, = self.agent.finish_late(LATE_TIMEOUT_S)
        with self.known_issue_guard(*self.stopped_remote_issues):
            self.assertEqual(read.value, 0x5a5a1234, 'the blocked read did not wait for '
                                                     'the stopped remote')
            self.assertEqual(self.access.config_read(pci.VENDOR_ID, 4), LSI_ID_DWORD)


class VfioUserAgentFaults(ProxiedAgentFaults):
    """The same with the LSI's remote reached over vfio-user.

    :avocado: recursive
    :avocado: tags=agent,faults,vfio-user
    """

    placement = topology.VFIO_USER
    # The client's vCPU waits on a condition for the thread that talks to
    # the server: the diagnosis says it is blocked in QEMU, not on whom.
    stopped_remote_wait = 'its vCPU runs no guest code (blocked in QEMU'
    stopped_remote_issues = ('vfio-user-client-times-out-a-stopped-server',)


class ProxiedResetWithInterruptPending(AgentTest):
    """system_reset while the LSI asserts its line and the guest has not
    acknowledged it: after the reset the line is low, and works again.

    :avocado: enable
    :avocado: tags=agent,reset,accel:kvm
    """

    timeout = deadlines.test_timeout(agent_boots=2, waits_s=60)

    def test_line_is_low_after_the_reset(self):
        self.boot()
        source = self.intx()
        with self.known_issue_guard(INTX_ISSUE):
            source.check(self.agent.run([source.start(), source.wait(IRQ_TIMEOUT_MS)])[1],
                         'a SCRIPTS INT')
        self.assertTrue(self.access.bar_read(self.mmio(lsi_regs.ISTAT0), 1, True) & lsi_regs.ISTAT0_DIP)
        since = self.session.firmware.mark()
        self.agent.forget_boot()
        self.vm.qemu.qmp('system_reset')
        agent = self.session.wait_ready(self.vm.qemu, self.vm.memory_mb, since=since)
        self.assertEqual(agent.header('boots'), 2)
        self.record(reset_to_agent_ready_s=round(self.session.ready_s, 3))
        self.access = AgentAccess(agent, agent.find_device(lsi_regs.VENDOR_ID, lsi_regs.DEVICE_ID),
                                  self.vm.memory_mb * MIB)
        self.agent = agent
        self.assert_no_interrupt('after the reset, from the interrupt pending before it')
        self.lsi = lsi.Lsi53c895a(self.access)
        self.lsi.setup()
        self.assertEqual(self.lsi.read_reg(lsi_regs.ISTAT0) & (lsi_regs.ISTAT0_DIP | lsi_regs.ISTAT0_SIP), 0)
        source = self.intx()
        cycle = agent.run(source.cycle(IRQ_TIMEOUT_MS))
        source.check(cycle[1], 'a SCRIPTS INT after the reset')
        self.assert_no_interrupt('after the first interrupt since the reset')


class InProcessResetWithInterruptPending(ProxiedResetWithInterruptPending):
    """The same with the LSI inside the guest's QEMU.

    :avocado: recursive
    :avocado: tags=agent,reset,control
    """

    placement = topology.IN_PROCESS


class VfioUserResetWithInterruptPending(ProxiedResetWithInterruptPending):
    """The same with the LSI's remote reached over vfio-user.

    :avocado: recursive
    :avocado: tags=agent,reset,vfio-user
    """

    placement = topology.VFIO_USER


class ProxiedDimmDma(AgentTest):
    """DMA between the disk and a hot-plugged DIMM (above 4 GiB), each
    command completed by its interrupt: the remote maps the DIMM once the
    proxy has resent its memory table.

    :avocado: enable
    :avocado: tags=agent,hotplug,accel:kvm
    """

    def scsi(self, source: IntxSource, write: bool, lba: int, gpa: int, length: int) -> None:
        def run_to_its_interrupt(cb):
            start = Command(Op.MEM_WRITE, addr=source.dsp, size=4, value=cb)
            _, wait, _, dstat, dsps, _ = self.agent.run(
                [start, source.wait(IRQ_TIMEOUT_MS), *source.read_status(), source.ack()])
            source.check(wait, f'{"WRITE" if write else "READ"}(10) of {length} bytes')
            self.assertTrue(dstat.value & lsi_regs.DSTAT_SIR)
            self.assertEqual(dsps.value, lsi_scripts.INT_DONE)
        cb = self.access.dma_alloc(lsi_dma.PAGE_BYTES, lsi_dma.PAGE_BYTES)
        status = lsi_dma.rw10(self.access.mem_write, self.access.mem_read, run_to_its_interrupt,
                              cb, write, lba, gpa, length)
        self.access.dma_free(cb)
        self.assertEqual(status, scsi.STATUS_GOOD)

    def test_dma_into_and_out_of_a_dimm_completes_by_interrupt(self):
        disk = self.scratch_disk(DISK_MIB)
        pattern = os.urandom(DIMM_DMA_BYTES)
        bytecheck.write_image(disk, LBA_PATTERN * BLOCK, pattern)
        self.boot(drive=disk, memory_slots=2, maxmem_mb=self.memory_mb + 2 * DIMM_BYTES // MIB)
        source = self.intx()
        dimm = hotplug.MemoryHotplug(self.vm.qemu, self.workdir).plug('dimm0', DIMM_BYTES)
        if self.vm.multiprocess:
            memview.wait_remote_view(self.vm.remote('lsi1').process,
                                     lambda r: hotplug.maps_range(r, dimm.addr, dimm.size),
                                     what=f'dimm0 at {dimm.addr:#x}')
        ram = MappedRam(dimm.path, dimm.addr, dimm.size)
        self.addCleanup(ram.close)
        self.access.regions.append(ram)
        self.assertGreaterEqual(dimm.addr, 1 << 32)
        target = dimm.addr + dimm.size // 2
        with self.known_issue_guard(INTX_ISSUE):
            self.scsi(source, False, LBA_PATTERN, target, len(pattern))
        bytecheck.assert_same_bytes(ram.read(target, len(pattern)), pattern,
                                    'DIMM after READ(10) into it')
        outgoing = os.urandom(DIMM_DMA_BYTES)
        ram.write(target, outgoing)
        self.scsi(source, True, LBA_FROM_DIMM, target, len(outgoing))
        bytecheck.assert_same_bytes(bytecheck.read_image(disk, LBA_FROM_DIMM * BLOCK,
                                                         len(outgoing)),
                                    outgoing, 'disk after WRITE(10) from the DIMM')
        self.record(dimm_addr=hex(dimm.addr), dimm_plug_s=round(dimm.plug_s, 3))


class InProcessDimmDma(ProxiedDimmDma):
    """The same with the LSI inside the guest's QEMU.

    :avocado: recursive
    :avocado: tags=agent,hotplug,control
    """

    placement = topology.IN_PROCESS


class VfioUserDimmDma(ProxiedDimmDma):
    """The same over vfio-user: the client DMA-maps the DIMM (DMA_MAP with
    its fd), which the server adds to the device's address space.

    :avocado: recursive
    :avocado: tags=agent,hotplug,vfio-user
    """

    placement = topology.VFIO_USER
