"""Bring up the multi-process topology and look at it through both monitors.

The remote process must emulate the LSI 53C895A with its disk and map the
guest RAM the proxy shares with it; the proxy must expose the device with
the BAR layout it learnt from the remote.
"""

import os

from harness.devices.lsi import registers as lsi_regs
from harness.devices.pci import qmp_pci_device as pci_device
from harness.mpqemu import topology
from harness.mpqemu.memview import wait_for_ram
from harness.base.units import MIB
from harness.testing import MultiprocessTest

# The PC machine leaves 0xc0000-0xfffff (option ROMs and BIOS) out of RAM.
PC_RAM_HOLE_START = 0xc0000
PC_HIGH_RAM_START = 0x100000
PC_RAM_HOLE_BYTES = PC_HIGH_RAM_START - PC_RAM_HOLE_START
RAM_SYNC_TIMEOUT_S = 10.0


class Topology(MultiprocessTest):
    """
    :avocado: enable
    :avocado: tags=topology
    """

    def assert_remote_maps_the_guest_ram(self, process) -> None:
        """The remote mapped all of the guest RAM the proxy shares: below
        the ROM hole, above it, and (once SeaBIOS has made the shadow area
        RAM through the PAM registers) possibly the hole too."""
        ram_bytes = self.memory_mb * MIB
        regions = wait_for_ram(process, ram_bytes - PC_RAM_HOLE_BYTES, RAM_SYNC_TIMEOUT_S)
        for start, end in ((0, PC_RAM_HOLE_START - 1), (PC_HIGH_RAM_START, ram_bytes - 1)):
            self.assertTrue(any(r.start <= start and end <= r.end for r in regions),
                            f'guest RAM {start:#x}-{end:#x} not mapped by the remote: {regions}')
        self.assertLessEqual(regions[-1].end, ram_bytes - 1)

    def test_remote_serves_lsi_and_proxy_forwards_it(self):
        disk = self.scratch_disk(64)
        vm = self.launch(disks=[disk])
        remote, proxy = vm.remote('lsi1'), vm.qemu

        # The remote emulates the controller, with the disk behind it.
        served = pci_device(remote.qmp('query-pci'), 'lsi1')
        self.assertIsNotNone(served, 'remote has no lsi1 PCI device')
        self.assertEqual((served['id']['vendor'], served['id']['device']),
                         (lsi_regs.VENDOR_ID, lsi_regs.DEVICE_ID))
        files = [b['inserted']['file'] for b in remote.qmp('query-block') if 'inserted' in b]
        self.assertEqual(files, [disk])

        # The proxy sized its BARs by asking the remote (hw/remote/proxy.c
        # probe_pci_info): the same layout as the real device.
        proxied = pci_device(proxy.qmp('query-pci'), 'lsi1')
        self.assertIsNotNone(proxied, 'proxy has no lsi1 device')
        sizes = {r['bar']: r['size'] for r in proxied['regions']}
        self.assertEqual(sizes, lsi_regs.BAR_SIZES)
        self.assertEqual(proxy.qmp('query-status')['status'], 'running')

        self.assert_remote_maps_the_guest_ram(remote.process)

        for name in ('proxy.log', 'remote-lsi1.log', 'proxy.cmdline',
                     'remote-lsi1.cmdline', 'qmp-proxy.log', 'qmp-remote-lsi1.log'):
            self.assertTrue(os.path.exists(os.path.join(self.outputdir, name)), name)

    def test_two_remotes_one_proxy(self):
        vm = self.launch(disks=[self.scratch_disk(16, 'a.raw'), self.scratch_disk(16, 'b.raw')])
        proxy_ids = {d.get('qdev_id') for bus in vm.qemu.qmp('query-pci')
                     for d in bus['devices']}
        self.assertLessEqual({'lsi1', 'lsi2'}, proxy_ids)
        self.assertNotEqual(vm.remote('lsi1').pid, vm.remote('lsi2').pid)
        for devid in ('lsi1', 'lsi2'):
            self.assertIsNotNone(pci_device(vm.remote(devid).qmp('query-pci'), devid))
        ended = vm.shutdown()
        self.assertEqual(ended['proxy'], 'quit')
        for devid in ('lsi1', 'lsi2'):
            self.assertFalse(vm.remote(devid).process.is_running())


class TopologyOverVfioUser(Topology):
    """The same with the remote serving the LSI over vfio-user
    (x-vfio-user-server) to a vfio-user-pci in the guest's QEMU.

    :avocado: recursive
    :avocado: tags=topology,vfio-user
    """

    placement = topology.VFIO_USER
