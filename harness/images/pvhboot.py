"""Repack a Linux bzImage so that it boots through the kernel's PVH entry
instead of its own decompressor (tests/images/pvh-loader).

Debian's bzImage carries the kernel as XZ, which its decompressor unpacks
in ~4.5 s under TCG, before the kernel prints a line.  The repacked image
keeps the bzImage's real-mode setup code (so SeaBIOS + syslinux and QEMU's
-kernel boot it as before, and the setup code still asks the BIOS for the
memory map), and replaces the protected-mode part with the PVH loader
followed by the kernel's PT_LOAD segments, each trimmed of trailing zeros
and compressed as an LZ4 legacy frame, which the loader unpacks in well
under a second.  The loader then enters the kernel at its PVH entry
(XEN_ELFNOTE_PHYS32_ENTRY) with a start_info made from boot_params.

The setup header changes where the payload differs (Documentation/arch/
x86/boot.rst): syssize, init_size (the loader writes up to the end of the
kernel's segments), and the fields that describe the old payload or offer
entries the new image does not have (relocatable, 64-bit and EFI entries).
"""

import lzma
import os
import struct
import zlib
from typing import List

from ..base.errors import HarnessError
from ..base.hosttools import run_tool
from ..base import paths
from . import freestanding
from .elf import ElfFile, LoadSegment

LOADER_DIR = os.path.join(paths.REPO_DIR, 'tests', 'images', 'pvh-loader')
LOADER_SOURCES = ('head.S', 'loader.c', 'lz4.c')
LOADER_LINKER_SCRIPT = 'loader.ld'
LOADER_SIGNATURE = b'MPQL'
LOADER_BASE = 0x100000
PAYLOAD_MAGIC = b'MPQPVH01'
PAYLOAD_MAX_SEGMENTS = 16          # loader.h
XEN_ELFNOTE_PHYS32_ENTRY = 18
LZ4_LEVEL = '-9'                   # -12 saves 0.3 % and takes 3x longer
LZ4_TIMEOUT_S = 120

# Setup header offsets (from the start of the bzImage) and what they hold.
HDR_SETUP_SECTS = 0x1f1
HDR_SYSSIZE = 0x1f4
HDR_MAGIC = 0x202
HDR_VERSION = 0x206
HDR_CODE32_START = 0x214
HDR_RELOCATABLE = 0x234
HDR_XLOADFLAGS = 0x236
HDR_PAYLOAD_OFFSET = 0x248
HDR_PAYLOAD_LENGTH = 0x24c
HDR_PREF_ADDRESS = 0x258
HDR_INIT_SIZE = 0x260
HDR_HANDOVER_OFFSET = 0x264
HDR_KERNEL_INFO_OFFSET = 0x268
MIN_VERSION = 0x20a                # payload_offset/length, pref_address, init_size
XZ_MAGIC = b'\xfd7zXZ\x00'
GZIP_MAGIC = b'\x1f\x8b'


class PvhBootError(HarnessError):
    """A kernel could not be repacked for the PVH loader."""


def key_material() -> bytes:
    """What of the loader goes into an image's cache key."""
    return freestanding.key_material(LOADER_DIR)


def _header_version(bzimage: bytes) -> int:
    if len(bzimage) < 0x270 or bzimage[HDR_MAGIC:HDR_MAGIC + 4] != b'HdrS':
        raise PvhBootError("not a bzImage (no 'HdrS' setup header at 0x202)")
    version = struct.unpack_from('<H', bzimage, HDR_VERSION)[0]
    if version < MIN_VERSION:
        raise PvhBootError(f"boot protocol {version:#x} is older than {MIN_VERSION:#x}, "
                           f"which says where the kernel's payload lies")
    return version


def _setup_bytes(bzimage: bytes) -> int:
    return ((bzimage[HDR_SETUP_SECTS] or 4) + 1) * 512


def kernel_elf(bzimage: bytes) -> bytes:
    """The kernel's uncompressed ELF (vmlinux) from a bzImage's payload."""
    _header_version(bzimage)
    offset, length = struct.unpack_from('<II', bzimage, HDR_PAYLOAD_OFFSET)
    start = _setup_bytes(bzimage) + offset
    payload = bzimage[start:start + length]
    if payload.startswith(XZ_MAGIC):
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    elif payload.startswith(GZIP_MAGIC):
        decompressor = zlib.decompressobj(wbits=31)
    else:
        raise PvhBootError(f"the bzImage's payload is neither XZ nor gzip "
                           f"(starts {payload[:6].hex()}); only those two are unpacked")
    try:
        return decompressor.decompress(payload)
    except (lzma.LZMAError, zlib.error) as err:
        raise PvhBootError(f"the bzImage's payload does not decompress: {err}") from None


def pvh_entry(elf: ElfFile) -> int:
    desc = elf.note('Xen', XEN_ELFNOTE_PHYS32_ENTRY)
    if desc is None or len(desc) < 4:
        raise PvhBootError("the kernel has no PVH entry (XEN_ELFNOTE_PHYS32_ENTRY note; "
                           "built without CONFIG_PVH?)")
    return struct.unpack_from('<I', desc)[0]


