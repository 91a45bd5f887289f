"""The one-device-per-remote promise.

The multi-process series limited each remote process to one device "to
alleviate security concerns": a device in its own process cannot reach
another VM's device or RAM, and cannot take it down with it.  QEMU keeps
the limit in hw/remote/remote-obj.c (remote_object_class_init:
``max_devs = 1``, "until we start using separate address spaces for
individual devices"); hw/remote/vfio-user-obj.c has no such limit (its
devices get per-device DMA address spaces, hw/remote/iommu.c).

Each scenario starts one real remote with two LSI 53C895As (each with its
disk) and two server objects, each on a socket of its own, and talks to
both through the harness (harness/mpqemu/shared_remote.py): fake proxies
for ``x-remote-object``, vfio-user clients for ``x-vfio-user-server``.
What QEMU does is asserted as observed; where it breaks the promise, the
promise is asserted inside a ``known_issue_guard`` (tests/known_issues/),
so the test ends as CANCEL with the entry's evidence.
"""

import contextlib
import signal
import time

from harness.base.errors import LaunchError
from harness.base.fdstream import RemoteGone, RemoteTimeout
from harness.base.units import ms
from harness.devices import pci
from harness.devices.lsi import registers as lsi_regs
from harness.mpqemu import protocol, shared_remote, topology
from harness.testing import MultiprocessTest
from harness.vfio_user import protocol as vfu

LSI_ID = lsi_regs.DEVICE_ID << 16 | lsi_regs.VENDOR_ID      # config dword 0: 0x00121000
DISK_MB = 16
REPLY_TIMEOUT_S = 5.0           # generous: it only keeps a broken remote from hanging us
UNSERVED_TIMEOUT_S = 0.5        # how long an object that serves nobody is given to answer
EXIT_TIMEOUT_S = 5.0
# hw/remote/remote-obj.c, remote_object_init: the second object is created
# anyway, with this on stderr, and never served.  The v8 series' remote
# (hw/i386/remote-obj.c) fails its creation instead: QEMU does not start.
REFUSAL_LOG = 'Reached maximum number of devices: 1'
REFUSED_AT_START = 'exited with status 1'
INVALID_MESSAGE_LOG = 'Received invalid message from proxy'
A_VALUE, B_VALUE = 0x1111_aaaa, 0x2222_bbbb
PROMISE = 'ONE-DEVICE PROMISE'
REMOTE_REFUSED_OBJECT = 'remote-runs-with-a-refused-remote-object'
REMOTE_CRASHES_AT_EXIT = 'remote-crashes-freeing-a-refused-remote-object'
V8_CRASHES_AT_EXIT = 'v8-remote-crashes-finalizing-its-object'
VFIO_USER_SEVERAL_DEVICES = 'vfio-user-remote-serves-several-devices'


