"""Where a live QEMU process's threads are, in its own code.

When a remote is silent but busy, /proc says only that it runs.  A short
gdb attach (bounded; the process is stopped for the moment it takes, then
detached and left running) gives every thread's backtrace.  In a stripped
binary, such as Debian's, gdb names library frames only; this module
rewrites the others (``?? ()`` or `` ()``) as ``module+0xoffset`` from
/proc/PID/maps, the form ``addr2line -e`` or a debug-symbols package
resolves later, so the evidence outlives the process.  :func:`summary`
gives one line per thread for a whiteboard; :func:`busy_threads` says
which threads used the CPU over a window.
"""

import os
import re
import shutil
import subprocess
from typing import Dict, List, Optional, Tuple

from ..base import procfs

GDB_TIMEOUT_S = 10.0            # attach, unwind all threads, detach
FRAMES = 24                     # per thread
_UNNAMED = re.compile(r'\b(0x[0-9a-f]+) in (?:\?\?)? \(\)')     # gdb writes either


def gdb_available() -> bool:
    return shutil.which('gdb') is not None


def _mappings(pid: int) -> List[Tuple[int, int, int, str]]:
    """(start, end, file offset, path) of the process's file mappings."""
    maps = []
    for line in procfs.read(pid, 'maps').splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith('/'):
            start, end = (int(x, 16) for x in fields[0].split('-'))
            maps.append((start, end, int(fields[2], 16), fields[5]))
    return maps


def name_addresses(text: str, maps: List[Tuple[int, int, int, str]]) -> str:
    """``0x55d0... in ?? ()`` becomes ``0x55d0... in ?? () [qemu-system-x86_64+0x3a1f20]``."""
    def named(match: re.Match) -> str:
        address = int(match.group(1), 16)
        for start, end, offset, path in maps:
            if start <= address < end:
                return f'{match.group(0)} [{os.path.basename(path)}+{address - start + offset:#x}]'
        return match.group(0)
    return _UNNAMED.sub(named, text)


def backtraces(pid: int, timeout_s: float = GDB_TIMEOUT_S) -> str:
    """Every thread's backtrace, or a line saying why there is none."""
    if not gdb_available():
        return '(no backtrace: gdb is not installed)'
    maps = _mappings(pid)
    command = ['gdb', '-nx', '-batch', '-p', str(pid), '-ex', 'set pagination off',
               '-ex', f'thread apply all bt {FRAMES}']
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors='replace', timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        # subprocess.run killed gdb; a killed gdb detaches (ptrace ends
        # with the tracer), so the process goes on.
        return f'(no backtrace: gdb took over {timeout_s:.0f} s)'
    lines = [line for line in done.stdout.splitlines()
             if line.startswith(('Thread ', '#'))]
    if not lines:
        last = (done.stderr.strip().splitlines() or ['no output'])[-1]
        return f'(no backtrace: gdb: {last})'
    return name_addresses('\n'.join(lines), maps)


def _frame_name(line: str) -> str:
    """``#3  0x55.. in proxy_bar_rw (...) at ...`` -> ``proxy_bar_rw``; an
    unnamed frame by its module and offset."""
    match = re.match(r'#\d+\s+(?:0x[0-9a-f]+ in )?(\S*) ?\(', line)
    where = re.search(r'\[(\S+\+0x[0-9a-f]+)\]', line)
    return (match.group(1) if match else '') or (where.group(1) if where else '?')


def summary(pid: int, frames: int = 11) -> List[str]:
    """Each thread as ``name: f0 < f1 < ...``, innermost first: where a
    process waits, in one line a thread (an empty list without gdb)."""
    threads = []
    for block in re.split(r'(?m)^Thread ', backtraces(pid))[1:]:
        lines = block.splitlines()
        name = lines[0].split('"')[1] if '"' in lines[0] else lines[0][:20]
        names = [_frame_name(line) for line in lines[1:frames + 1] if line.startswith('#')]
        threads.append(f"{name}: {' < '.join(names)}")
    return threads


def thread_cpu(pid: int) -> Dict[int, float]:
    """CPU seconds used so far, per thread."""
    used = {}
    for tid in procfs.threads(pid):
        seconds = procfs.cpu_seconds(pid, tid)
        if seconds is not None:
            used[tid] = seconds
    return used


def busy_threads(pid: int, before: Dict[int, float], window_s: float,
                 after: Optional[Dict[int, float]] = None) -> str:
    """The threads that used CPU between ``before`` and now (or ``after``),
    busiest first, as ``name/tid 95%``; '' if none did."""
    after = thread_cpu(pid) if after is None else after
    shares = sorted(((after[t] - before.get(t, 0.0)) / window_s, t) for t in after)
    return ', '.join(f'{procfs.comm(pid, tid)}/{tid} {share:.0%}'
                     for share, tid in reversed(shares) if share >= 0.05)

