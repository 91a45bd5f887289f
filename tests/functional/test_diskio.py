"""Disk IO from inside a guest through the remote LSI, checked byte by byte
against the disk image file on the host.

Which path runs depends on the accelerator actually in use (recorded as
``diskio_path``): under KVM, Linux's sym53c8xx driver and the SCSI disk's
block device; anywhere else the proxy cannot deliver the LSI's interrupt,
so the guest's ``lsi-dio`` drives the controller itself with polled SCRIPTS
(tests/images/tools/lsi-dio.c).  Both move the same pattern
(harness/guest/diskio.py) through the same proxy → remote → DMA chain.

Each workload also runs with the LSI inside the guest's QEMU (the Control
class), so throughput and per-command latency through the remote can be
read against the in-process device in the whiteboards.
"""

import dataclasses
import os
import time

from harness.base import deadlines
from harness.base.waiting import wait_until
from harness.guest import diskio, memory
from harness.guest.diskio import Workload
from harness.mpqemu import hotplug, memview, topology
from harness.base.units import MIB
from harness.testing import MultiprocessTest

DATA_DISK_MIB = 64
# A vCPU blocked on the hung device blocks only that vCPU: a second one
# keeps SSH (virtio-net) and the guest's other processes going.
GUEST_CPUS = 2
LSI = 'lsi1'
HANG_HOLD_S = 3.0
HANG_POLL_S = 0.1
FAULT_BOUND_S = 30.0       # the tool's own deadline after a kill (generous: TCG on 2 cores)
RESET_EVENT_TIMEOUT_S = 5.0
PROGRESS_TIMEOUT_S = 60.0
WORKLOAD_DEADLINE_S = 240.0
DIMM_MIB = 128             # one Linux memory block on x86
DIMM_NODE = 1
HOTPLUG_TIMEOUT_S = 60.0
PAGE_BYTES = 4096


class DiskIOTest(MultiprocessTest):
    """Shared set-up: a ``tiny`` guest whose LSI has a scratch data disk."""

    # A reboot in the fault tests; the workloads' own deadline (240 s).
    timeout = deadlines.test_timeout(boots=2, waits_s=WORKLOAD_DEADLINE_S)

    qemu_args = ()         # for the guest's QEMU

    def boot(self, **launch_kwargs):
        self.disk = self.scratch_disk(DATA_DISK_MIB)
        vm = self.launch(guest='tiny', disks=[self.disk], smp=GUEST_CPUS,
                         args=self.qemu_args, **launch_kwargs)
        session = vm.guest
        dio = diskio.guest_disk_io(session.ssh, self.diskio_path)
        self.record(diskio_path=dio.path, diskio_dev=dio.dev,
                    lsi='remote' if vm.multiprocess else 'in-process')
        self.log.info('disk IO path: %s (accel %s)', dio.path, self.accel.name)
        return vm, session, dio

    def run_ok(self, dio, workload: Workload, **kwargs) -> diskio.Result:
        result = dio.run(workload, **kwargs)
        self.assertTrue(result.ok, f'{workload.name()} failed ({result.status}): '
                                   f'{result.error}')
        return result

    def assert_image_holds(self, workload: Workload, path=None):
        mismatch = diskio.check_image(path or self.disk, workload.seed, workload.lba,
                                      workload.blocks)
        self.assertIsNone(mismatch, f'disk image after {workload.name()} (seed '
                                    f'{workload.seed}): {mismatch}')

    def written_bytes(self, vm) -> int:
        return vm.disk_stats(LSI)['wr_bytes']

    def wait_for_writes(self, vm, at_least: int) -> int:
        """Until the emulating process has written ``at_least`` bytes to
        the disk: the workload is under way."""
        def written():
            n = self.written_bytes(vm)
            return n if n >= at_least else None
        return wait_until(written, PROGRESS_TIMEOUT_S, f'the workload to write {at_least} bytes')


