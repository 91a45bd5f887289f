"""The guest's view of PCI devices, read and written over SSH through sysfs.

The LSI's registers are reached through its BAR files: for an I/O BAR,
reads and writes of ``resourceN`` become port accesses of the same size
(drivers/pci/pci-sysfs.c, pci_resource_io), so a 4-byte dd at offset X is
one ``inl``/``outl`` — forwarded by the proxy to the remote as BAR_READ /
BAR_WRITE.  No driver needs to be bound.
"""

from typing import Optional

from ..base.errors import HarnessError
from .ssh import GuestSSH

SYSFS_PCI = '/sys/bus/pci/devices'


class GuestPCIDevice:
    def __init__(self, ssh: GuestSSH, address: str):
        self.ssh = ssh
        self.address = address            # e.g. 0000:00:02.0
        self.path = f'{SYSFS_PCI}/{address}'

    def __repr__(self) -> str:
        return f'<GuestPCIDevice {self.address}>'

    def _read32_command(self, file: str, offset: int) -> str:
        if offset % 4:
            raise HarnessError(f"unaligned 32-bit access at {offset:#x}")
        return (f'dd if={self.path}/{file} bs=4 skip={offset // 4} count=1 '
                f'2>/dev/null | xxd -p')

    def bar_read32_command(self, bar: int, offset: int) -> str:
        """Shell command printing the 4 bytes at ``offset`` of the BAR as hex."""
        return self._read32_command(f'resource{bar}', offset)

    def _write_command(self, file: str, offset: int, value: int, size: int) -> str:
        if offset % size:
            raise HarnessError(f"unaligned {8 * size}-bit access at {offset:#x}")
        escaped = ''.join(f'\\x{b:02x}' for b in value.to_bytes(size, 'little'))
        return (f"printf '{escaped}' | dd of={self.path}/{file} bs={size} "
                f"seek={offset // size} count=1 conv=notrunc 2>/dev/null")

    def bar_write32_command(self, bar: int, offset: int, value: int) -> str:
        """Shell command writing ``value`` (32 bits) at ``offset`` of the BAR."""
        return self._write_command(f'resource{bar}', offset, value, 4)

    @staticmethod
    def parse32(hex_output: str) -> int:
        """The value printed by a ``*_read32_command``."""
        out = hex_output.strip()
        if len(out) != 8:
            raise HarnessError(f"a 4-byte read printed {out!r}")
        return int.from_bytes(bytes.fromhex(out), 'little')

    def config_read32(self, offset: int) -> int:
        return self.parse32(self.ssh.run(self._read32_command('config', offset),
                                         check=True).stdout)

    def bar_read32(self, bar: int, offset: int) -> int:
        return self.parse32(self.ssh.run(self.bar_read32_command(bar, offset),
                                         check=True).stdout)

    def config_write16(self, offset: int, value: int) -> None:
        self.ssh.run(self._write_command('config', offset, value, 2), check=True)

    def bar_write32(self, bar: int, offset: int, value: int) -> None:
        self.ssh.run(self.bar_write32_command(bar, offset, value), check=True)

    def enable(self) -> None:
        """Turn on decoding of the BARs (PCI_COMMAND I/O and memory), as a
        driver's pci_enable_device() would: firmware does it at boot, but
        nothing does it for a hot-plugged device without a driver."""
        self.ssh.run(f'echo 1 > {self.path}/enable', check=True)

    def driver(self) -> Optional[str]:
        result = self.ssh.run(f'readlink {self.path}/driver')
        return result.stdout.strip().rsplit('/', 1)[-1] if result.ok else None


def find_device(ssh: GuestSSH, vendor: int, device: int) -> GuestPCIDevice:
    """The first PCI function with this vendor and device ID."""
    listing = ssh.run(f'for d in {SYSFS_PCI}/*; do echo "${{d##*/}} $(cat $d/vendor) '
                      f'$(cat $d/device)"; done', check=True).stdout
    for line in listing.splitlines():
        address, ven, dev = line.split()
        if int(ven, 16) == vendor and int(dev, 16) == device:
            return GuestPCIDevice(ssh, address)
    raise HarnessError(f"the guest has no PCI device {vendor:04x}:{device:04x}; it has:\n"
                       f"{listing}")
