"""What /proc says about a process or one of its threads.

The watchdog (stopped?), the fuzzer (busy or blocked?) and the vCPU
snapshot (spinning or asleep, and where?) all read the same few files.
Every reader returns None (or a placeholder) for a process that is gone.
"""

import os
from typing import List, Optional, Tuple

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


def cpu_wanted_seconds(pid: int) -> Optional[float]:
    """Time the process's threads ran or waited runnable for a CPU so far
    (``schedstat``: run and run-queue wait): a loop on a loaded host wants
    its whole window even when it gets a fraction of it, an idle process
    woken by timers wants little.  None once it is gone."""
    total, found = 0, False
    for tid in threads(pid):
        fields = read(pid, 'schedstat', tid).split()
        if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit():
            total += int(fields[0]) + int(fields[1])
            found = True
    return total / 1e9 if found else None


def read(pid: int, name: str, tid: Optional[int] = None) -> str:
    """A small /proc file (``wchan``, ``syscall``...), stripped; the error
    in parentheses when it cannot be read."""
    try:
        with open(_path(pid, tid, name), encoding='ascii', errors='replace') as f:
            return f.read().strip()
    except OSError as err:
        return f'({err.strerror})'


def open_files_limit(pid: int) -> Optional[int]:
    """The soft RLIMIT_NOFILE of process ``pid`` (None if unknown)."""
    for line in read(pid, 'limits').splitlines():
        if line.startswith('Max open files'):
            soft = line.split()[3]
            return int(soft) if soft.isdigit() else None
    return None


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


def threads(pid: int) -> List[int]:
    try:
        return sorted(int(t) for t in os.listdir(f'/proc/{pid}/task'))
    except OSError:
        return []


def comm(pid: int, tid: Optional[int] = None) -> str:
    """The thread's name (QEMU names its threads with -name debug-threads=on)."""
    return read(pid, 'comm', tid)


# x86_64 numbers (arch/x86/entry/syscalls/syscall_64.tbl) of the calls a
# waiting QEMU thread sits in; those whose first argument is a fd are in
# FD_SYSCALLS.
SYSCALL_NAMES = {0: 'read', 1: 'write', 7: 'poll', 16: 'ioctl', 17: 'pread64',
                 18: 'pwrite64', 19: 'readv', 20: 'writev', 23: 'select', 35: 'nanosleep',
                 43: 'accept', 44: 'sendto', 45: 'recvfrom', 46: 'sendmsg', 47: 'recvmsg',
                 61: 'wait4', 202: 'futex', 230: 'clock_nanosleep', 232: 'epoll_wait',
                 270: 'pselect6', 271: 'ppoll', 281: 'epoll_pwait', 288: 'accept4',
                 295: 'preadv', 296: 'pwritev'}
FD_SYSCALLS = {'read', 'write', 'ioctl', 'pread64', 'pwrite64', 'readv', 'writev', 'accept',
               'sendto', 'recvfrom', 'sendmsg', 'recvmsg', 'accept4', 'preadv', 'pwritev'}


def syscall(pid: int, tid: Optional[int] = None) -> Optional[Tuple[str, List[int]]]:
    """(name, arguments) of the system call the thread is blocked in,
    None when it runs, is gone or is not in a call (/proc/PID/syscall)."""
    text = read(pid, 'syscall', tid)
    fields = text.split()
    if not fields or not fields[0].lstrip('-').isdigit() or int(fields[0]) < 0:
        return None
    number = int(fields[0])
    return (SYSCALL_NAMES.get(number, f'syscall {number}'),
            [int(a, 16) for a in fields[1:7]])


def fd_target(pid: int, fd: int) -> str:
    """What fd ``fd`` of the process is (``socket:[123]``, a path...)."""
    try:
        return os.readlink(f'/proc/{pid}/fd/{fd}')
    except OSError as err:
        return f'({err.strerror})'


def fd_count(pid: int) -> Optional[int]:
    """How many fds process ``pid`` has open; None once it is gone."""
    try:
        return len(os.listdir(f'/proc/{pid}/fd'))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
