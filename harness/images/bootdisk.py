"""A raw disk that SeaBIOS boots through syslinux, made without root or
loop mounts: a FAT "superfloppy" (no partition table) formatted and filled
with mtools, made bootable with ``syslinux --install`` (the mtools-based
installer Debian ships), followed by a data area outside the filesystem.

Layout (all offsets in bytes from the start of the image):
    [0, fat_size)                FAT filesystem: ldlinux.sys/.c32, syslinux.cfg,
                                 vmlinuz, initrd.img
    [fat_size, fat_size + data)  data area, each 512-byte sector filled with
                                 data_area_sector(lba) so reads can be checked
                                 without a prior write
"""

import os
import tempfile
from typing import Dict, List

from ..base.errors import HarnessError
from ..base.hosttools import run_tool
from ..base.units import MIB

SECTOR_BYTES = 512
# A geometry any BIOS accepts; syslinux patches it into the boot sector.
HEADS = 64
SECTORS_PER_TRACK = 32
# Fixed volume serial so two builds differ only where their inputs do.
VOLUME_SERIAL = '4d505145'
COPY_CHUNK_BYTES = MIB
DATA_RECORD_BYTES = 16
SYSLINUX_CFG_NAME = 'syslinux.cfg'


class BootDiskError(HarnessError):
    """The boot disk could not be built or customised."""


def _tool(argv: List[str], package: str) -> None:
    run_tool(argv, f'apt-get install {package}', BootDiskError)


def data_area_sector(lba: int) -> bytes:
    """Initial content of data-area sector ``lba`` (absolute disk LBA):
    32 copies of the 16 ASCII bytes ``'mpqemu %08x\\n' % lba``."""
    record = b'mpqemu %08x\n' % lba
    assert len(record) == DATA_RECORD_BYTES
    return record * (SECTOR_BYTES // DATA_RECORD_BYTES)


def _write_data_area(path: str, offset_bytes: int, size_bytes: int) -> None:
    first_lba = offset_bytes // SECTOR_BYTES
    sectors_per_chunk = COPY_CHUNK_BYTES // SECTOR_BYTES
    with open(path, 'r+b') as f:
        f.seek(offset_bytes)
        for chunk_lba in range(first_lba, first_lba + size_bytes // SECTOR_BYTES,
                               sectors_per_chunk):
            f.write(b''.join(data_area_sector(lba) for lba in
                             range(chunk_lba, chunk_lba + sectors_per_chunk)))


def _mcopy(disk: str, host_path: str, name: str) -> None:
    # -o: overwrite without asking (mtools would otherwise prompt on a tty).
    _tool(['mcopy', '-o', '-i', disk, host_path, f'::{name}'], 'mtools')


def render_syslinux_cfg(template: str, append: str) -> str:
    if '@APPEND@' not in template:
        raise BootDiskError("the syslinux.cfg template has no @APPEND@ placeholder")
    return template.replace('@APPEND@', append)


def build(out_path: str, fat_size_mib: int, data_area_mib: int, volume_label: str,
          files: Dict[str, str], syslinux_cfg: str) -> Dict[str, int]:
    """Write the disk; ``files`` maps FAT names to host paths.  Returns the
    data area as {'offset_bytes', 'size_bytes'}."""
    fat_bytes = fat_size_mib * MIB
    data_bytes = data_area_mib * MIB
    with open(out_path, 'wb') as f:
        f.truncate(fat_bytes + data_bytes)
    _tool(['mformat', '-i', out_path, '-T', str(fat_bytes // SECTOR_BYTES),
           '-h', str(HEADS), '-s', str(SECTORS_PER_TRACK), '-N', VOLUME_SERIAL,
           '-v', volume_label, '::'], 'mtools')
    _tool(['syslinux', '--install', out_path], 'syslinux')
    for name, host_path in files.items():
        _mcopy(out_path, host_path, name)
    write_syslinux_cfg(out_path, syslinux_cfg)
    _write_data_area(out_path, fat_bytes, data_bytes)
    return {'offset_bytes': fat_bytes, 'size_bytes': data_bytes}


def write_syslinux_cfg(disk_path: str, text: str) -> None:
    with tempfile.NamedTemporaryFile('w', suffix='.cfg') as cfg:
        cfg.write(text)
        cfg.flush()
        _mcopy(disk_path, cfg.name, SYSLINUX_CFG_NAME)


def sparse_copy(src: str, dest: str) -> None:
    """Copy a disk image, leaving all-zero chunks as holes."""
    zero = bytes(COPY_CHUNK_BYTES)
    with open(src, 'rb') as fin, open(dest, 'wb') as fout:
        while True:
            chunk = fin.read(COPY_CHUNK_BYTES)
            if not chunk:
                break
            if chunk == zero[:len(chunk)]:
                fout.seek(len(chunk), os.SEEK_CUR)
            else:
                fout.write(chunk)
        fout.truncate()
