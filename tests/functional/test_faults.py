"""A remote device process that dies or hangs: noticed fast, survived, replaced.

Isolation is why multi-process QEMU exists.  Upstream QEMU has no heartbeat
between proxy and remote, so the harness's watchdog (harness/mpqemu/
watchdog.py) measures how fast a fault can be noticed, and these scenarios
pin down what the guest and the VMM experience: all-ones reads from a dead
device, a blocked access (and only that) while the remote is stopped, a
proxy whose main loop waits for a stopped remote on reset, a remote that
exits once its proxy is gone, and a device brought back by hot-plugging a
fresh remote.
"""

import contextlib
import os
import statistics
import time

from harness.base import bytecheck
from harness.base.figures import spread
from harness.devices.lsi import driver as lsi, registers as lsi_regs
from harness.base.errors import QMPError
from harness.guest.pci import find_device
from harness.guest.ssh import CommandTimeout
from harness.mpqemu import fake_remote, topology
from harness.qemu import backtrace, vcpus
from harness.base.units import MIB, ms
from harness.testing import MultiprocessTest
from harness.base.waiting import wait_until

DETECT_TIMEOUT_S = 5.0          # only keeps a broken watchdog from hanging the test
# The v8 heartbeat pings every NOP_INTERVAL (1000 ms) of QEMU_CLOCK_VIRTUAL
# (hw/pci/proxy.c, patch 17): a kill is noticed at the next ping.
HEARTBEAT_PERIOD_MS = 1000
HEARTBEAT_EXIT_TIMEOUT_S = 3 * HEARTBEAT_PERIOD_MS / 1000
HEARTBEAT_INJECTIONS = 5
LATENCY_INJECTIONS = 10
ALL_ONES_32 = 0xffffffff
BLOCKED_WHILE_HUNG_S = 1.5      # how long the guest's access must stay blocked
COMPLETE_TIMEOUT_S = 20.0
QMP_WEDGED_TIMEOUT_S = 2.0
REMOTE_EXIT_TIMEOUT_S = 5.0
DEVICE_BACK_TIMEOUT_S = 30.0
POLL_S = 0.1
RESET_TRACE = 'lsi_reset'
BLOCKED_OUT = '/tmp/blocked.out'
BLOCKED_STARTED = '/tmp/blocked.started'
GUEST_SMP = 2                   # one vCPU may block on the device, the other serves SSH
GUEST_ANSWER_S = 10.0           # a guest command while the device hangs; longer is a stall
STALL_PROBE_S = 3.0             # a guest command that must not answer
STALL_MODULE = 'crc64.ko'       # in the image, never loaded by it: insmod'ed to need every CPU
INSMOD_DONE = '/tmp/insmod.done'


class FaultTest(MultiprocessTest):
    """
    :avocado: disable
    """

    def launch_topology(self, proxy_args=()):
        """Proxy + one watched remote, no guest."""
        vm = self.launch(disks=[self.scratch_disk(16)], remote_args=['-trace', RESET_TRACE],
                         watchdog=True, args=proxy_args)
        return vm, vm.remote('lsi1')

    def launch_watched_guest(self):
        """The tiny guest, two vCPUs (one may block on the device while the
        other serves SSH), the LSI in a watched remote."""
        vm = self.launch(guest='tiny', disks=[self.scratch_disk(64)], watchdog=True,
                         smp=GUEST_SMP, remote_args=['-trace', RESET_TRACE])
        session = vm.guest
        session.read_kernel_symbols()       # names the vCPUs should the guest stall
        return vm, session, find_device(session.ssh, lsi_regs.VENDOR_ID, lsi_regs.DEVICE_ID)


