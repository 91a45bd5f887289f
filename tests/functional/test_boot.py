"""Boot guests whose LSI 53C895A lives in a remote process, and SSH in.

The central picture of multi-process QEMU: SeaBIOS, then syslinux, then
Linux read the boot disk through the proxy and the remote; once up, the
guest sees the proxied controller and its register accesses travel to the
remote and back.  Each scenario also runs with the LSI inside the guest's
QEMU (the Control classes), so that a failure can be pinned on the
multi-process path rather than on the image or the harness.
"""

import os
import random

from harness.devices.lsi import registers as lsi_regs
from harness.images.image import resolve_image
from harness.guest import diskio
from harness.guest.pci import find_device
from harness.mpqemu import topology
from harness.testing import MultiprocessTest



class BootFromRemoteLsi(MultiprocessTest):
    """
    :avocado: enable
    :avocado: tags=boot,ssh
    """


    def lsi_drive_reads(self, vm) -> int:
        """Bytes read from the LSI's disk by whichever process emulates it."""
        return vm.disk_stats('lsi1')['rd_bytes']

    def check_register_round_trip(self, vm, session):
        """A value written to SCRATCHA through the I/O BAR reads back, and
        the write is seen by the process that emulates the LSI."""
        device = find_device(session.ssh, lsi_regs.VENDOR_ID, lsi_regs.DEVICE_ID)
        emulator = vm.device_process('lsi1')
        emulator.qmp('trace-event-set-state', name='lsi_reg_write', enable=True)
        value = random.Random(self.name.str_filesystem).getrandbits(32) | 0x01010101
        device.bar_write32(lsi_regs.IO_BAR, lsi_regs.SCRATCHA, value)
        self.assertEqual(device.bar_read32(lsi_regs.IO_BAR, lsi_regs.SCRATCHA), value)
        emulator.qmp('trace-event-set-state', name='lsi_reg_write', enable=False)
        # hw/scsi/trace-events: lsi_reg_write "Write reg %s 0x%x = 0x%02x"
        log = open(emulator.log_path, encoding='utf-8', errors='replace').read()
        for i, byte in enumerate(value.to_bytes(4, 'little')):
            self.assertIn(f'Write reg SCRATCHA{i} 0x{lsi_regs.SCRATCHA + i:x} = 0x{byte:02x}', log)
        return device

    def check_driver_binding(self, device):
        # sym53c8xx is loaded only where it can drive this LSI (its INTx
        # reaches the guest, its SCRIPTS run: harness/guest/diskio.path_for);
        # elsewhere the device must stay unbound.
        expected = 'sym53c8xx' if self.diskio_path == diskio.PATH_DRIVER else None
        self.assertEqual(device.driver(), expected)

    def test_lsi_boot_disk_to_ssh(self):
        vm = self.launch(guest='lsi-boot')
        session = vm.guest
        ssh = session.ssh
        # syslinux, loaded by SeaBIOS from the LSI disk, started this kernel.
        self.assertTrue(ssh.run('cat /proc/cmdline', check=True).stdout
                        .startswith('BOOT_IMAGE=/vmlinuz '))
        self.assertIn('SYSLINUX', session.console.text())
        # ... and kernel and initramfs (tiny's, copied onto the disk) came
        # through the LSI's emulator.
        tiny = resolve_image('tiny')
        boot_files = os.path.getsize(tiny.kernel) + os.path.getsize(tiny.initrd)
        reads = self.lsi_drive_reads(vm)
        self.assertGreaterEqual(reads, boot_files)
        device = self.check_register_round_trip(vm, session)
        self.check_driver_binding(device)
        self.record(lsi_disk_read_bytes=reads)

    def test_tiny_kernel_boot_with_lsi_data_disk(self):
        disk = self.scratch_disk(64)
        vm = self.launch(guest='tiny', disks=[disk])
        session = vm.guest
        files = [b['inserted']['file'] for b in vm.device_process('lsi1').qmp('query-block')
                 if 'inserted' in b]
        self.assertIn(disk, files)
        self.assertIn('MPQEMU-GUEST-READY', session.console.text())
        device = self.check_register_round_trip(vm, session)
        self.check_driver_binding(device)


class BootFromInProcessLsi(BootFromRemoteLsi):
    """The same scenarios with the LSI emulated inside the guest's QEMU.

    :avocado: recursive
    :avocado: tags=boot,ssh,control
    """

    placement = topology.IN_PROCESS


class BootFromVfioUserLsi(BootFromRemoteLsi):
    """The same scenarios with the remote LSI reached over vfio-user.

    :avocado: recursive
    :avocado: tags=boot,ssh,vfio-user
    """

    placement = topology.VFIO_USER
