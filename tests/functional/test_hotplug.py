"""Memory hot-plug must reach the remote: every change of the guest's memory
map is resent to it (SYNC_SYSMEM over the proxy, DMA_MAP and DMA_UNMAP over
vfio-user), or its device DMAs into stale RAM.

The checks use the remote's own account of its memory (``info mtree -f`` on
its QMP), and DMA the guest starts itself: the guest writes the LSI's DSP
through the I/O BAR, the chip fetches SCRIPTS the harness put in one of the
guest's pages, and moves data between the LSI's disk and the DIMM (SCSI
data phases reach above 4 GiB through DBMS; see harness/guest/lsi_dma.py).
A DIMM backed by a file in the test's work directory lets the harness check
the bytes where they landed.
"""

import os
import time

from harness.devices.lsi import registers as lsi_regs
from harness.base import bytecheck, deadlines
from harness.guest import lsi_dma, memory
from harness.guest.pci import find_device
from harness.mpqemu import hotplug, memview, proxyram, topology
from harness.base.units import MIB, ms
from harness.testing import MultiprocessTest

BLOCK = 512
DIMM_SIZE = 128 * MIB          # one Linux memory block on x86_64
DISK_MB = 64
MEMORY_SLOTS = 4
MAXMEM_EXTRA_MB = 1024
DMA_BYTES = 1 * MIB
LBA_DISK_PATTERN = 2048        # the disk holds random data here (set up by the test)
LBA_FROM_DIMM = 8192
LBA_FROM_GUEST = 16384
GUEST_BLOCK_WAIT_S = 10.0
UNPLUG_TIMEOUT_S = 20.0
LIMIT_DIMM_SIZE = 16 * MIB
LIMIT_SLOTS = 8


class HotplugTest(MultiprocessTest):
    """Boot with free memory slots and a disk; shared DMA steps."""

    timeout = deadlines.test_timeout(boots=1, waits_s=UNPLUG_TIMEOUT_S + GUEST_BLOCK_WAIT_S
                                     + 2 * deadlines.COMMAND_S)

    def boot(self):
        self.disk = self.scratch_disk(DISK_MB)
        self.disk_pattern = os.urandom(DMA_BYTES)
        bytecheck.write_image(self.disk, LBA_DISK_PATTERN * BLOCK, self.disk_pattern)
        vm = self.launch(guest='tiny', disks=[self.disk], memory_slots=MEMORY_SLOTS,
                         maxmem_mb=self.memory_mb + MAXMEM_EXTRA_MB)
        self.session, self.ssh = vm.guest, vm.guest.ssh
        self.remote = vm.remote('lsi1')
        self.lsi = lsi_dma.GuestLsi(find_device(self.ssh, lsi_regs.VENDOR_ID, lsi_regs.DEVICE_ID))
        self.lsi.enable_bus_master()
        self.ram = proxyram.boot_ram(vm.qemu.pid, vm.memory_mb * MIB)
        self.addCleanup(self.ram.close)
        # Three guest pages in boot RAM: the command block, two data pages.
        self.pages = lsi_dma.place_marked_pages(self.ssh, self.ram, 3, '/tmp/dma-pages')
        self.hotplug = hotplug.MemoryHotplug(vm.qemu, self.workdir)

    def scsi(self, write: bool, lba: int, length: int, gpa: int) -> float:
        """One READ(10)/WRITE(10) between the disk and ``gpa``, started by
        the guest; returns the seconds it took, seen from the host."""
        started = time.monotonic()
        status = lsi_dma.rw10(self.ram.write, self.ram.read, self.lsi.run, self.pages[0],
                              write, lba, gpa, length)
        self.assertEqual(status, 0, f'SCSI status of {"WRITE" if write else "READ"}(10)')
        return time.monotonic() - started

    def guest_page(self, index: int) -> bytes:
        data = self.ssh.read_bytes('/tmp/dma-pages')
        return data[index * proxyram.PAGE_SIZE:(index + 1) * proxyram.PAGE_SIZE]

    def plug_and_wait(self, dimm_id: str, **kwargs) -> hotplug.Dimm:
        started = time.monotonic()
        dimm = self.hotplug.plug(dimm_id, DIMM_SIZE, **kwargs)
        memview.wait_remote_view(self.remote.process,
                                 lambda r: hotplug.maps_range(r, dimm.addr, dimm.size),
                                 what=f'{dimm_id} at {dimm.addr:#x}')
        self.record(**{f'{dimm_id}_plug_to_remote_visible_ms':
                       ms(time.monotonic() - started, 3)})
        return dimm


