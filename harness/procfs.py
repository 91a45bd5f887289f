"""What /proc says about a process or one of its threads.

The watchdog (stopped?), the fuzzer (busy or blocked?) and the vCPU
snapshot (spinning or asleep, and where?) all read the same few files.
Every reader returns None (or a placeholder) for a process that is gone.
"""

import os
from typing import List, Optional

CLK_TCK = os.sysconf('SC_CLK_TCK')          # unit of utime/stime


def _path(pid: int, tid: Optional[int], name: str) -> str:
    return f'/proc/{pid}/task/{tid}/{name}' if tid else f'/proc/{pid}/{name}'


def stat_fields(pid: int, tid: Optional[int] = None) -> Optional[List[str]]:
    """The fields of ``stat`` after the command name, state first (the
    name may hold spaces and parentheses, so split after its last ')')."""
    try:
        with open(_path(pid, tid, 'stat'), encoding='ascii', errors='replace') as f:
            return f.read().rsplit(')', 1)[1].split()
    except (OSError, IndexError):
        return None


def state(pid: int, tid: Optional[int] = None) -> Optional[str]:
    """R, S, D, T, t, Z...; None once the process is gone."""
    fields = stat_fields(pid, tid)
    return fields[0] if fields else None


def cpu_seconds(pid: int, tid: Optional[int] = None) -> Optional[float]:
    """User + system CPU time used so far."""
    fields = stat_fields(pid, tid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK if fields else None


def read(pid: int, name: str, tid: Optional[int] = None) -> str:
    """A small /proc file (``wchan``, ``syscall``...), stripped; the error
    in parentheses when it cannot be read."""
    try:
        with open(_path(pid, tid, name), encoding='ascii', errors='replace') as f:
            return f.read().strip()
    except OSError as err:
        return f'({err.strerror})'


def ppid(pid: int) -> Optional[int]:
    fields = stat_fields(pid)
    return int(fields[1]) if fields else None


def start_time(pid: int) -> Optional[int]:
    """When the process started, in clock ticks since boot: with the pid,
    it names one process even after the pid is reused."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None


def cmdline(pid: int) -> List[str]:
    """The process's argv ([] once it is gone, or for a kernel thread)."""
    try:
        with open(_path(pid, None, 'cmdline'), 'rb') as f:
            return [a.decode(errors='replace') for a in f.read().split(b'\0') if a]
    except OSError:
        return []


def environ_has(pid: int, entry: str) -> bool:
    """Whether ``NAME=value`` is in the process's initial environment."""
    try:
        with open(_path(pid, None, 'environ'), 'rb') as f:
            return entry.encode() in f.read().split(b'\0')
    except OSError:
        return False


def pids() -> List[int]:
    return [int(name) for name in os.listdir('/proc') if name.isdigit()]


def descendants(roots) -> List[int]:
    """Every living descendant of the processes ``roots`` (not the roots),
    parents before their children."""
    children: dict = {}
    for pid in pids():
        parent = ppid(pid)
        if parent is not None:
            children.setdefault(parent, []).append(pid)
    found, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(0), []):
            if child not in found and child not in roots:
                found.append(child)
                todo.append(child)
    return found