def trimmed(segment: LoadSegment) -> LoadSegment:
    """The segment without its trailing zeros (the loader zeroes them)."""
    data = segment.data.rstrip(b'\0')
    data += bytes(-len(data) % 4)
    return LoadSegment(segment.paddr, segment.memsz, data)


def _lz4_frame(data: bytes, work: str, index: int) -> bytes:
    raw = os.path.join(work, f'segment{index}.bin')
    frame = raw + '.lz4'
    with open(raw, 'wb') as f:
        f.write(data)
    run_tool(['lz4', '-l', LZ4_LEVEL, '-q', '-f', raw, frame], 'apt-get install lz4',
             PvhBootError, LZ4_TIMEOUT_S, what=f'lz4 of kernel segment {index}')
    with open(frame, 'rb') as f:
        out = f.read()
    os.unlink(raw)
    os.unlink(frame)
    return out


def build_loader(work: str) -> bytes:
    """The loader as a flat binary padded to its image_size (so the
    payload that follows lies where the loader looks for it)."""
    elf = freestanding.build_elf(LOADER_DIR, LOADER_SOURCES, LOADER_LINKER_SCRIPT, work,
                                 'pvh-loader', PvhBootError)
    with open(freestanding.flat_binary(elf, os.path.join(work, 'pvh-loader.bin'),
                                       PvhBootError), 'rb') as f:
        binary = f.read()
    if binary[4:8] != LOADER_SIGNATURE:
        raise PvhBootError(f"the loader binary does not start with head.S's header "
                           f"(bytes 4-8: {binary[4:8]!r})")
    image_size = struct.unpack_from('<I', binary, 8)[0]
    if image_size < len(binary):
        raise PvhBootError(f"the loader's image_size {image_size} is below its "
                           f"{len(binary)} bytes")
    return binary + bytes(image_size - len(binary))


def payload(segments: List[LoadSegment], entry: int, frames: List[bytes]) -> bytes:
    table = b''.join(struct.pack('<IIII', s.paddr, s.memsz, len(s.data), len(f))
                     for s, f in zip(segments, frames))
    return (PAYLOAD_MAGIC + struct.pack('<II', entry, len(segments)) + table
            + b''.join(frames))


def patched_setup(bzimage: bytes, protected_mode_bytes: int, kernel_end: int) -> bytes:
    setup = bytearray(bzimage[:_setup_bytes(bzimage)])
    version = _header_version(bzimage)
    code32_start = struct.unpack_from('<I', setup, HDR_CODE32_START)[0]
    if code32_start != LOADER_BASE:
        raise PvhBootError(f"code32_start is {code32_start:#x}, not {LOADER_BASE:#x}, "
                           f"where the loader is linked")
    struct.pack_into('<I', setup, HDR_SYSSIZE, (protected_mode_bytes + 15) // 16)
    setup[HDR_RELOCATABLE] = 0
    struct.pack_into('<H', setup, HDR_XLOADFLAGS, 0)
    struct.pack_into('<II', setup, HDR_PAYLOAD_OFFSET, 0, 0)
    struct.pack_into('<Q', setup, HDR_PREF_ADDRESS, LOADER_BASE)
    struct.pack_into('<I', setup, HDR_INIT_SIZE,
                     max(kernel_end, LOADER_BASE + protected_mode_bytes) - LOADER_BASE)
    struct.pack_into('<I', setup, HDR_HANDOVER_OFFSET, 0)
    if version >= 0x20f:
        struct.pack_into('<I', setup, HDR_KERNEL_INFO_OFFSET, 0)
    return bytes(setup)


def repack(bzimage_path: str, out_path: str, work: str) -> dict:
    """Write the PVH-booting image of ``bzimage_path`` to ``out_path``;
    returns what the manifest records of it."""
    with open(bzimage_path, 'rb') as f:
        bzimage = f.read()
    vmlinux = os.path.join(work, 'vmlinux')
    with open(vmlinux, 'wb') as f:
        f.write(kernel_elf(bzimage))
    elf = ElfFile(vmlinux)
    entry = pvh_entry(elf)
    segments = [trimmed(s) for s in elf.load_segments() if s.memsz]
    os.unlink(vmlinux)
    if not 0 < len(segments) <= PAYLOAD_MAX_SEGMENTS:
        raise PvhBootError(f"the kernel has {len(segments)} loadable segments; the loader "
                           f"takes 1 to {PAYLOAD_MAX_SEGMENTS}")
    if max(s.paddr + s.memsz for s in segments) > 1 << 32:
        raise PvhBootError("the kernel loads above 4 GiB; the 32-bit loader cannot")
    frames = [_lz4_frame(s.data, work, i) for i, s in enumerate(segments)]
    protected_mode = build_loader(work) + payload(segments, entry, frames)
    kernel_end = max(s.paddr + s.memsz for s in segments)
    with open(out_path, 'wb') as f:
        f.write(patched_setup(bzimage, len(protected_mode), kernel_end))
        f.write(protected_mode)
    return {'loader': 'pvh-loader', 'pvh_entry': f'{entry:#x}',
            'segments': [{'paddr': f'{s.paddr:#x}', 'memsz': s.memsz, 'filesz': len(s.data),
                          'lz4_bytes': len(f)} for s, f in zip(segments, frames)],
            'bzimage_bytes': len(bzimage), 'bytes': os.path.getsize(out_path)}