class DiskIOWorkloads(DiskIOTest):
    """Write, read back and verify through the remote LSI, sequential and
    random, several command sizes; the host finds the same bytes in the
    image file.

    :avocado: enable
    :avocado: tags=diskio
    """

    WORKLOADS = (
        Workload('verify', lba=0, blocks=2048, bs=4096, order='seq', seed=101),
        Workload('verify', lba=4096, blocks=2048, bs=65536, order='seq', seed=102),
        Workload('verify', lba=8192, blocks=2048, bs=65536, order='rand', seed=103),
        Workload('verify', lba=12288, blocks=4096, bs=524288, order='seq', seed=104),
        Workload('verify', lba=20480, blocks=2048, bs=16384, order='rand', seed=105,
                 regs='io'),
    )

    def test_write_read_verify(self):
        vm, session, dio = self.boot()
        figures = {}
        for w in self.WORKLOADS:
            if w.regs == 'io' and dio.path != diskio.PATH_POLLED:
                continue                   # register access choice: polled path only
            result = self.run_ok(dio, w)
            self.assert_image_holds(w)
            name = w.name() + ('-io' if w.regs == 'io' else '')
            figures[name] = result.figures()
        self.assertGreaterEqual(self.written_bytes(vm),
                                sum(w.bytes for w in self.WORKLOADS
                                    if w.regs != 'io' or dio.path == diskio.PATH_POLLED))
        # What the guest wrote is in the file once every process is gone.
        session.close()
        vm.shutdown()
        for w in self.WORKLOADS:
            if w.regs != 'io' or dio.path == diskio.PATH_POLLED:
                self.assert_image_holds(w)
        self.record(diskio=figures)

    def test_flipped_byte_is_detected(self):
        """One byte changed in the image file between the write and the
        read is reported, at its exact offset, by the guest and the host."""
        vm, session, dio = self.boot()
        written = Workload('write', lba=1000, blocks=256, bs=65536, seed=31)
        self.run_ok(dio, written)
        self.assert_image_holds(written)
        offset = (written.lba + 77) * diskio.SECTOR_BYTES + 123
        expected = diskio.pattern(written.seed, written.lba + 77, 1)[123]
        flipped = diskio.flip_byte(self.disk, offset, 0x10)

        result = dio.run(Workload('read', lba=written.lba, blocks=written.blocks,
                                  bs=written.bs, seed=written.seed))
        self.assertEqual(result.exit_status, diskio.EXIT_MISMATCH, result.report)
        self.assertEqual(result.first_mismatch(), {'offset': offset, 'lba': offset // 512,
                                                   'got': flipped, 'expected': expected})
        self.assertEqual(result.phase('read')['mismatched_bytes'], 1)
        host = diskio.check_image(self.disk, written.seed, written.lba, written.blocks)
        self.assertEqual((host.offset, host.got, host.expected, host.count),
                         (offset, flipped, expected, 1))
        self.record(flipped_offset=offset, guest_report=result.error, host_report=str(host))


class DiskIOInProcessControl(DiskIOWorkloads):
    """The same workloads with the LSI inside the guest's QEMU: the figures
    to compare the remote's with.

    :avocado: recursive
    :avocado: tags=diskio,control
    """

    placement = topology.IN_PROCESS


class DiskIOOverVfioUser(DiskIOWorkloads):
    """The same workloads with the remote LSI reached over vfio-user.

    :avocado: recursive
    :avocado: tags=diskio,vfio-user
    """

    placement = topology.VFIO_USER


