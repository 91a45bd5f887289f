"""Device reset crosses the process boundary.

A QMP ``system_reset`` on the proxy resets the ``x-pci-proxy-dev``, whose
reset handler sends DEVICE_RESET to the remote and waits for the answer
(hw/remote/proxy.c proxy_device_reset); the remote runs the LSI's own reset
(hw/remote/message.c), which logs ``lsi_reset`` when traced.  Nothing else
shows that the reset arrived: a register the guest wrote would otherwise
survive the reboot.  The remote's trace carries wall-clock timestamps
(``-msg timestamp=on``) so that the test can place the reset between the
guest's write and its read after the reboot.
"""

import random
import time

from harness.base import deadlines
from harness.base.errors import QMPError
from harness.devices.lsi import registers as lsi_regs
from harness.guest import lsi_dma
from harness.guest.pci import find_device
from harness.mpqemu import proxyram, topology
from harness.base.waiting import wait_until
from harness.qemu.tracelog import event_times, trace_args
from harness.base.units import ms
from harness.testing import MultiprocessTest

RESET_TRACE = trace_args('lsi_reset')
SCRATCHA = lsi_regs.SCRATCHA
QUICK_RESETS = 10
RESET_EVENT_TIMEOUT_S = 5.0
TRACE_TIMEOUT_S = 5.0
POLL_S = 0.01
DIED_LOG_LINES = 80            # a crash dump of the CPU state may follow its last words


def wait_for_trace(process, count: int) -> list:
    """A remote process's lsi_reset times once there are more than ``count``."""
    def more():
        times = event_times(process, ['lsi_reset'])
        return times if len(times) > count else None
    return wait_until(more, TRACE_TIMEOUT_S, f'lsi_reset number {count + 1} in {process.log_path}',
                      POLL_S)


class ResetTest(MultiprocessTest):
    """Shared steps; no tests of its own."""

    timeout = deadlines.test_timeout(boots=2, waits_s=2 * deadlines.COMMAND_S)

    def boot(self, **kwargs):
        vm = self.launch(guest='tiny', remote_args=RESET_TRACE, **kwargs)
        session = vm.guest
        return vm, session, find_device(session.ssh, lsi_regs.VENDOR_ID, lsi_regs.DEVICE_ID)

    def reset_and_reboot(self, vm, session):
        """system_reset on the proxy and a fresh login; returns the time the
        reset was asked for (wall clock)."""
        since = session.console.mark()
        asked_at = time.time()
        vm.qemu.qmp('system_reset')
        vm.qemu.get_event('RESET', RESET_EVENT_TIMEOUT_S)
        session.wait_rebooted(vm.qemu, since)
        self.record(reset_to_marker_s=round(session.times.marker_s, 3),
                    reset_to_ssh_s=round(session.times.ssh_s, 3))
        return asked_at

    def guest_dma_works(self, vm, session, device) -> None:
        """The guest starts SCRIPTS that copy one of its pages onto
        another by DMA (MEMORY MOVE), and reads the copy back itself."""
        guest_lsi = lsi_dma.GuestLsi(device)
        guest_lsi.enable_bus_master()
        ram = proxyram.boot_ram(vm.qemu.pid, vm.memory_mb << 20)
        try:
            pages = lsi_dma.place_marked_pages(session.ssh, ram, 3, '/tmp/reset-dma')
            ram.write(pages[0], lsi_dma.memory_move_script(
                pages[0], [(pages[1], pages[2], proxyram.PAGE_SIZE)]))
            guest_lsi.run(pages[0])
            copy = session.ssh.read_bytes('/tmp/reset-dma')[2 * proxyram.PAGE_SIZE:]
            self.assertEqual(copy, ram.read(pages[1], proxyram.PAGE_SIZE))
        finally:
            ram.close()


class ResetPropagation(ResetTest):
    """
    :avocado: enable
    :avocado: tags=reset
    """

    def test_system_reset_clears_a_register_the_guest_wrote(self):
        vm, session, device = self.boot()
        process = vm.remote('lsi1').process
        value = random.Random(self.name.str_filesystem).getrandbits(32) | 0x01010101
        device.bar_write32(lsi_regs.IO_BAR, SCRATCHA, value)
        self.assertEqual(device.bar_read32(lsi_regs.IO_BAR, SCRATCHA), value)
        written_at = time.time()

        asked_at = self.reset_and_reboot(vm, session)
        device = find_device(session.ssh, lsi_regs.VENDOR_ID, lsi_regs.DEVICE_ID)
        read_at = time.time()
        self.assertEqual(device.bar_read32(lsi_regs.IO_BAR, SCRATCHA), 0)

        # The reset reached the remote after the write, once system_reset
        # was asked for, and before the guest read the register again.
        resets = [t for t in event_times(process, ['lsi_reset']) if t > written_at]
        self.assertTrue(resets, f'no lsi_reset in {process.log_path} after the write')
        self.assertGreaterEqual(resets[0], asked_at)
        self.assertLess(resets[0], read_at)
        self.record(reset_arrival_ms=ms(resets[0] - asked_at, 3),
                    lsi_resets_per_system_reset=len(resets))


