"""Where each vCPU of a running QEMU is, seen from both sides.

When a guest stops answering, two very different things look the same
from SSH: QEMU itself is wedged (a vCPU thread or the main loop waits for
something), or the guest kernel waits for one of its own CPUs.  With a
device in a stopped remote the second happens for real: the vCPU that
touched the device sits in the proxy waiting for a reply, takes no
interrupts, and a guest kernel that needs it (a TLB shootdown, a
cross-CPU call, stop_machine) spins until it comes back.

``snapshot()`` records, per vCPU, the host thread QEMU runs it on (state,
kernel wait channel, CPU time used while we watched: a spinning guest
burns it, a blocked one does not) and the guest's instruction pointer,
named with the guest kernel's symbols when known (harness/guest/
symbols.py reads them from a guest booted with ``nokaslr``), and then the
functions its kernel stack names: a vCPU spinning in a cross-CPU call
shows who asked (``do_sync_core < on_each_cpu_cond_mask <
text_poke_bp_batch < ... < once_deferred``: code patching, which needs
every CPU).
"""

import bisect
import dataclasses
import re
import time
from typing import Dict, List, Optional, Tuple

from ..base import procfs
from ..base.errors import QMPError

SAMPLE_S = 0.5
# Guest kernel functions in which a CPU waits for the others to run a
# function (IPIs, stop_machine): a vCPU there waits for its peers.
CROSS_CPU_WAITS = ('smp_call_function', 'csd_lock_wait', 'on_each_cpu', 'multi_cpu_stop',
                   'stop_machine')
STACK_QWORDS = 256              # 2 KiB of a vCPU's stack are read
STACK_FRAMES = 8                # functions named from it, innermost first
_RIP = re.compile(r'^[RE]IP=([0-9a-f]+)', re.MULTILINE)   # EIP outside long mode
_RSP = re.compile(r'\b[RE]SP=([0-9a-f]+)')
_QWORDS = re.compile(r'^[0-9a-f]+:((?:\s+0x[0-9a-f]+)+)', re.MULTILINE)   # HMP x/Ngx
_HLT = re.compile(r' HLT=([01])')
_CPU_HEADER = re.compile(r'^CPU#(\d+)', re.MULTILINE)


class KernelSymbols:
    """Text symbols from a System.map-format file (address, type, name),
    for naming guest addresses."""

    def __init__(self, path: str):
        entries: List[Tuple[int, str]] = []
        with open(path, encoding='ascii', errors='replace') as f:
            for line in f:
                fields = line.split()
                if len(fields) == 3 and fields[1] in 'tTwW':
                    entries.append((int(fields[0], 16), fields[2]))
        entries.sort()
        self._addresses = [a for a, _ in entries]
        self._names = [n for _, n in entries]

    def name(self, address: int) -> Optional[str]:
        """``symbol+0xoffset``, or None outside the map's text."""
        i = bisect.bisect_right(self._addresses, address) - 1
        if i < 0 or i + 1 >= len(self._addresses):
            return None
        return f'{self._names[i]}+{address - self._addresses[i]:#x}'


@dataclasses.dataclass
class VCPUState:
    index: int
    thread_id: int
    host_state: str                 # /proc state letter of the vCPU thread
    host_wait: str                  # its kernel wait channel ('' when running)
    busy: float                     # share of one host CPU it used while sampled
    rip: Optional[int] = None
    symbol: Optional[str] = None
    halted: bool = False            # the guest executed HLT (idle), not stuck
    stack: Tuple[str, ...] = ()     # functions its stack names, innermost first

    def describe(self) -> str:
        where = f'guest RIP {self.rip:#x}' if self.rip is not None else 'guest RIP unknown'
        if self.symbol:
            where += f' ({self.symbol})'
        if self.halted:
            where += ', halted'
        if self.stack:
            where += f', stack: {" < ".join(self.stack)}'
        host = f'thread {self.thread_id} {self.host_state}'
        if self.host_wait:
            host += f' in {self.host_wait}'
        return f'vCPU {self.index}: {where}; {host}, {self.busy:.0%} busy'