class DimmResync(HotplugTest):
    """
    :avocado: enable
    :avocado: tags=hotplug
    """

    def dma_both_ways_between_disk_and_dimm(self, dimm) -> None:
        """Guest-started SCSI commands move data disk -> DIMM, DIMM -> disk,
        boot RAM -> DIMM and DIMM -> boot RAM; each lands byte-exact."""
        # disk -> DIMM
        took = self.scsi(False, LBA_DISK_PATTERN, DMA_BYTES, dimm.addr + MIB)
        self.assertEqual(bytecheck.read_image(dimm.path, MIB, DMA_BYTES), self.disk_pattern)
        self.record(dma_disk_to_dimm_mb_s=round(DMA_BYTES / MIB / took, 2))
        # DIMM -> disk
        from_dimm = os.urandom(DMA_BYTES)
        bytecheck.write_image(dimm.path, 4 * MIB, from_dimm)
        took = self.scsi(True, LBA_FROM_DIMM, DMA_BYTES, dimm.addr + 4 * MIB)
        self.assertEqual(bytecheck.read_image(self.disk, LBA_FROM_DIMM * BLOCK, DMA_BYTES), from_dimm)
        self.record(dma_dimm_to_disk_mb_s=round(DMA_BYTES / MIB / took, 2))
        # boot RAM (a guest page) -> DIMM, through the disk
        page = proxyram.PAGE_SIZE
        self.scsi(True, LBA_FROM_GUEST, page, self.pages[1])
        self.scsi(False, LBA_FROM_GUEST, page, dimm.addr + 8 * MIB)
        self.assertEqual(bytecheck.read_image(dimm.path, 8 * MIB, page), self.guest_page(1))
        # DIMM -> boot RAM: the guest reads what came from the DIMM
        self.scsi(False, LBA_FROM_DIMM, page, self.pages[2])
        self.assertEqual(self.guest_page(2), from_dimm[:page])

    def test_dimm_is_synced_used_for_dma_and_removed(self):
        self.boot()
        dimm = self.plug_and_wait('dimm1')
        self.assertGreaterEqual(dimm.addr, 1 << 32)      # pc: the device-memory window
        for block in memory.wait_blocks(self.ssh, dimm.addr, dimm.size, GUEST_BLOCK_WAIT_S):
            self.assertEqual(self.ssh.run(f'cat {block}/state', check=True).stdout.strip(),
                             'offline')    # left offline: the kernel never touches it

        self.dma_both_ways_between_disk_and_dimm(dimm)

        unplug_s = self.hotplug.unplug(dimm, UNPLUG_TIMEOUT_S)
        started = time.monotonic()
        memview.wait_remote_view(
            self.remote.process, lambda r: not hotplug.maps_anything_in(r, dimm.addr, dimm.size),
            what=f'no RAM at {dimm.addr:#x} after the unplug')
        self.assertFalse(self.ssh.run(f'test -e {block}').ok)
        self.assertTrue(self.remote.process.is_running())
        self.assertEqual(sum(r.size for r in memview.remote_ram_regions(self.remote.process)),
                         self.vm.memory_mb * MIB)
        self.record(unplug_guest_ack_ms=ms(unplug_s, 3),
                    unplug_to_remote_gone_ms=ms(time.monotonic() - started, 3))

    def test_guest_onlines_the_dimm_and_the_device_dmas_into_its_pages(self):
        self.boot()
        dimm = self.plug_and_wait('dimm1')
        before_kb = self.mem_total_kb()
        memory.online(self.ssh, dimm.addr, dimm.size, timeout_s=GUEST_BLOCK_WAIT_S)
        self.assertEqual(self.mem_total_kb() - before_kb, DIMM_SIZE // 1024)
        # New user pages come from the highest zone: the DIMM's.  Find the
        # guest's own pages in the DIMM's file: the remote maps that file.
        dimm_ram = proxyram.MappedRam(dimm.path, dimm.addr, dimm.size)
        self.addCleanup(dimm_ram.close)
        count = 256
        in_dimm = lsi_dma.place_marked_pages(self.ssh, dimm_ram, count, '/tmp/online-pages',
                                             require_all=False)
        self.record(guest_pages_in_dimm=f'{len(in_dimm)}/{count}')
        index, gpa = sorted(in_dimm.items())[0]
        page = proxyram.PAGE_SIZE
        self.scsi(False, LBA_DISK_PATTERN, page, gpa)
        data = self.ssh.read_bytes('/tmp/online-pages')[index * page:(index + 1) * page]
        self.assertEqual(data, self.disk_pattern[:page])

    def mem_total_kb(self) -> int:
        line = self.ssh.run('grep MemTotal /proc/meminfo', check=True).stdout
        return int(line.split()[1])


class DimmResyncOverVfioUser(DimmResync):
    """The same over vfio-user: the client DMA-maps the DIMM with its fd
    (DMA_MAP) and unmaps it at unplug (DMA_UNMAP).

    :avocado: recursive
    :avocado: tags=hotplug,vfio-user
    """

    placement = topology.VFIO_USER


class DimmBoundaries(HotplugTest):
    """What the remote does with RAM it cannot map, or cannot map all of.

    :avocado: enable
    :avocado: tags=hotplug
    """

    # The known issues each boundary meets on this transport.
    region_limit_issues = ('remote-rejects-eighth-ram-section',
                           'v8-remote-ignores-an-eighth-ram-section')
    non_fd_ram_issues = ('proxy-omits-non-fd-ram',)
    private_file_issues = ('proxy-syncs-private-file-ram',)

    def test_how_many_ram_regions_the_remote_takes(self):
        """Each fd-backed RAM section is one fd of SYNC_SYSMEM.  Correct: a
        DIMM the proxy accepts is mapped by a living remote (or the plug is
        refused).  No guest is needed."""
        vm = self.new_vm(memory_slots=LIMIT_SLOTS,
                         maxmem_mb=self.memory_mb + LIMIT_SLOTS * LIMIT_DIMM_SIZE // MIB,
                         # -S: no firmware runs, so boot RAM keeps its two sections (below
                         # and above the ROM hole) instead of merging into one when SeaBIOS
                         # maps the hole as RAM at a moment that depends on the host's load.
                         args=['-S'])
        vm.add_lsi('lsi1')
        self.launch(vm)
        process = vm.remote('lsi1').process
        boot_sections = len(memview.wait_remote_view(process, bool, what='boot RAM'))
        plug = hotplug.MemoryHotplug(vm.qemu, self.workdir)
        with self.known_issue_guard(*self.region_limit_issues):
            for i in range(LIMIT_SLOTS):
                dimm = plug.plug(f'dimm{i}', LIMIT_DIMM_SIZE)
                if process.wait_exit(0.5):
                    self.record_remote_death(vm, plug, boot_sections + i + 1)
                memview.wait_remote_view(
                    process, lambda r, d=dimm: hotplug.maps_range(r, d.addr, d.size),
                    what=f'DIMM {i} at {dimm.addr:#x}')
                self.record(remote_max_ram_regions=boot_sections + i + 1)

    def record_remote_death(self, vm, plug, sections: int) -> None:
        """The remote died on a RAM table: what the proxy did, then fail."""
        process = vm.remote('lsi1').process
        log = process.log_tail()
        self.record(remote_died_at_sections=sections, remote_exit_status=process.exitcode,
                    remote_log=log)
        self.assertTrue(vm.qemu.is_running())
        self.assertEqual(vm.qemu.qmp('query-status')['status'], 'prelaunch')
        # One more: the proxy itself refuses to send more than 8 fds.
        plug.plug(f'dimm{sections}', LIMIT_DIMM_SIZE)
        self.record(proxy_log=vm.qemu.log_tail(5))
        self.fail(f'the remote exited at SYNC_SYSMEM with {sections} fds: {log}')

    def test_dimm_without_an_fd(self):
        """memory-backend-ram has no fd.  Correct: the proxy refuses it for
        a VM with proxied devices, or the device sees what the guest sees."""
        self.boot()
        anon = self.hotplug.plug('anon', DIMM_SIZE, backend='ram', share=False)
        # A DIMM plugged after it is in the remote's view, so the table that
        # came with it is complete: whatever is missing now was left out.
        self.plug_and_wait('private', backend='file', share=False)
        regions = memview.remote_ram_regions(self.remote.process)
        anon_mapped = hotplug.maps_anything_in(regions, anon.addr, anon.size)
        # DMA into the anonymous DIMM, then back out through the disk.
        page = proxyram.PAGE_SIZE
        self.scsi(False, LBA_DISK_PATTERN, page, anon.addr)
        self.scsi(True, LBA_FROM_GUEST, page, anon.addr)
        round_trip = bytecheck.read_image(self.disk, LBA_FROM_GUEST * BLOCK, page)
        self.assertTrue(self.remote.process.is_running())
        self.record(anon_dimm_addr=hex(anon.addr), anon_dimm_mapped_by_remote=anon_mapped,
                    anon_dma_round_trip_bytes_kept=sum(
                        a == b for a, b in zip(round_trip, self.disk_pattern[:page])),
                    anon_dma_round_trip_all_zero=round_trip == bytes(page))
        with self.known_issue_guard(*self.non_fd_ram_issues):
            self.assertTrue(anon_mapped and round_trip == self.disk_pattern[:page],
                            "a memory-backend-ram DIMM is not in the remote's map: "
                            "device DMA there is lost")

    def test_dimm_of_a_private_file(self):
        """A share=off file is mapped privately by the proxy.  Correct: the
        proxy refuses it for a VM with proxied devices, or the device sees
        what the guest sees."""
        self.boot()
        private = self.plug_and_wait('private', backend='file', share=False)
        # A "guest store" into the private DIMM (the proxy's copy-on-write
        # page) and what the device reads there.
        page, pid = proxyram.PAGE_SIZE, self.vm.qemu.pid
        stored = os.urandom(page)
        proxyram.write_as_cpu(pid, private.path, 0, stored)
        self.assertEqual(proxyram.read_as_cpu(pid, private.path, 0, page), stored)
        self.scsi(True, LBA_FROM_DIMM, page, private.addr)
        device_read = bytecheck.read_image(self.disk, LBA_FROM_DIMM * BLOCK, page)
        # ... and a device write there, seen by the guest's CPU or not.
        self.scsi(False, LBA_DISK_PATTERN, page, private.addr)
        cpu_sees = proxyram.read_as_cpu(pid, private.path, 0, page)
        self.record(private_dimm_mapped_by_remote=True,
                    private_device_read_guest_store=device_read == stored,
                    private_cpu_sees_device_write=cpu_sees == self.disk_pattern[:page])
        with self.known_issue_guard(*self.private_file_issues):
            self.assertTrue(device_read == stored and cpu_sees == self.disk_pattern[:page],
                            'a share=off DIMM: the device and the guest see different memory')


class DimmBoundariesOverVfioUser(DimmBoundaries):
    """The same over vfio-user, where the client announces each RAM section
    with DMA_MAP: one message each, with its fd where it has one.

    :avocado: recursive
    :avocado: tags=hotplug,vfio-user
    """

    placement = topology.VFIO_USER
    region_limit_issues = ()
    non_fd_ram_issues = ('vfio-user-server-drops-dma-without-fd',)
    private_file_issues = ('vfio-user-maps-private-file-ram',)
