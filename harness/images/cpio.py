"""Write "newc" cpio archives, the format the Linux kernel unpacks as an
initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).

Written here rather than with the ``cpio`` tool so that an unprivileged
build can still create ``/dev/console`` and root-owned files, and so that the
archive is byte-for-byte reproducible (fixed mtimes, sorted entries).
"""

import stat
from typing import BinaryIO

NEWC_MAGIC = b'070701'
TRAILER_NAME = 'TRAILER!!!'
ALIGN_BYTES = 4


def _pad(length: int) -> bytes:
    return b'\0' * (-length % ALIGN_BYTES)


class CpioWriter:
    """Append entries to a newc archive; ``close()`` writes the trailer.

    Paths are archive-relative (no leading ``/``); the caller adds parent
    directories before their children, as the kernel does not create them.
    """

    def __init__(self, out: BinaryIO, mtime: int = 0):
        self._out = out
        self._mtime = mtime
        self._next_ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b'',
               rdev: tuple = (0, 0)) -> None:
        name_bytes = name.lstrip('/').encode() + b'\0'
        fields = (self._next_ino, mode, 0, 0,            # ino, mode, uid, gid
                  2 if stat.S_ISDIR(mode) else 1,        # nlink
                  self._mtime, len(data),
                  0, 0, rdev[0], rdev[1],                # dev, rdev
                  len(name_bytes), 0)                    # namesize, check
        self._next_ino += 1
        header = NEWC_MAGIC + b''.join(b'%08x' % f for f in fields)
        self._out.write(header + name_bytes + _pad(len(header) + len(name_bytes)))
        self._out.write(data + _pad(len(data)))

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        self._entry(path, stat.S_IFDIR | mode)

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(path, stat.S_IFREG | mode, data)

    def add_symlink(self, path: str, target: str) -> None:
        self._entry(path, stat.S_IFLNK | 0o777, target.encode())

    def add_char_device(self, path: str, major: int, minor: int,
                        mode: int = 0o600) -> None:
        self._entry(path, stat.S_IFCHR | mode, rdev=(major, minor))

    def close(self) -> None:
        self._entry(TRAILER_NAME, 0)