def _thread_times(pid: int, tid: int) -> Tuple[str, str, float]:
    """(state, wait channel or '', CPU seconds) of one thread."""
    wchan = procfs.read(pid, 'wchan', tid)
    return (procfs.state(pid, tid) or '?',
            '' if wchan == '0' or wchan.startswith('(') else wchan,
            procfs.cpu_seconds(pid, tid) or 0.0)


def _guest_registers(qemu) -> Dict[int, Tuple[int, Optional[int], bool]]:
    """(RIP, RSP, halted) of each vCPU from HMP ``info registers -a``."""
    try:
        text = qemu.hmp('info registers -a')
    except QMPError:
        return {}
    headers = list(_CPU_HEADER.finditer(text))
    registers = {}
    for n, header in enumerate(headers):
        end = headers[n + 1].start() if n + 1 < len(headers) else len(text)
        rip = _RIP.search(text, header.end(), end)
        rsp = _RSP.search(text, header.end(), end)
        hlt = _HLT.search(text, header.end(), end)
        if rip:
            registers[int(header.group(1))] = (int(rip.group(1), 16),
                                               int(rsp.group(1), 16) if rsp else None,
                                               bool(hlt and hlt.group(1) == '1'))
    return registers


def stack_functions(dump: str, symbols: KernelSymbols) -> Tuple[str, ...]:
    """The functions that text addresses in an HMP ``x/Ngx`` dump of a
    stack fall in, innermost first, each once.  These are the return
    addresses and whatever stale code pointers the frames left: a guide
    for a person reading a stall, not an unwinder.  An address at a
    function's first byte is a function pointer, never a return address,
    and is left out."""
    functions: List[str] = []
    for line in _QWORDS.finditer(dump):
        for word in line.group(1).split():
            name = symbols.name(int(word, 16))
            if name and not name.endswith('+0x0'):
                function = name.rsplit('+', 1)[0]
                if function not in functions:
                    functions.append(function)
    return tuple(functions[:STACK_FRAMES])


def _guest_stack(qemu, index: int, rsp: int, symbols: KernelSymbols) -> Tuple[str, ...]:
    try:
        dump = qemu.hmp(f'x/{STACK_QWORDS}gx {rsp:#x}', cpu_index=index)
    except QMPError:
        return ()
    return stack_functions(dump, symbols)


def snapshot(qemu, symbols: Optional[KernelSymbols] = None,
             sample_s: float = SAMPLE_S) -> List[VCPUState]:
    """The state of every vCPU of ``qemu`` (a QEMUProcess whose QMP
    answers), its host threads sampled over ``sample_s``."""
    cpus = qemu.qmp('query-cpus-fast')
    pid = qemu.pid
    before = {c['cpu-index']: _thread_times(pid, c['thread-id']) for c in cpus}
    time.sleep(sample_s)
    registers = _guest_registers(qemu)
    states = []
    for cpu in cpus:
        index, tid = cpu['cpu-index'], cpu['thread-id']
        state, wait, cpu_s = _thread_times(pid, tid)
        busy = max(0.0, cpu_s - before[index][2]) / sample_s
        rip, rsp, halted = registers.get(index, (None, None, False))
        named = symbols is not None and rip is not None
        # An idle vCPU's stack only says it is idle.
        stack = (_guest_stack(qemu, index, rsp, symbols)
                 if named and rsp is not None and not halted else ())
        states.append(VCPUState(index, tid, state, wait, busy, rip,
                                symbols.name(rip) if named else None, halted, stack))
    return states


def describe(states: List[VCPUState]) -> str:
    return '; '.join(s.describe() for s in states)


def waiting_for_a_peer(states: List[VCPUState]) -> Optional[VCPUState]:
    """The vCPU whose guest kernel waits for another vCPU (a cross-CPU
    call) while some vCPU's host thread sleeps outside the guest (e.g. in
    the proxy, on a device whose remote is stopped); None otherwise."""
    asleep = [s for s in states if s.host_state in ('S', 'D') and not s.halted]
    for state in states:
        if (state.symbol and state.symbol.startswith(CROSS_CPU_WAITS)
                and any(other.index != state.index for other in asleep)):
            return state
    return None