class QuickResets(ResetTest):
    """Resets with no boot between them, checked in the remote itself: its
    monitor reaches the LSI's I/O BAR because the remote maps the BARs
    where the guest put them (over the proxy; a vfio-user server serves
    regions by offset and maps no BAR, so this story is the proxy's).

    :avocado: enable
    :avocado: tags=reset
    """

    def reset_clears_scratcha(self, vm, process, port: int, i: int) -> float:
        """Set SCRATCHA through the remote ``process``'s own monitor,
        system_reset the stopped VM: the remote traces one reset and
        SCRATCHA reads 0.  Returns how long the reset took to arrive (ms)."""
        value = random.Random(f'{self.name.str_filesystem}-{i}').getrandbits(32) | 1
        process.hmp(f'o /w {port:#x} {value:#x}')
        self.assertEqual(process.inl(port), value)
        before = len(event_times(process, ['lsi_reset']))
        asked_at = time.time()
        vm.qemu.qmp('system_reset')
        vm.qemu.get_event('RESET', RESET_EVENT_TIMEOUT_S)
        times = wait_for_trace(process, before)
        self.assertEqual(len(times), before + 1, f'reset {i + 1}: lsi_reset count')
        self.assertEqual(process.inl(port), 0, f'reset {i + 1}')
        return ms(times[-1] - asked_at, 3)

    def test_ten_resets_in_a_row_leave_the_device_working(self):
        """Ten resets of a stopped VM, each seen by the remote and each
        clearing SCRATCHA that the harness set through the remote's own
        monitor (no boot between them), then one boot: the guest's register
        and DMA checks still pass."""
        vm, session, device = self.boot()
        process = vm.remote('lsi1').process
        io_base = int(session.ssh.run(f'head -1 {device.path}/resource', check=True)
                      .stdout.split()[0], 16)
        port = io_base + SCRATCHA
        vm.qemu.qmp('stop')
        since = session.console.mark()
        latencies_ms = [self.reset_clears_scratcha(vm, process, port, i)
                        for i in range(QUICK_RESETS)]
        self.assertEqual(vm.qemu.qmp('query-status')['status'], 'prelaunch')
        vm.qemu.qmp('cont')
        session.wait_rebooted(vm.qemu, since)
        device = find_device(session.ssh, lsi_regs.VENDOR_ID, lsi_regs.DEVICE_ID)
        device.bar_write32(lsi_regs.IO_BAR, SCRATCHA, 0xa5a55a5a)
        self.assertEqual(device.bar_read32(lsi_regs.IO_BAR, SCRATCHA), 0xa5a55a5a)
        self.guest_dma_works(vm, session, device)
        self.assertTrue(process.is_running())
        self.record(quick_reset_arrival_ms=latencies_ms,
                    quick_reset_arrival_ms_max=max(latencies_ms),
                    reset_to_ssh_s=round(session.times.ssh_s, 3))


class ResetPropagationOverVfioUser(ResetPropagation):
    """The same with the remote LSI reached over vfio-user: the client's
    reset (VFIO_USER_DEVICE_RESET) must reach the remote's LSI too.

    :avocado: recursive
    :avocado: tags=reset,vfio-user
    """

    placement = topology.VFIO_USER


class ResetWithBrokenRemote(ResetTest):
    """A reset while the remote is dead must not take the VM down.  (A
    reset with the remote stopped is test_faults.py's
    ProxyWithStoppedRemote; known issue proxy-reset-blocks-on-stopped-remote.)

    :avocado: enable
    :avocado: tags=reset,faults
    """

    # Known issues a reset with the remote dead meets.
    dead_remote_issues = ('v8-proxy-exits-when-its-remote-dies',)

    def test_reset_with_the_remote_killed(self):
        vm, session, device = self.boot()
        remote = vm.remote('lsi1')
        remote.faults.kill()
        self.assertTrue(remote.process.wait_exit(TRACE_TIMEOUT_S))
        with self.known_issue_guard(*self.dead_remote_issues):
            try:
                asked_at = self.reset_and_reboot(vm, session)
            except Exception as err:       # pylint: disable=broad-except
                # A QMP connection that dropped: give the process time to end.
                died = not vm.qemu.is_running() or (isinstance(err, QMPError)
                                                    and vm.qemu.wait_exit(TRACE_TIMEOUT_S))
                if not died:
                    raise
                # Its last messages, before any CPU state dump.
                said = [line for line in vm.qemu.log_tail(DIED_LOG_LINES).splitlines()
                        if line.startswith('qemu')][-3:]
                self.fail(f"the guest's QEMU died on the reset (exit status "
                          f"{vm.qemu.exitcode}; it said: {' / '.join(said)}): "
                          f"{str(err).splitlines()[0]}")
        self.assertTrue(vm.qemu.is_running())
        self.assertEqual(vm.qemu.qmp('query-status')['status'], 'running')
        # The guest came back (its kernel is -kernel, not on the LSI's
        # disk); the dead device answers all-ones, if it is seen at all.
        vendors = session.ssh.run('cat /sys/bus/pci/devices/*/vendor', check=True).stdout
        self.assertNotIn('0x1000', vendors.split())
        self.assertIn('Unable to write to socket', vm.qemu.log_tail(50))
        self.record(reset_with_dead_remote_to_ssh_s=round(time.time() - asked_at, 3))


class ResetWithDeadServer(ResetWithBrokenRemote):
    """The same over vfio-user.

    :avocado: recursive
    :avocado: tags=reset,faults,vfio-user
    """

    placement = topology.VFIO_USER
    dead_remote_issues = ('vfio-user-client-aborts-on-reset-with-dead-server',)