class RemoteDetection(FaultTest):
    """How fast the watchdog notices each kind of fault (no guest needed).

    :avocado: enable
    :avocado: tags=faults,heartbeat
    """

    def measure(self, kind, event_kind):
        latencies = []
        for _ in range(LATENCY_INJECTIONS):
            vm, remote = self.launch_topology()
            remote.faults.inject(kind)
            latencies.append(remote.watchdog.wait_for(event_kind, DETECT_TIMEOUT_S).latency_s)
            vm.shutdown()
        return latencies

    def test_detection_latency(self):
        """Median over 10 injections each of SIGKILL, abort-style crash and
        SIGSTOP; the design target (250 ms) is a figure, not an assert."""
        figures = {}
        for kind, event_kind in (('kill', 'dead'), ('crash', 'dead'), ('hang', 'hung')):
            latencies = self.measure(kind, event_kind)
            self.assertEqual(len(latencies), LATENCY_INJECTIONS)
            figures[f'detect_{kind}_ms'] = {'median': ms(statistics.median(latencies), 2),
                                            'max': ms(max(latencies), 2),
                                            'n': len(latencies)}
        self.record(**figures)

    def test_main_loop_hang_is_seen_by_the_ping(self):
        """A remote whose main loop stops answering is 'hung' even when the
        process state looks normal: the QMP ping deadline catches it."""
        vm, remote = self.launch_topology()
        remote.watchdog.use_proc_state = False      # leave it to the ping
        fault = remote.faults.hang()
        event = remote.watchdog.wait_for('hung', DETECT_TIMEOUT_S)
        self.assertIn('no reply', event.detail)
        self.assertGreaterEqual(event.detected_at, fault.injected_at)
        remote.faults.resume()
        remote.watchdog.wait_for('resumed', DETECT_TIMEOUT_S)
        self.record(detect_ping_hang_ms=ms(event.latency_s, 2))

    def test_proxy_death_makes_the_remote_exit(self):
        """No orphan: a remote whose proxy died exits by itself."""
        vm, remote = self.launch_topology()
        vm.faults.kill()
        event = remote.watchdog.wait_for('dead', REMOTE_EXIT_TIMEOUT_S)
        self.assertTrue(remote.process.wait_exit(REMOTE_EXIT_TIMEOUT_S))
        with self.known_issue_guard('v8-remote-crashes-finalizing-its-object'):
            self.assertEqual(remote.process.exitcode, 0)
        self.record(remote_exit_after_proxy_death_ms=ms(event.latency_s, 2))

    def require_heartbeat(self) -> None:
        if self.caps.multiprocess.flavour != 'v8':
            self.record(qemu_heartbeat='none: upstream multi-process QEMU has no '
                                       'proxy-remote heartbeat (v8 PROXY_PING was dropped)')
            self.cancel(f'{self.caps.version_string} has no heartbeat of its own '
                        f'(upstream names, not the v8 series); nothing to check')

    def test_qemu_heartbeat(self):
        """The v8 series' own heartbeat (patch 17: a PROXY_PING every second
        of guest time; a failed exchange is "Lost contact with device" and
        exit): a killed remote makes the proxy exit with that message,
        within two ping periods.  Each injection also times the suite's
        watchdog on the same remote: the two columns of one table.
        Upstream dropped the heartbeat; there the test cancels."""
        self.require_heartbeat()
        proxy_exit, watchdog = [], []
        for _ in range(HEARTBEAT_INJECTIONS):
            vm, remote = self.launch_topology()
            fault = remote.faults.kill()
            exited = vm.qemu.wait_exit(HEARTBEAT_EXIT_TIMEOUT_S)
            noticed = time.monotonic()
            self.assertTrue(exited, f'QEMU did not exit within {HEARTBEAT_EXIT_TIMEOUT_S} s '
                                    f'of losing its remote')
            with open(vm.qemu.log_path, encoding='utf-8', errors='replace') as log:
                self.assertIn('Lost contact with device lsi1', log.read())
            self.assertNotEqual(vm.qemu.exitcode, 0, 'QEMU exited as if all were well')
            proxy_exit.append(noticed - fault.injected_at)
            watchdog.append(remote.watchdog.wait_for('dead', DETECT_TIMEOUT_S).latency_s)
            vm.shutdown()
        self.record(heartbeat_kill_proxy_exit_ms=spread(proxy_exit, 1000, 2),
                    heartbeat_kill_watchdog_ms=spread(watchdog, 1000, 2),
                    heartbeat_period_ms=HEARTBEAT_PERIOD_MS)

    def test_qemu_heartbeat_on_a_stopped_remote(self):
        """A stopped remote (SIGSTOP) never answers the ping either: the
        heartbeat should report lost contact as it does for a dead one,
        and the proxy's monitor keep answering meanwhile; the suite's
        watchdog calls the remote hung."""
        self.require_heartbeat()
        vm, remote = self.launch_topology()
        fault = remote.faults.hang()
        hung = remote.watchdog.wait_for('hung', DETECT_TIMEOUT_S)
        self.record(heartbeat_stop_watchdog_ms=ms(hung.latency_s, 2))
        with self.known_issue_guard('v8-heartbeat-blocks-on-a-stopped-remote'):
            exited = vm.qemu.wait_exit(HEARTBEAT_EXIT_TIMEOUT_S)
            if not exited:
                try:
                    vm.qemu.qmp('query-status', timeout_s=QMP_WEDGED_TIMEOUT_S)
                except QMPError:
                    self.record(proxy_waits_in=backtrace.summary(vm.qemu.pid))
                    raise AssertionError(
                        f'the proxy neither exited nor answered QMP '
                        f'{time.monotonic() - fault.injected_at:.1f} s after its remote '
                        f'stopped: its heartbeat waits for the reply') from None
            self.assertTrue(exited, 'the heartbeat did not notice the stopped remote within '
                                    f'{HEARTBEAT_EXIT_TIMEOUT_S} s')
        remote.faults.resume()