class DiskIORemoteFaults(DiskIOTest):
    """IO while the remote is hung, killed, or reset along with the VM.

    :avocado: enable
    :avocado: tags=diskio,faults
    """

    # Long enough (several seconds under TCG) to inject a fault mid-way.
    LONG = Workload('verify', lba=0, blocks=16384, bs=4096, order='rand', seed=41,
                    passes=2, cpu=GUEST_CPUS - 1, cmd_timeout_s=60.0,
                    deadline_s=WORKLOAD_DEADLINE_S)

    def hold_the_remote_stopped(self, vm, remote):
        """Stop the remote for HANG_HOLD_S, checking all along that the
        proxy's QMP answers; returns the time held and each QMP latency (ms)."""
        remote.faults.hang()
        stopped_at = time.monotonic()
        qmp_ms = []
        while time.monotonic() - stopped_at < HANG_HOLD_S:
            started = time.monotonic()
            self.assertEqual(vm.qemu.qmp('query-status')['status'], 'running')
            qmp_ms.append((time.monotonic() - started) * 1000)
            time.sleep(HANG_POLL_S)
        remote.faults.resume()
        return time.monotonic() - stopped_at, qmp_ms

    def test_io_completes_after_remote_hang(self):
        """SIGSTOP the remote mid-workload: the IO waits (the vCPU that
        touched the device waits with it, the proxy's QMP keeps working);
        after SIGCONT it completes with the right data.

        The guest is not asked anything during the hang: a vCPU stuck in a
        device access answers no IPIs, so whether the rest of the guest
        runs on is a matter of luck (test_faults.py covers SSH during a
        hang with a single access).  The tool's own per-command latency
        shows that the command in flight waited."""
        vm, session, dio = self.boot()
        remote = vm.remote(LSI)
        run = dio.start(self.LONG, 'hang')
        self.wait_for_writes(vm, 64 * 1024)
        with self.known_issue_guard('v8-heartbeat-blocks-on-a-stopped-remote'):
            held_s, qmp_ms = self.hold_the_remote_stopped(vm, remote)
        result = run.wait(self.LONG.deadline_s)
        self.assertTrue(result.ok, f'{result.status}: {result.error}')
        self.assert_image_holds(self.LONG)
        # The command in flight waited out the hang (it cannot finish
        # before SIGCONT; the margin covers the moment between SIGSTOP and
        # the tool's next register access).
        slowest_s = max(p['lat_us']['max'] for p in result.report['phases']) / 1e6
        self.assertGreater(slowest_s, 0.8 * held_s)
        self.record(hang_held_s=round(held_s, 2), checks_during_hang=len(qmp_ms),
                    proxy_qmp_during_hang_ms_max=round(max(qmp_ms), 1),
                    workload_s=round(result.report['elapsed_s'], 2),
                    slowest_command_s=round(slowest_s, 2),
                    diskio=result.figures())

    def test_io_with_remote_killed_fails_bounded(self):
        """SIGKILL the remote mid-workload: the guest's IO ends with an
        error within its deadline, the VM and SSH stay up."""
        vm, session, dio = self.boot()
        remote = vm.remote(LSI)
        workload = dataclasses.replace(self.LONG, deadline_s=FAULT_BOUND_S,
                                       cmd_timeout_s=10.0)
        run = dio.start(workload, 'kill')
        self.wait_for_writes(vm, 64 * 1024)

        with self.known_issue_guard('v8-proxy-exits-when-its-remote-dies',
                                    'v8-dead-remote-reads-as-zero'):
            remote.faults.kill()
            killed_at = time.monotonic()
            result = run.wait(FAULT_BOUND_S + 30)
            error_s = time.monotonic() - killed_at
            self.assertTrue(remote.process.wait_exit(5))
            self.assertFalse(result.ok)
            if dio.path == diskio.PATH_POLLED:
                # Reads of a dead remote's BARs come back all-ones
                # (docs/multiprocess-qemu.md, "A stopped or dead remote").
                self.assertEqual(result.status, 'gone', result.report)
            else:
                self.assertIn(result.status, ('device', 'timeout'), result.report)
            self.assertEqual(vm.qemu.qmp('query-status')['status'], 'running')
            self.assertTrue(session.ssh.run('true', timeout_s=30).ok)
        self.record(kill_to_error_s=round(error_s, 2), error=result.error,
                    status=result.status)

    def test_io_works_after_system_reset(self):
        """Data written before a system_reset is read back after the reboot,
        and new IO works on the reset controller."""
        vm, session, dio = self.boot(remote_args=['-trace', 'lsi_reset'])
        before = Workload('verify', lba=0, blocks=2048, bs=65536, seed=51)
        self.run_ok(dio, before)

        resets_before = self.count_resets(vm) if vm.multiprocess else None
        mark = session.console.mark()
        vm.qemu.qmp('system_reset')
        # QEMU emits RESET after every device reset handler returned, i.e.
        # after the proxy's DEVICE_RESET was answered: the remote traced it
        # by now, long before firmware or lsi-dio could reset the chip.
        vm.qemu.get_event('RESET', RESET_EVENT_TIMEOUT_S)
        if vm.multiprocess:
            self.assertGreater(self.count_resets(vm), resets_before)
        session.wait_rebooted(vm.qemu, mark)
        reboot_s = session.times.ssh_s
        dio = diskio.guest_disk_io(session.ssh, self.diskio_path)

        self.run_ok(dio, Workload('read', lba=before.lba, blocks=before.blocks,
                                  bs=before.bs, seed=before.seed))
        after = Workload('verify', lba=8192, blocks=2048, bs=65536, order='rand', seed=52)
        result = self.run_ok(dio, after)
        self.assert_image_holds(before)
        self.assert_image_holds(after)
        self.record(reboot_s=round(reboot_s, 1), diskio=result.figures())

    def count_resets(self, vm) -> int:
        return vm.remote(LSI).process.count_trace_events('lsi_reset')


