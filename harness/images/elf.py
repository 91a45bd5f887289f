"""Just enough ELF reading to copy a dynamically linked program with its
libraries (the program interpreter, PT_INTERP, and the DT_NEEDED names)
and to load a kernel by hand (its PT_LOAD segments and its notes).

``ldd`` would run the binary's own loader on the host; reading the headers
works for any x86-64 binary extracted from a .deb, whatever the host has.
"""

import struct
from typing import List, NamedTuple, Optional

PT_LOAD = 1
PT_DYNAMIC = 2
PT_INTERP = 3
PT_NOTE = 4
DT_NULL = 0
DT_NEEDED = 1
DT_STRTAB = 5
ELF64_LE_IDENT = b'\x7fELF\x02\x01'


class ElfError(Exception):
    pass


class LoadSegment(NamedTuple):
    paddr: int
    memsz: int
    data: bytes             # the file's bytes, p_filesz of them


class ElfFile:
    """What the harness reads of one ELF64 little-endian file."""

    def __init__(self, path: str):
        with open(path, 'rb') as f:
            self._data = f.read()
        if not self._data.startswith(ELF64_LE_IDENT):
            raise ElfError(f"{path} is not an x86-64 ELF file")
        self.path = path
        (phoff,) = struct.unpack_from('<Q', self._data, 0x20)
        phentsize, phnum = struct.unpack_from('<HH', self._data, 0x36)
        self._segments = [struct.unpack_from('<IIQQQQQQ', self._data,
                                             phoff + i * phentsize)
                          for i in range(phnum)]

    def _segments_of(self, kind: int):
        return [s for s in self._segments if s[0] == kind]

    def _vaddr_to_offset(self, vaddr: int) -> int:
        for _, _, offset, seg_vaddr, _, filesz, _, _ in self._segments_of(PT_LOAD):
            if seg_vaddr <= vaddr < seg_vaddr + filesz:
                return offset + vaddr - seg_vaddr
        raise ElfError(f"{self.path}: address {vaddr:#x} is in no loaded segment")

    def _cstring(self, offset: int) -> str:
        return self._data[offset:self._data.index(b'\0', offset)].decode()

    @property
    def interpreter(self) -> Optional[str]:
        """Path of the dynamic loader, or None for a static binary."""
        interp = self._segments_of(PT_INTERP)
        return self._cstring(interp[0][2]) if interp else None

    @property
    def needed(self) -> List[str]:
        """DT_NEEDED sonames, in link order."""
        dynamic = self._segments_of(PT_DYNAMIC)
        if not dynamic:
            return []
        _, _, offset, _, _, filesz, _, _ = dynamic[0]
        entries = [struct.unpack_from('<qQ', self._data, offset + i)
                   for i in range(0, filesz, 16)]
        strtab = None
        names = []
        for tag, value in entries:
            if tag == DT_NULL:
                break
            if tag == DT_STRTAB:
                strtab = self._vaddr_to_offset(value)
            elif tag == DT_NEEDED:
                names.append(value)
        if names and strtab is None:
            raise ElfError(f"{self.path} has DT_NEEDED entries but no DT_STRTAB")
        return [self._cstring(strtab + n) for n in names]

    def load_segments(self) -> List[LoadSegment]:
        """The PT_LOAD segments at their physical addresses, in file order."""
        return [LoadSegment(paddr, memsz, self._data[offset:offset + filesz])
                for _, _, offset, _, paddr, filesz, memsz, _ in self._segments_of(PT_LOAD)]

    def note(self, owner: str, kind: int) -> Optional[bytes]:
        """The descriptor of the first note named ``owner`` of type ``kind``."""
        for _, _, offset, _, _, filesz, _, _ in self._segments_of(PT_NOTE):
            pos, end = offset, offset + filesz
            while pos + 12 <= end:
                namesz, descsz, note_type = struct.unpack_from('<III', self._data, pos)
                name_at = pos + 12
                desc_at = name_at + (namesz + 3) // 4 * 4
                name = self._data[name_at:name_at + namesz].rstrip(b'\0').decode(errors='replace')
                if name == owner and note_type == kind:
                    return self._data[desc_at:desc_at + descsz]
                pos = desc_at + (descsz + 3) // 4 * 4
        return None