class RemoteDetectionOverVfioUser(RemoteDetection):
    """The same with the remote serving the LSI over vfio-user: the
    watchdog watches the remote process whatever the transport, and a
    server whose client is gone shuts its remote down (auto-shutdown).

    :avocado: recursive
    :avocado: tags=faults,heartbeat,vfio-user
    """

    placement = topology.VFIO_USER


class ProxyWithStoppedRemote(FaultTest):
    """What the VMM's monitor does while a reset waits for a stopped remote.

    :avocado: enable
    :avocado: tags=faults,heartbeat,reset
    """

    # Known issues a reset waiting for the stopped remote meets.
    reset_issues = ('proxy-reset-blocks-on-stopped-remote',)

    def time_qmp(self, command, **args):
        started = time.monotonic()
        try:
            result = self.vm.qemu.qmp(command, timeout_s=QMP_WEDGED_TIMEOUT_S, **args)
        except QMPError as err:
            result = err
        return result, time.monotonic() - started

    def _status_or_none(self):
        result, _ = self.time_qmp('query-status')
        return None if isinstance(result, QMPError) else result['status']

    def resume_and_see_the_reset_arrive(self, remote, resets_before: int) -> None:
        """SIGCONT: the monitor answers again, the VM is still not started
        (-S) and the remote traces the reset it was waiting to run."""
        remote.faults.resume()
        started = time.monotonic()
        status = wait_until(lambda: self._status_or_none(), COMPLETE_TIMEOUT_S,
                            'the proxy monitor coming back after SIGCONT')
        self.assertEqual(status, 'prelaunch')        # -S: the reset did not start the VM
        wait_until(lambda: remote.process.count_trace_events(RESET_TRACE) > resets_before,
                   COMPLETE_TIMEOUT_S, 'the remote saw no reset')
        self.record(monitor_back_after_resume_ms=ms(time.monotonic() - started, 2))

    def test_reset_with_the_remote_stopped(self):
        """A reset sends DEVICE_RESET and waits for the reply; the proxy
        must survive it, the reset must reach the remote once it runs
        again, and the monitor should stay responsive meanwhile (QEMU 7.2
        waits in its main loop with no timeout: a known issue)."""
        # -S: no vCPU runs, so only the reset touches the device.
        self.vm, remote = self.launch_topology(proxy_args=['-S'])
        resets_before = remote.process.count_trace_events(RESET_TRACE)
        remote.faults.hang()
        remote.watchdog.wait_for('hung', DETECT_TIMEOUT_S)

        reset_reply, reset_s = self.time_qmp('system_reset')
        during_reset, _ = self.time_qmp('query-status')
        self.assertTrue(self.vm.qemu.is_running(), 'the proxy died')
        self.record(system_reset_with_stopped_remote=str(reset_reply),
                    system_reset_with_stopped_remote_ms=ms(reset_s, 2),
                    query_status_during_reset=str(during_reset))
        self.resume_and_see_the_reset_arrive(remote, resets_before)

        with self.known_issue_guard(*self.reset_issues):
            self.assertIsInstance(during_reset, dict, 'the proxy monitor did not answer while a '
                                                      'reset waited for the stopped remote')