class DiskIOHotpluggedMemory(DiskIOTest):
    """DMA into a DIMM hot-plugged at runtime: the proxy syncs it to the
    remote, the guest onlines it as NUMA node 1, and the workload's buffer
    is bound there (above 4 GiB on pc: 64-bit block moves on the polled
    path).  The DIMM's backing file shows the bytes the last READ put there.

    :avocado: enable
    :avocado: tags=diskio,hotplug
    """

    # Node 1 starts without memory; the DIMM gives it some.
    qemu_args = ('-numa', f'node,nodeid={DIMM_NODE}')

    def plug_dimm(self, vm) -> hotplug.Dimm:
        return hotplug.MemoryHotplug(vm.qemu, self.workdir).plug(
            'dimm1', DIMM_MIB * MIB, backend='file', share=True, node=DIMM_NODE)

    def wait_remote_maps(self, vm, dimm):
        memview.wait_remote_view(vm.remote(LSI).process,
                                 lambda r: hotplug.maps_range(r, dimm.addr, dimm.size),
                                 HOTPLUG_TIMEOUT_S, what=f'the DIMM at {dimm.addr:#x}')

    def online_in_guest(self, ssh, dimm) -> int:
        """Online the DIMM's memory blocks (movable: user pages only);
        returns how long the guest took to see them."""
        started = time.monotonic()
        for block in memory.online(ssh, dimm.addr, dimm.size, 'online_movable',
                                   HOTPLUG_TIMEOUT_S):
            name = block.rsplit('/', 1)[1]
            self.assertTrue(ssh.run(f'test -e /sys/devices/system/node/node{DIMM_NODE}/'
                                    f'{name}').ok)
        return time.monotonic() - started

    def assert_dimm_holds_the_last_read(self, dimm, w: Workload, pages) -> None:
        """The last READ(10) left the final chunk in the buffer, i.e. in the
        DIMM's backing file at the pages' offsets."""
        last_lba = w.lba + w.blocks - w.bs // diskio.SECTOR_BYTES
        sectors_per_page = PAGE_BYTES // diskio.SECTOR_BYTES
        with open(dimm.path, 'rb') as f:
            for i, pa in enumerate(pages):
                f.seek(pa - dimm.addr)
                expected = diskio.pattern(w.seed, last_lba + i * sectors_per_page,
                                          sectors_per_page)
                mismatch = diskio.compare(f.read(PAGE_BYTES), expected)
                self.assertIsNone(mismatch, f'DIMM page {pa:#x}: {mismatch}')

    def test_dma_lands_in_hotplugged_dimm(self):
        vm, session, dio = self.boot(memory_slots=1, maxmem_mb=self.memory_mb + 2 * DIMM_MIB)
        dimm = self.plug_dimm(vm)
        if vm.multiprocess:
            self.wait_remote_maps(vm, dimm)
        online_s = self.online_in_guest(session.ssh, dimm)

        w = Workload('verify', lba=0, blocks=4096, bs=65536, seed=81, node=DIMM_NODE)
        result = self.run_ok(dio, w)
        self.assert_image_holds(w)
        report = result.report
        pages = report['data_pages']
        self.assertEqual(report['data_nodes'], {str(DIMM_NODE): w.bs // PAGE_BYTES})
        for pa in pages:
            self.assertTrue(dimm.addr <= pa < dimm.addr + dimm.size,
                            f'buffer page {pa:#x} outside the DIMM')
        if dio.path == diskio.PATH_POLLED:
            self.assertTrue(report['dma64'])
        self.assert_dimm_holds_the_last_read(dimm, w, pages)
        self.record(dimm_addr=hex(dimm.addr), dimm_online_s=round(online_s, 2),
                    diskio=result.figures())


class DiskIODriverPath(DiskIOTest):
    """Linux's sym53c8xx driving the remote LSI: raw block device and a
    filesystem, O_DIRECT and buffered; the image file checked on the host
    after shutdown.  Over the proxy it needs KVM (INTx through irqfds).

    :avocado: enable
    :avocado: tags=diskio,accel:kvm
    """

    diskio_path = diskio.PATH_DRIVER
    # Known issues the driver's boot may meet on this transport.
    driver_issues = ()

    RAW = (
        (True, Workload('verify', lba=0, blocks=4096, bs=4096, order='seq', seed=61)),
        (True, Workload('verify', lba=8192, blocks=4096, bs=65536, order='rand', seed=62)),
        (False, Workload('verify', lba=16384, blocks=4096, bs=65536, order='seq', seed=63)),
        (False, Workload('verify', lba=24576, blocks=4096, bs=524288, order='rand', seed=64)),
    )
    FS_FILE = 'dio.bin'

    def setUp(self):
        super().setUp()
        if self.placement == topology.PROXY and self.accel.name != 'kvm':
            self.cancel(f'needs accel=kvm: the proxy forwards the LSI\'s INTx only through '
                        f'KVM irqfds, so sym53c8xx cannot run under {self.accel.name} '
                        f'({self.accel.reason}); the polled path covers this host')

    def boot(self, **launch_kwargs):
        with self.known_issue_guard(*self.driver_issues):
            return super().boot(**launch_kwargs)

    def test_raw_block_device(self):
        vm, session, dio = self.boot()
        figures = {}
        for direct, w in self.RAW:
            dio.direct = direct
            result = self.run_ok(dio, w)
            figures[f"{w.name()}-{'direct' if direct else 'buffered'}"] = result.figures()
        session.close()
        vm.shutdown()
        for _, w in self.RAW:
            self.assert_image_holds(w)
        self.record(diskio=figures)

    def test_filesystem(self):
        vm, session, dio = self.boot()
        mountpoint = diskio.make_vfat(session.ssh, dio.dev)
        path = f'{mountpoint}/{self.FS_FILE}'
        figures = {}
        written = Workload('verify', lba=0, blocks=8192, bs=65536, order='seq', seed=71)
        for direct in (True, False):
            fs_dio = diskio.GuestDiskIO(session.ssh, diskio.PATH_DRIVER, dev=path,
                                        direct=direct)
            result = self.run_ok(fs_dio, written)
            figures[f"fs-{'direct' if direct else 'buffered'}"] = result.figures()
        session.ssh.run(f'umount {mountpoint} && sync', check=True, timeout_s=60)
        session.close()
        vm.shutdown()
        extracted = diskio.extract_from_vfat(self.disk, self.FS_FILE,
                                             os.path.join(self.workdir, self.FS_FILE))
        self.assert_image_holds(written, extracted)
        self.record(diskio=figures)


class DiskIODriverPathOverVfioUser(DiskIODriverPath):
    """The same over vfio-user, whose client takes the LSI's INTx from the
    server's eventfd, so it runs under TCG too.

    :avocado: recursive
    :avocado: tags=diskio,vfio-user
    """

    placement = topology.VFIO_USER
    driver_issues = ('vfio-user-device-dma-misses-its-own-bar',)
