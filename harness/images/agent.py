"""Compile the agent (tests/images/agent) with the host's gcc, cached.

The cache key covers every file of the agent's directory, the compiler's
identity and the flags, so an edited source or a new gcc rebuilds it.  A
build happens in a private directory and is renamed into place once
complete, so a killed build leaves nothing that looks finished.

``python -m harness.tools.images build agent`` builds it alone.
"""

import hashlib
import os
import shutil
import tempfile
from typing import List

from ..base import locking, paths
from ..base.errors import HarnessError
from . import freestanding

SOURCE_DIR = os.path.join(paths.REPO_DIR, 'tests', 'images', 'agent')
# The firmware the agent boots from: -kernel with the agent's PVH entry
# works under both.  qboot sets up the chipset and the PCI interrupt
# routing and leaves the BARs to the agent (pci.c); SeaBIOS runs its whole
# POST first (BARs, option ROMs, a scan of the LSI's targets), which under
# the PVM flavour of KVM, whose instruction emulator runs it, takes 4 s
# against qboot's 0.2 s.  Both ship in Debian's qemu-system-data.
FIRMWARES = {'qboot': ('-bios', 'qboot.rom'), 'seabios': ()}
SOURCES = ('boot.S', 'agent.c', 'console.c', 'irq.c', 'pci.c', 'pic.c', 'pit.c')
LINKER_SCRIPT = 'agent.ld'
LOCK_TIMEOUT_S = 120


class AgentBuildError(HarnessError):
    """The agent could not be compiled."""


def cache_key() -> str:
    return hashlib.sha256(freestanding.key_material(SOURCE_DIR)).hexdigest()[:16]


def _compile(work: str) -> str:
    return freestanding.build_elf(SOURCE_DIR, SOURCES, LINKER_SCRIPT, work, 'agent',
                                  AgentBuildError)


def firmware_args(firmware: str) -> List[str]:
    """QEMU arguments that boot the agent from ``firmware``."""
    if firmware not in FIRMWARES:
        raise HarnessError(f"the agent boots from {' or '.join(FIRMWARES)}, not {firmware!r}")
    return list(FIRMWARES[firmware])


def elf_path() -> str:
    """Where the agent's ELF of today's sources, compiler and flags lies,
    built or not."""
    return os.path.join(paths.build_dir(), 'images', f'agent-{cache_key()}', 'agent.elf')


def agent_elf() -> str:
    """Path of the agent's ELF (a PVH entry), built on first use."""
    elf = elf_path()
    if os.path.exists(elf):
        return elf
    out_dir = os.path.dirname(elf)
    top = os.path.dirname(out_dir)
    with locking.exclusive(os.path.join(top, 'agent.lock'), LOCK_TIMEOUT_S, AgentBuildError,
                           'another build of the agent'):
        if os.path.exists(elf):
            return elf
        # A directory of this key without the ELF is nobody's finished
        # build (builds are renamed into place whole): start afresh.
        shutil.rmtree(out_dir, ignore_errors=True)
        os.makedirs(top, exist_ok=True)
        work = tempfile.mkdtemp(prefix='agent-build-', dir=top)
        try:
            _compile(work)
            for stale in os.listdir(top):      # older builds of the agent
                if stale.startswith('agent-') and not stale.startswith('agent-build-'):
                    shutil.rmtree(os.path.join(top, stale), ignore_errors=True)
            os.replace(work, out_dir)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return elf
