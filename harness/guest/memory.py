"""Hot-plugged memory as the guest sees it: blocks under
/sys/devices/system/memory, which appear once the guest has handled the
ACPI notification and which the guest brings online on request."""

import shlex
from typing import List

from .ssh import GuestSSH

MEMORY_SYSFS = '/sys/devices/system/memory'
BLOCK_WAIT_S = 30.0


def blocks(ssh: GuestSSH, addr: int, size: int) -> List[str]:
    """sysfs directories of the memory blocks covering [addr, addr + size)."""
    block_size = int(ssh.run(f'cat {MEMORY_SYSFS}/block_size_bytes', check=True).stdout, 16)
    return [f'{MEMORY_SYSFS}/memory{index}'
            for index in range(addr // block_size, -(-(addr + size) // block_size))]


def wait_blocks(ssh: GuestSSH, addr: int, size: int,
                timeout_s: float = BLOCK_WAIT_S) -> List[str]:
    """The blocks of [addr, addr + size), once the guest shows all of them
    (polled inside the guest; CommandTimeout past ``timeout_s``)."""
    paths = blocks(ssh, addr, size)
    quoted = ' '.join(shlex.quote(p) for p in paths)
    ssh.run(f'for b in {quoted}; do while [ ! -e "$b" ]; do usleep 50000; done; done',
            check=True, timeout_s=timeout_s)
    return paths


def online(ssh: GuestSSH, addr: int, size: int, how: str = 'online',
           timeout_s: float = BLOCK_WAIT_S) -> List[str]:
    """Wait for the blocks of [addr, addr + size) and bring those still
    offline online (``how``: online, online_movable, online_kernel)."""
    paths = wait_blocks(ssh, addr, size, timeout_s)
    for path in paths:
        state = shlex.quote(f'{path}/state')
        ssh.run(f'grep -q "^online" {state} || echo {how} > {state}', check=True)
    return paths
