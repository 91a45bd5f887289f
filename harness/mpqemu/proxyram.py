"""The guest's RAM as the proxy holds it, read and written from the host.

The proxy's boot RAM is a memfd (``memory-backend-memfd``, see
topology.py) and a hot-plugged DIMM may be a file; both are fds the proxy
holds open, so the harness can map the very same pages through
``/proc/PID/fd/N`` (the same ptrace-read permission as /proc/PID/mem: the
harness is the proxy's parent).  What the guest's CPU stores there is what
the harness reads, and what the harness writes is what the remote's DMA
reads: no copy, no guest tool.

Guest physical address = offset in the boot memfd holds for RAM below 4 GiB
(hw/i386/pc.c maps ``ram-below-4g`` from offset 0; 256 MiB guests have no
``ram-above-4g``).

A guest cannot name the physical address of its own buffers (STRICT_DEVMEM,
no pagemap reader in busybox), so it writes pages that start with a marker
and the harness finds them here: :func:`find_marked_pages`.
"""

import mmap
import os
import re
from typing import Dict, Optional

from ..base.errors import HarnessError

PAGE_SIZE = mmap.PAGESIZE
BOOT_RAM_FD_NAME = '/memfd:memory-backend-memfd'


class ProxyRamError(HarnessError):
    pass


def _proxy_fd(pid: int, wanted: str) -> str:
    """The /proc path of the proxy's fd whose target starts with ``wanted``."""
    fd_dir = f'/proc/{pid}/fd'
    try:
        names = os.listdir(fd_dir)
    except OSError as err:
        raise ProxyRamError(f"cannot list {fd_dir} ({err}): is the proxy running, "
                            f"and is the harness allowed to read its fds?") from None
    for name in names:
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue
        if target.startswith(wanted):
            return os.path.join(fd_dir, name)
    raise ProxyRamError(f"the proxy (pid {pid}) holds no fd on {wanted!r}")


class MappedRam:
    """``size`` bytes of an fd mapped shared; offset 0 is guest physical
    address ``gpa``."""

    def __init__(self, path: str, gpa: int, size: int):
        self.path = path
        self.gpa = gpa
        self.size = size
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)

    def _offset(self, gpa: int, length: int) -> int:
        offset = gpa - self.gpa
        if offset < 0 or offset + length > self.size:
            raise ProxyRamError(f"{length} bytes at {gpa:#x} are outside "
                                f"[{self.gpa:#x}, {self.gpa + self.size:#x}) ({self.path})")
        return offset

    def read(self, gpa: int, length: int) -> bytes:
        offset = self._offset(gpa, length)
        return self._map[offset:offset + length]

    def write(self, gpa: int, data: bytes) -> None:
        offset = self._offset(gpa, len(data))
        self._map[offset:offset + len(data)] = data

    def find_marked_pages(self, marker: bytes) -> Dict[int, int]:
        """{page index written after ``marker``: guest physical address} for
        every page that starts with ``marker`` followed by a decimal index
        and a newline (see :func:`marked_page`)."""
        found: Dict[int, int] = {}
        pattern = re.compile(re.escape(marker) + rb' (\d+)\n')
        for match in pattern.finditer(self._map):
            if match.start() % PAGE_SIZE:
                continue
            index = int(match.group(1))
            if index in found:
                raise ProxyRamError(f"page {index} marked {marker!r} is at both "
                                    f"{found[index]:#x} and {self.gpa + match.start():#x}: "
                                    f"complete the marker in place in the guest so that "
                                    f"only the page-cache page carries it")
            found[index] = self.gpa + match.start()
        return found

    def close(self) -> None:
        self._map.close()


def boot_ram(proxy_pid: int, size: int) -> MappedRam:
    """The proxy's boot RAM (guest physical 0 .. size)."""
    return MappedRam(_proxy_fd(proxy_pid, BOOT_RAM_FD_NAME), 0, size)


def marked_page(marker: bytes, index: int, filler: Optional[bytes] = None) -> bytes:
    """One page that :meth:`MappedRam.find_marked_pages` recognises."""
    head = marker + b' %d\n' % index
    body = filler if filler is not None else os.urandom(PAGE_SIZE - len(head))
    page = (head + body)[:PAGE_SIZE]
    if len(page) != PAGE_SIZE:
        raise ValueError(f"a marked page needs {PAGE_SIZE - len(head)} bytes of filler")
    return page


def _private_hva(pid: int, path: str, offset: int) -> int:
    """Host virtual address in process ``pid`` of byte ``offset`` of the
    file ``path`` (from /proc/PID/maps)."""
    with open(f'/proc/{pid}/maps', encoding='utf-8') as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() == path:
                start, end = (int(x, 16) for x in fields[0].split('-'))
                file_offset = int(fields[2], 16)
                if file_offset <= offset < file_offset + (end - start):
                    return start + offset - file_offset
    raise ProxyRamError(f"process {pid} does not map byte {offset:#x} of {path}")


def write_as_cpu(pid: int, path: str, offset: int, data: bytes) -> None:
    """Store ``data`` into process ``pid``'s own mapping of ``path`` (as a
    guest CPU store would: a private mapping gets its copy-on-write page)."""
    with open(f'/proc/{pid}/mem', 'r+b', buffering=0) as mem:
        mem.seek(_private_hva(pid, path, offset))
        mem.write(data)


def read_as_cpu(pid: int, path: str, offset: int, length: int) -> bytes:
    with open(f'/proc/{pid}/mem', 'rb', buffering=0) as mem:
        mem.seek(_private_hva(pid, path, offset))
        return mem.read(length)
