"""Bare-metal guest programs (the agent tier's guest, the PVH loader)
compiled with the host's gcc and ld: 32-bit, freestanding, linked by their
own linker script.

:func:`key_material` is what a cache key must cover for such a program:
the compiler's identity, the flags and every file of its source directory
and of the shared tests/images/include, so an edited source or a new gcc
rebuilds it.
"""

import hashlib
import os
from typing import Sequence, Type

from ..base import paths
from ..base.errors import HarnessError
from ..base.hosttools import run_tool
from .guesttools import COMPILER, compiler_identity

# 32-bit, freestanding, integer instructions only (i586, no SSE/x87):
# KVM's instruction emulator, which runs the agent under PVM, has no use
# for anything fancier.
CFLAGS = ('-m32', '-march=i586', '-mgeneral-regs-only', '-ffreestanding', '-fno-pic',
          '-fno-pie', '-fno-stack-protector', '-fno-asynchronous-unwind-tables',
          '-nostdlib', '-O2', '-Wall', '-Wextra', '-Werror')
LDFLAGS = ('-m', 'elf_i386', '-nostdlib', '--no-warn-rwx-segments')
BUILD_TIMEOUT_S = 60
FIX = 'apt-get install gcc binutils'
# Headers the programs share (tests/images/include: the PVH boot ABI).
INCLUDE_DIR = os.path.join(paths.REPO_DIR, 'tests', 'images', 'include')


def key_material(source_dir: str) -> bytes:
    h = hashlib.sha256()
    h.update(compiler_identity().encode())
    h.update(' '.join(CFLAGS + LDFLAGS).encode())
    for directory in (source_dir, INCLUDE_DIR):
        for name in sorted(os.listdir(directory)):
            with open(os.path.join(directory, name), 'rb') as f:
                h.update(name.encode() + b'\0' + f.read())
    return h.hexdigest().encode()


def build_elf(source_dir: str, sources: Sequence[str], linker_script: str, work: str,
              name: str, error: Type[HarnessError]) -> str:
    """Compile ``sources`` of ``source_dir`` and link them into
    ``work/<name>.elf``; returns its path."""
    objects = []
    for source in sources:
        obj = os.path.join(work, os.path.splitext(source)[0] + '.o')
        run_tool([COMPILER, *CFLAGS, '-I', INCLUDE_DIR, '-c', os.path.join(source_dir, source),
                  '-o', obj],
                 FIX, error, BUILD_TIMEOUT_S, what=f"compiling the {name}'s {source}")
        objects.append(obj)
    elf = os.path.join(work, f'{name}.elf')
    run_tool(['ld', *LDFLAGS, '-T', os.path.join(source_dir, linker_script), '-o', elf,
              *objects], FIX, error, BUILD_TIMEOUT_S, what=f'linking the {name}')
    return elf


def flat_binary(elf: str, out: str, error: Type[HarnessError]) -> str:
    """The loadable sections of ``elf`` as the memory image they describe
    (``objcopy -O binary``; a trailing .bss is not in it)."""
    run_tool(['objcopy', '-O', 'binary', elf, out], FIX, error, BUILD_TIMEOUT_S,
             what=f'objcopy of {os.path.basename(elf)}')
    return out
