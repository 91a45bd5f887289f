"""Where the threads of a QEMU process wait, in words.

Read from /proc only, since it is what the harness looks at when QMP does
not answer: each thread's name (QEMUProcess starts QEMU with ``-name
debug-threads=on``, so vCPU threads are "CPU 0/TCG" or "CPU 0/KVM"; the main
loop keeps the process's name), its state, the system call it sits in and,
for a call on a file descriptor, what that descriptor is to the harness
("the socket to remote-lsi1").  A thread blocked reading a peer's socket is
waiting for that peer's reply: :func:`awaited_peers` names them.
"""

import dataclasses
from typing import Callable, Dict, List, Optional, Union

from ..base import procfs

# fd number in the child -> what it is: a fixed text, or one computed when
# asked (e.g. the peer's state at that moment).
FdRole = Union[str, Callable[[], str]]
READ_CALLS = ('read', 'readv', 'recvmsg', 'recvfrom', 'pread64', 'preadv')


@dataclasses.dataclass
class ThreadWait:
    tid: int
    name: str
    state: str                    # /proc state letter, '?' when gone
    call: Optional[str]           # system call it is blocked in, None if running
    fd: Optional[int]             # the call's fd, for calls on one
    fd_role: Optional[str]        # what that fd is, if the harness knows
    main: bool

    @property
    def vcpu(self) -> bool:
        return self.name.startswith('CPU ')

    @property
    def reading_peer(self) -> bool:
        """Blocked reading a descriptor the harness knows: a reply it awaits."""
        return self.call in READ_CALLS and self.fd_role is not None

    def describe(self) -> str:
        who = 'main thread' if self.main else self.name
        if self.call is None:
            return f'{who} {"running" if self.state == "R" else self.state}'
        where = f'{who} in {self.call}'
        if self.fd is not None:
            where += f' on fd {self.fd}' + (f' ({self.fd_role})' if self.fd_role else '')
        return where


def _role(role: FdRole) -> str:
    return role() if callable(role) else role


def thread_waits(pid: int, fd_roles: Optional[Dict[int, FdRole]] = None) -> List[ThreadWait]:
    roles = fd_roles or {}
    waits = []
    for tid in procfs.threads(pid):
        call = procfs.syscall(pid, tid)
        name, args = call if call else (None, [])
        fd = args[0] if name in procfs.FD_SYSCALLS and args else None
        waits.append(ThreadWait(tid, procfs.comm(pid, tid), procfs.state(pid, tid) or '?',
                                name, fd, _role(roles[fd]) if fd in roles else None,
                                tid == pid))
    return waits


def relevant(waits: List[ThreadWait]) -> List[ThreadWait]:
    """The main thread, the vCPUs, and any other thread blocked on a
    descriptor the harness knows; not the idle helper threads."""
    return [w for w in waits if w.main or w.vcpu or w.fd_role]


def describe(waits: List[ThreadWait]) -> str:
    return '; '.join(w.describe() for w in relevant(waits)) or 'no threads (gone)'


def awaited_peers(waits: List[ThreadWait]) -> List[ThreadWait]:
    """Threads blocked reading a known peer's descriptor."""
    return [w for w in waits if w.reading_peer]