class OneDevicePerRemote(MultiprocessTest):
    """A remote given a second device and a second x-remote-object refuses
    it: the second proxy is never served, cannot reach the first device,
    and the first connection's failure is the only one that ends it.

    :avocado: enable
    :avocado: tags=security,protocol
    """

    transport = topology.PROXY
    harness_speaks = 'mpqemu'

    def setUp(self):
        self._shared = []
        super().setUp()
        self.disks = [self.scratch_disk(DISK_MB, f'disk{i}.raw') for i in (1, 2)]

    def tearDown(self):
        for shared in self._shared:
            shared.close()
        super().tearDown()

    def start(self, *served):
        """One remote with lsi1 and lsi2 (each with its disk) and a server
        object for each devid of ``served``, every one connected to."""
        started = time.monotonic()
        shared = shared_remote.launch(
            self.remote_caps, log_dir=self.outputdir, transport=self.transport,
            lsis=[('lsi1', self.disks[0]), ('lsi2', self.disks[1])], served=served,
            timeout_s=REPLY_TIMEOUT_S, confinement=self.confinement)
        self._shared.append(shared)
        self.record(remote_up_ms=ms(time.monotonic() - started),
                    objects=[f'{e.object_id} -> {e.devid}' for e in shared.endpoints])
        return shared.remote, shared.endpoints

    def start_both(self, *served):
        """start(*served), or None when the remote refuses to start at all
        with a second object (the v8 series: the promise kept, strictly)."""
        try:
            return self.start(*served)
        except LaunchError as err:
            self.assertIn(REFUSAL_LOG, str(err))
            self.assertIn(REFUSED_AT_START, str(err))
            self.record(remote_refused_at_start=True)
            return None

    def answers(self, endpoint) -> bool:
        """True if the object behind ``endpoint`` answers a config read with
        the LSI's ids; False if it stays silent."""
        try:
            value = endpoint.config_read(0, 4)
        except RemoteTimeout:
            return False
        self.assertEqual(value, LSI_ID, f'{endpoint.object_id}: config dword 0')
        return True

    def remote_pci(self, remote, devid):
        """``query-pci`` on the remote's own monitor: the device as QEMU has it."""
        device = pci.qmp_pci_device(remote.qmp('query-pci'), devid)
        self.assertIsNotNone(device, f'{devid} in the remote')
        return device

    @staticmethod
    def bar_addresses(device):
        return {r['bar']: r['address'] for r in device['regions']}

    def assert_refused_but_running(self, remote, second):
        """What 7.2 and 10.0 do with a second x-remote-object: it is created,
        the error goes to stderr, and its socket is never read."""
        with self.served_briefly(second):
            self.assertFalse(self.answers(second), f'{second.object_id} answered')
        self.assertEqual(log_lines(remote, REFUSAL_LOG), 1, remote.process.log_tail())
        self.assertTrue(remote.process.is_running())
        self.assertEqual(remote.qmp('query-status')['status'], 'running')

    @staticmethod
    @contextlib.contextmanager
    def served_briefly(endpoint):
        """Requests in the block wait UNSERVED_TIMEOUT_S for their reply."""
        saved, endpoint.link.timeout_s = endpoint.link.timeout_s, UNSERVED_TIMEOUT_S
        try:
            yield
        finally:
            endpoint.link.timeout_s = saved

    def promise_remote_refuses(self, remote, issue):
        with self.known_issue_guard(issue):
            self.assertFalse(remote.process.is_running(),
                             f'{PROMISE}: the remote runs with a second device and a second '
                             f'server object instead of refusing them')

    # ------------------------------------------------------------ scenarios

    def test_second_device_and_object_are_refused(self):
        """Two LSIs and two objects in one remote: the remote does not start,
        or at least serves the first object only."""
        started = self.start_both('lsi1', 'lsi2')
        if started is None:
            return
        remote, (first, second) = started
        self.assertTrue(self.answers(first))
        self.assert_refused_but_running(remote, second)
        # The second LSI is emulated all the same, its disk open.
        self.assertEqual(self.remote_pci(remote, 'lsi2')['id']['device'], lsi_regs.DEVICE_ID)
        self.record(second_object_served=False, remote_exit=None)
        self.promise_remote_refuses(remote, REMOTE_REFUSED_OBJECT)

    def test_second_object_for_the_same_device(self):
        """A second x-remote-object naming the first's device (two proxies
        on one LSI) is refused like any second object."""
        started = self.start_both('lsi1', 'lsi1')
        if started is None:
            return
        remote, (first, second) = started
        self.assertTrue(self.answers(first))
        self.assert_refused_but_running(remote, second)
        self.record(second_object_served=False)
        self.promise_remote_refuses(remote, REMOTE_REFUSED_OBJECT)

    def test_a_proxy_reaches_only_its_own_device(self):
        """The first proxy programs and uses its LSI; the second LSI, which
        no proxy can program, stays unmapped.  A proxy's BAR accesses
        address the remote's whole address space (hw/remote/message.c,
        process_bar_rw: address_space_memory/io), so an unmapped device is
        the only kind a proxy cannot reach."""
        remote, (first, *second) = self.start_both('lsi1', 'lsi2') or self.start('lsi1')
        lsi1 = pci.PciFunction(first.access())
        bars = lsi1.setup()
        lsi1.write(lsi_regs.MMIO_BAR, lsi_regs.SCRATCHA, A_VALUE, 4)
        self.assertEqual(lsi1.read(lsi_regs.MMIO_BAR, lsi_regs.SCRATCHA, 4), A_VALUE)
        programmed = {bar.index: bar.address for bar in bars}
        self.assertEqual(self.bar_addresses(self.remote_pci(remote, 'lsi1')), programmed)
        self.assertEqual(set(self.bar_addresses(self.remote_pci(remote, 'lsi2')).values()),
                         {-1}, 'lsi2 has BARs mapped')
        for unserved in second:
            with self.served_briefly(unserved):
                self.assertFalse(self.answers(unserved))
        self.record(lsi1_bars={str(k): hex(v) for k, v in programmed.items()})

    def test_one_connection_failing_takes_the_other_down(self):
        """An invalid message on the first socket ends the remote's message
        loop and the whole process (hw/remote/message.c): the second
        socket closes with it."""
        started = self.start_both('lsi1', 'lsi2')
        if started is None:
            self.cancel('this remote refuses to start with a second object '
                        '(test_second_device_and_object_are_refused): no remote has two '
                        'connections here')
        remote, (first, second) = started
        self.assertTrue(self.answers(first))
        first.link.send(protocol.Message(protocol.Cmd.MAX))
        self.assertTrue(remote.process.wait_exit(EXIT_TIMEOUT_S), 'the remote did not exit')
        self.assertEqual(log_lines(remote, INVALID_MESSAGE_LOG), 1, remote.process.log_tail())
        with self.assertRaises(RemoteGone):
            second.config_read(0, 4)
        self.record(remote_exit=remote.process.exitcode)
        self.promise_clean_exit(remote)

    def test_remote_exits_cleanly_when_its_proxy_hangs_up(self):
        """The remote exits by itself once the proxy of its one served
        object hangs up, with status 0."""
        remote, (first, *_) = self.start_both('lsi1', 'lsi2') or self.start('lsi1')
        self.assertTrue(self.answers(first))
        first.link.close()
        self.assertTrue(remote.process.wait_exit(EXIT_TIMEOUT_S), 'the remote did not exit')
        self.record(remote_exit=remote.process.exitcode)
        self.promise_clean_exit(remote)

    def promise_clean_exit(self, remote):
        with self.known_issue_guard(REMOTE_CRASHES_AT_EXIT, V8_CRASHES_AT_EXIT):
            self.assertEqual(remote.process.exitcode, 0,
                             f'the remote did not exit cleanly: '
                             f'{remote.process.state_description()}')


