"""The guest's view of PCI devices, read and written over SSH through sysfs.

The LSI's registers are reached through its BAR files: for an I/O BAR,
reads and writes of ``resourceN`` become port accesses of the same size
(drivers/pci/pci-sysfs.c, pci_resource_io), so a 4-byte dd at offset X is
one ``inl``/``outl`` — forwarded by the proxy to the remote as BAR_READ /
BAR_WRITE.  No driver needs to be bound.
"""

from typing import Optional

from ..errors import HarnessError
from .ssh import GuestSSH

SYSFS_PCI = '/sys/bus/pci/devices'


class GuestPCIDevice:
    def __init__(self, ssh: GuestSSH, address: str):
        self.ssh = ssh
        self.address = address            # e.g. 0000:00:02.0
        self.path = f'{SYSFS_PCI}/{address}'

    def __repr__(self) -> str:
        return f'<GuestPCIDevice {self.address}>'

    def _read32(self, file: str, offset: int) -> int:
        if offset % 4:
            raise HarnessError(f"unaligned 32-bit access at {offset:#x}")
        out = self.ssh.run(f'dd if={self.path}/{file} bs=4 skip={offset // 4} count=1 '
                           f'2>/dev/null | xxd -p', check=True).stdout.strip()
        if len(out) != 8:
            raise HarnessError(f"reading 4 bytes at {offset:#x} of {self.path}/{file} "
                               f"returned {out!r}")
        return int.from_bytes(bytes.fromhex(out), 'little')

    def config_read32(self, offset: int) -> int:
        return self._read32('config', offset)

    def bar_read32(self, bar: int, offset: int) -> int:
        return self._read32(f'resource{bar}', offset)

    def bar_write32(self, bar: int, offset: int, value: int) -> None:
        if offset % 4:
            raise HarnessError(f"unaligned 32-bit access at {offset:#x}")
        escaped = ''.join(f'\\x{b:02x}' for b in value.to_bytes(4, 'little'))
        self.ssh.run(f"printf '{escaped}' | dd of={self.path}/resource{bar} bs=4 "
                     f"seek={offset // 4} count=1 conv=notrunc 2>/dev/null", check=True)

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