class GuestFaultTest(FaultTest):
    """A watched tiny guest and the steps of its fault stories.

    :avocado: disable
    """

    def setUp(self):
        super().setUp()
        self.vm, self.session, self.lsi = self.launch_watched_guest()
        self.remote = self.vm.remote('lsi1')
        self.ssh = self.session.ssh
    def start_blocked_access(self, value):
        """Hang the remote, then start (on the last vCPU) a guest write of
        ``value`` to SCRATCHA and a read back into a file; returns once the
        guest has begun it."""
        fault = self.remote.faults.hang()
        event = self.remote.watchdog.wait_for('hung', DETECT_TIMEOUT_S)
        self.assertGreaterEqual(event.detected_at, fault.injected_at)
        access = (f"touch {BLOCKED_STARTED}; "
                  f"{self.lsi.bar_write32_command(lsi_regs.IO_BAR, lsi_regs.SCRATCHA, value)}; "
                  f"{self.lsi.bar_read32_command(lsi_regs.IO_BAR, lsi_regs.SCRATCHA)} "
                  f"> {BLOCKED_OUT}.tmp; mv {BLOCKED_OUT}.tmp {BLOCKED_OUT}")
        # The v8 heartbeat's ping waits for the stopped remote in the main
        # loop: the guest's network (slirp) stops with it.
        with self.known_issue_guard('v8-heartbeat-blocks-on-a-stopped-remote'):
            with self.guest_must_answer(self.vm, self.session):
                self.ssh.run(f'rm -f {BLOCKED_OUT} {BLOCKED_STARTED}', check=True,
                             timeout_s=GUEST_ANSWER_S)
                self.ssh.spawn(access, cpu=GUEST_SMP - 1)
                wait_until(lambda: self.ssh.run(f'test -e {BLOCKED_STARTED}',
                                                timeout_s=GUEST_ANSWER_S).ok,
                           COMPLETE_TIMEOUT_S, 'the guest starting its device access')
        return event

    def blocked_result(self):
        with self.guest_must_answer(self.vm, self.session):
            return self.ssh.run(f'cat {BLOCKED_OUT} 2>/dev/null',
                                timeout_s=GUEST_ANSWER_S).stdout

    def guest_alive(self):
        with self.guest_must_answer(self.vm, self.session):
            return self.ssh.run('uname -s', check=True, timeout_s=GUEST_ANSWER_S).stdout

    def resume_remote(self):
        self.remote.faults.resume()
        self.remote.watchdog.wait_for('resumed', DETECT_TIMEOUT_S)

    def check_access_completed(self, value):
        result = wait_until(self.blocked_result, COMPLETE_TIMEOUT_S,
                            'the blocked access did not complete')
        self.assertEqual(self.lsi.parse32(result), value)
    def _proxy_status(self):
        try:
            return self.vm.qemu.qmp('query-status', timeout_s=QMP_WEDGED_TIMEOUT_S)['status']
        except QMPError:
            return None