class OneDevicePerRemoteOverVfioUser(OneDevicePerRemote):
    """The same remote serving its LSIs with two x-vfio-user-servers
    (vfio_user_server: a 10.0 build with --enable-vfio-user-server), the
    harness as the client of each.  vfio-user has no one-device limit.

    :avocado: recursive
    :avocado: tags=security,protocol,vfio-user
    """

    placement = topology.VFIO_USER
    harness_speaks = 'vfio-user'
    transport = topology.VFIO_USER

    def subjects(self, lookup):
        # Only the server runs: the harness is the client.
        return list(super().subjects(lookup))[1:]

    def setUp(self):
        super().setUp()
        if not self.remote_caps.vfio_user_server:
            self.cancel(f"QEMU at {self.remote_caps.path} ({self.remote_caps.version_string})"
                        f" has no x-vfio-user-server: build it with --enable-vfio-user-server "
                        f"(-p vfio_user_server=src:debian:trixie+vfio-user-server)")

    def start(self, *served):
        remote, endpoints = super().start(*served)
        for endpoint in endpoints:
            endpoint.link.negotiate()      # before anything else, as a client must
        return remote, endpoints

    def served_both(self, remote, first, second):
        """Both servers answer as the LSI; the remote logged no refusal."""
        self.assertTrue(self.answers(first))
        self.assertTrue(self.answers(second), f'{second.object_id} did not answer')
        self.assertEqual(log_lines(remote, REFUSAL_LOG), 0, remote.process.log_tail())
        self.record(second_object_served=True)

    def test_second_device_and_object_are_refused(self):
        remote, (first, second) = self.start('lsi1', 'lsi2')
        self.served_both(remote, first, second)
        self.promise_remote_refuses(remote, VFIO_USER_SEVERAL_DEVICES)

    def test_second_object_for_the_same_device(self):
        """Two servers on one LSI: both clients drive the same registers."""
        remote, (first, second) = self.start('lsi1', 'lsi1')
        self.served_both(remote, first, second)
        via_first, via_second = pci.PciFunction(first.access()), pci.PciFunction(second.access())
        via_first.setup()
        via_first.write(lsi_regs.MMIO_BAR, lsi_regs.SCRATCHA, A_VALUE, 4)
        via_second.setup()
        self.assertEqual(via_second.read(lsi_regs.MMIO_BAR, lsi_regs.SCRATCHA, 4), A_VALUE,
                         'the second client does not see the first one\'s SCRATCHA')
        self.promise_remote_refuses(remote, VFIO_USER_SEVERAL_DEVICES)

    def test_a_proxy_reaches_only_its_own_device(self):
        """Each client reaches its own LSI's registers only.  Both program
        their BARs at the same addresses, which overlap in the one remote;
        a BAR access goes through the remote's flat memory view at the
        BAR's address (hw/remote/vfio-user-obj.c, vfu_object_bar_rw:
        memory_region_find), so it reaches whichever device QEMU mapped
        there."""
        remote, (first, second) = self.start('lsi1', 'lsi2')
        lsi1, lsi2 = pci.PciFunction(first.access()), pci.PciFunction(second.access())
        lsi1.setup()
        lsi2.setup()
        bars1 = self.bar_addresses(self.remote_pci(remote, 'lsi1'))
        bars2 = self.bar_addresses(self.remote_pci(remote, 'lsi2'))
        self.assertEqual(bars1, bars2, 'both clients programmed the same BAR addresses')
        lsi1.write(lsi_regs.MMIO_BAR, lsi_regs.SCRATCHA, A_VALUE, 4)
        lsi2.write(lsi_regs.MMIO_BAR, lsi_regs.SCRATCHA, B_VALUE, 4)
        read1 = lsi1.read(lsi_regs.MMIO_BAR, lsi_regs.SCRATCHA, 4)
        read2 = lsi2.read(lsi_regs.MMIO_BAR, lsi_regs.SCRATCHA, 4)
        self.record(overlapping_bars={str(k): hex(v) for k, v in bars1.items()},
                    scratcha_read_by_first=hex(read1), scratcha_read_by_second=hex(read2))
        self.assertEqual(read2, B_VALUE)
        with self.known_issue_guard(VFIO_USER_SEVERAL_DEVICES):
            self.assertEqual(read1, A_VALUE,
                             f'{PROMISE}: the first client reads SCRATCHA {read1:#x}, the value '
                             f'the second client wrote to its own device: with their BARs at the '
                             f'same address, one client reaches the other\'s device')

    def test_one_connection_failing_takes_the_other_down(self):
        """A config read of 3 bytes on the first server aborts the remote
        (vfio-user-server-aborts-on-odd-config-access): the second
        client's device goes with it."""
        remote, (first, second) = self.start('lsi1', 'lsi2')
        self.served_both(remote, first, second)
        with self.assertRaises(RemoteGone):
            first.link.region_read(vfu.CONFIG_REGION_INDEX, 0x80, 3)
        self.assertTrue(remote.process.wait_exit(EXIT_TIMEOUT_S), 'the remote did not exit')
        self.assertEqual(remote.process.exitcode, -signal.SIGABRT)
        with self.assertRaises(RemoteGone):
            second.config_read(0, 4)
        self.record(remote_exit=remote.process.exitcode)
        with self.known_issue_guard(VFIO_USER_SEVERAL_DEVICES):
            self.assertTrue(remote.process.is_running(),
                            f'{PROMISE}: a fault on one connection took down the device '
                            f'another client uses ({remote.process.state_description()})')

    def test_remote_exits_cleanly_when_its_proxy_hangs_up(self):
        """One client hanging up leaves the other served (auto-shutdown waits
        for the last server, hw/remote/vfio-user-obj.c); the last one
        hanging up ends the remote with status 0."""
        remote, (first, second) = self.start('lsi1', 'lsi2')
        self.served_both(remote, first, second)
        first.link.close()
        self.assertFalse(remote.process.wait_exit(UNSERVED_TIMEOUT_S), 'the remote exited')
        self.assertTrue(self.answers(second))
        second.link.close()
        self.assertTrue(remote.process.wait_exit(EXIT_TIMEOUT_S), 'the remote did not exit')
        self.record(remote_exit=remote.process.exitcode)
        self.assertEqual(remote.process.exitcode, 0, remote.process.state_description())



def log_lines(remote, text: str) -> int:
    """How many lines of the remote's log say ``text``."""
    with open(remote.process.log_path, encoding='utf-8', errors='replace') as f:
        return sum(1 for line in f if text in line)
