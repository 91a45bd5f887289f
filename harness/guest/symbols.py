"""The guest kernel's text symbols, to name the addresses its vCPUs are at.

Debian's System.map is a stub (the real one ships in the -dbg package), so
the symbols come from the running guest's /proc/kallsyms, read once over
SSH and cached per kernel build.  That only holds while the kernel sits at
the same addresses at every boot: our images boot with ``nokaslr``; for a
guest without it nothing is cached and stalls are reported unnamed.
Module symbols are left out (modules load at different addresses per boot).
"""

import hashlib
import os
from typing import Optional

from ..base import paths
from .ssh import GuestSSH

KALLSYMS_TIMEOUT_S = 60.0
# Core kernel text only: module lines end in "\t[module]".
_CORE_TEXT = r"grep -E '^[0-9a-f]+ [tT] [^[:space:]]+$' /proc/kallsyms"


def kernel_symbols(ssh: GuestSSH) -> Optional[str]:
    """Path of a System.map-style file for the guest's running kernel, or
    None when its addresses change per boot (no nokaslr) or are hidden."""
    info = ssh.run('uname -rv; cat /proc/cmdline', check=True).stdout.splitlines()
    if len(info) < 2 or 'nokaslr' not in info[1].split():
        return None
    key = hashlib.sha256(info[0].encode()).hexdigest()[:16]
    path = os.path.join(paths.cache_dir('kallsyms'), f'{key}.map')
    if os.path.exists(path):
        return path
    text = ssh.run(_CORE_TEXT, check=True, timeout_s=KALLSYMS_TIMEOUT_S).stdout
    first = text.split(None, 1)[0] if text else '0'
    if int(first, 16) == 0:          # kptr_restrict: addresses shown as zeros
        return None
    tmp = f'{path}.{os.getpid()}'
    with open(tmp, 'w', encoding='ascii') as f:
        f.write(text)
    os.replace(tmp, path)
    return path