class GuestFaults(GuestFaultTest):
    """What the guest and the proxy see when the remote dies.

    :avocado: enable
    :avocado: tags=faults,heartbeat,ssh
    """

    def test_killed_remote_reads_all_ones_and_vm_survives(self):
        self.lsi.bar_write32(lsi_regs.IO_BAR, lsi_regs.SCRATCHA, 0x5a5a1234)
        fault = self.remote.faults.kill()
        event = self.remote.watchdog.wait_for('dead', DETECT_TIMEOUT_S)
        self.assertGreaterEqual(event.detected_at, fault.injected_at)

        # On v8 the read gives 0, or finds the proxy gone (its heartbeat).
        with self.known_issue_guard('v8-dead-remote-reads-as-zero',
                                    'v8-proxy-exits-when-its-remote-dies'):
            self.assertEqual(self.lsi.bar_read32(lsi_regs.IO_BAR, lsi_regs.SCRATCHA), ALL_ONES_32)
            self.assertEqual(self.lsi.config_read32(0), ALL_ONES_32)
        self.assertEqual(self.vm.qemu.qmp('query-status')['status'], 'running')
        self.assertEqual(self.ssh.run('echo alive', check=True).stdout, 'alive\n')

        def proxy_log():
            with open(self.vm.qemu.log_path, encoding='utf-8', errors='replace') as log:
                return log.read()
        log = wait_until(lambda: 'Broken pipe' in proxy_log() and proxy_log(),
                         DETECT_TIMEOUT_S, 'the proxy logged no error')
        self.assertIn('Unable to write to socket', log)
        self.record(detect_kill_ms=ms(event.latency_s, 2))
    def test_restart_after_kill_brings_the_device_back(self):
        """Kill the remote, unplug its client device, start a fresh remote
        on the same disk and device_add a new client device (the proxy gets
        its socket with getfd; vfio-user-pci the server's path): the guest
        sees a working LSI again."""
        self.remote.faults.kill()
        self.remote.watchdog.wait_for('dead', DETECT_TIMEOUT_S)
        old_pid = self.remote.process.pid
        started = time.monotonic()
        self.vm.restart_remote('lsi1')
        device = wait_until(lambda: self._lsi_if_present(), DEVICE_BACK_TIMEOUT_S,
                            'the guest did not see the re-plugged LSI')
        self.assertNotEqual(self.vm.remote('lsi1').pid, old_pid)
        value = 0x0badf00d
        device.bar_write32(lsi_regs.IO_BAR, lsi_regs.SCRATCHA, value)
        self.assertEqual(device.bar_read32(lsi_regs.IO_BAR, lsi_regs.SCRATCHA), value)
        self.assertEqual(self.vm.remote('lsi1').watchdog.events(), [])
        self.record(restart_to_device_usable_s=round(time.monotonic() - started, 3))

    def _lsi_if_present(self):
        listing = self.ssh.run('grep -l 0x0012 /sys/bus/pci/devices/*/device').stdout
        if not listing.strip():
            return None
        device = find_device(self.ssh, lsi_regs.VENDOR_ID, lsi_regs.DEVICE_ID)
        device.enable()      # no driver, no firmware: nothing else turns on I/O decoding
        return device


class GuestHangs(GuestFaultTest):
    """What the guest and the proxy see while the remote hangs: an access
    blocked for as long as the remote is stopped.

    :avocado: enable
    :avocado: tags=faults,heartbeat,ssh
    """

    def test_hung_remote_blocks_only_the_device_access(self):
        """While the remote is stopped a guest access to the device blocks;
        SSH, other guest commands and the proxy's QMP keep working; after
        SIGCONT the blocked write and read complete with the right value."""
        self.lsi.bar_write32(lsi_regs.IO_BAR, lsi_regs.SCRATCHA, 0x11111111)
        value = 0x600dcafe
        event = self.start_blocked_access(value)
        blocked_until = time.monotonic() + BLOCKED_WHILE_HUNG_S
        qmp_ms = []
        while time.monotonic() < blocked_until:
            self.assertEqual(self.blocked_result(), '',
                             'the device access completed while the remote was stopped')
            self.assertEqual(self.guest_alive(), 'Linux\n')
            started = time.monotonic()
            self.assertEqual(self.vm.qemu.qmp('query-status')['status'], 'running')
            qmp_ms.append(ms(time.monotonic() - started, 2))
            time.sleep(POLL_S)
        self.resume_remote()
        self.check_access_completed(value)
        self.record(detect_hang_ms=ms(event.latency_s, 2), proxy_qmp_while_hung_ms=max(qmp_ms))
    def start_insmod_needing_every_cpu(self) -> None:
        """insmod on vCPU 0: its page-permission changes flush every CPU's
        TLB.  The stall may begin before the reply to this very command
        leaves the guest: it is confirmed from the vCPUs, not from SSH."""
        module = self.ssh.run(f'grep -h "/{STALL_MODULE}$" /etc/mpqemu/modules.*',
                              check=True).stdout.strip()
        self.assertFalse(self.ssh.run(f'grep -q "^{STALL_MODULE[:-3]} " /proc/modules').ok)
        with contextlib.suppress(CommandTimeout):
            self.ssh.spawn(f'insmod {module} && touch {INSMOD_DONE}', cpu=0,
                           timeout_s=STALL_PROBE_S)

    def wait_for_the_cross_cpu_stall(self):
        """(waiting vCPU, blocked vCPU) once one waits for the other, and
        where each is: the blocked one inside the guest's BAR write."""
        symbols = vcpus.KernelSymbols(self.session.symbols)

        def stalled():
            states = vcpus.snapshot(self.vm.qemu, symbols)
            return vcpus.waiting_for_a_peer(states) and states
        states = wait_until(stalled, COMPLETE_TIMEOUT_S,
                            'no vCPU waiting for the blocked one after insmod')
        waiting, blocked = states
        self.assertEqual(waiting.index, 0, vcpus.describe(states))
        self.assertGreater(waiting.busy, blocked.busy, vcpus.describe(states))
        self.assertFalse(blocked.halted)                      # mid-instruction, in QEMU
        self.assertTrue((blocked.symbol or '').startswith('pci_write_resource_io'),
                        vcpus.describe(states))               # the guest's BAR write
        self.assertNotEqual(blocked.host_state, 'R', vcpus.describe(states))
        return states
    def test_guest_kernel_needing_the_blocked_vcpu_stalls(self):
        """The limit of "only the device access blocks": the vCPU waiting
        for the stopped remote takes no IPIs, so once the guest kernel needs
        every CPU (here: insmod) the other vCPU spins in the cross-CPU call
        and the whole guest stops answering.  The proxy's QMP still answers;
        after SIGCONT the module load, the blocked access and SSH all complete."""
        if not self.session.symbols:
            self.cancel('the guest kernel symbols are unknown (a guest without nokaslr), '
                        'so where its vCPUs wait cannot be told')
        value = 0xdeadbea7
        self.start_blocked_access(value)
        spawned_at = time.monotonic()
        self.start_insmod_needing_every_cpu()
        states = self.wait_for_the_cross_cpu_stall()
        stall_s = time.monotonic() - spawned_at
        with self.assertRaises(CommandTimeout):
            self.ssh.run('true', timeout_s=STALL_PROBE_S)
        self.assertEqual(self.vm.qemu.qmp('query-status')['status'], 'running')

        self.resume_remote()
        resumed_at = time.monotonic()
        with self.guest_must_answer(self.vm, self.session):
            wait_until(lambda: self.ssh.run(f'test -e {INSMOD_DONE}',
                                            timeout_s=GUEST_ANSWER_S).ok,
                       COMPLETE_TIMEOUT_S, 'the module load did not finish after SIGCONT')
            recovered_s = time.monotonic() - resumed_at
            self.check_access_completed(value)
        self.record(stall_after_insmod_s=round(stall_s, 2), guest_stall=vcpus.describe(states),
                    guest_back_after_resume_s=round(recovered_s, 2))
    def test_pause_while_a_vcpu_waits_for_the_hung_remote(self):
        """QMP stop must pause every vCPU, including one stuck in an access
        to the stopped remote: it should answer (QEMU 7.2 waits for the
        vCPU with no timeout: a known issue).  Either way, once the remote
        runs again the VM is paused, resumes, and the access completes."""
        value = 0x5eed1e55
        self.start_blocked_access(value)
        # Started and not finished: a vCPU is in the access.
        self.assertEqual(self.blocked_result(), '',
                         'the device access completed while the remote was stopped')
        try:
            stop_reply = self.vm.qemu.qmp('stop', timeout_s=QMP_WEDGED_TIMEOUT_S)
        except QMPError as err:
            stop_reply = err
        self.record(stop_with_vcpu_blocked_on_remote=str(stop_reply))
        self.resume_remote()
        status = wait_until(self._proxy_status, COMPLETE_TIMEOUT_S,
                            'the proxy monitor did not come back after SIGCONT')
        self.assertEqual(status, 'paused')
        self.vm.qemu.qmp('cont')
        self.check_access_completed(value)
        with self.known_issue_guard('proxy-stop-blocks-on-stopped-remote'):
            self.assertEqual(stop_reply, {}, 'QMP stop did not answer while a vCPU waited '
                                             'for the stopped remote')

class ResetWithStoppedServer(ProxyWithStoppedRemote):
    """The same over vfio-user.

    :avocado: recursive
    :avocado: tags=faults,heartbeat,reset,vfio-user
    """

    placement = topology.VFIO_USER
    reset_issues = ('vfio-user-reset-blocks-on-stopped-server',)


class GuestFaultsOverVfioUser(GuestFaults):
    """The same over vfio-user.  (GuestHangs has no vfio-user twin: the
    client ends every request after x-msg-timeout, 5 s, with all-ones, so
    no access stays blocked while the server is stopped; the agent's
    VfioUserAgentFaults shows it: known issue
    vfio-user-client-times-out-a-stopped-server.)

    :avocado: recursive
    :avocado: tags=faults,heartbeat,ssh,vfio-user
    """

    placement = topology.VFIO_USER


class RestartKeepsFlushedData(FaultTest):
    """Data the device wrote and flushed before its process was killed is
    on the disk for the next remote (device level, through the fake proxy).

    :avocado: enable
    :avocado: tags=faults,protocol
    """

    harness_speaks = 'mpqemu'

    def test_flushed_data_survives_a_killed_remote(self):
        image = bytecheck.write_random_image(os.path.join(self.workdir, 'disk.raw'), 16 * MIB)
        payload = os.urandom(2 * MIB)
        lba = 4096
        with fake_remote.launch(self.caps, log_dir=self.outputdir, drive=image,
                                confinement=self.confinement) as first:
            engine = lsi.Lsi53c895a(first.access)
            engine.setup()
            engine.wait_ready()
            engine.write10(lba, payload, fua=True)       # written and flushed
            first.remote.faults.kill()
            self.assertTrue(first.remote.process.wait_exit(REMOTE_EXIT_TIMEOUT_S))
            self.assertEqual(first.remote.process.exitcode, -9)
        with fake_remote.launch(self.caps, log_dir=self.outputdir, drive=image,
                                confinement=self.confinement) as second:
            engine = lsi.Lsi53c895a(second.access)
            engine.setup()
            engine.wait_ready()
            bytecheck.assert_same_bytes(engine.read10(lba, len(payload) // 512), payload,
                                        'data read by the restarted remote')
        bytecheck.assert_same_bytes(bytecheck.read_image(image, lba * 512, len(payload)),
                                    payload, 'the image file after the crash')
