"""The agent's mailbox in guest RAM, seen from the harness.

Mirrors tests/images/agent/mailbox.h (offsets, opcodes, status codes): the
harness writes a batch of commands and then ``request_seq``; the agent runs
them in order, fills in each one's value, status and TSC stamps, then sets
``done_seq`` to the same number.  Little endian throughout.
"""

import dataclasses
import enum
import struct
from typing import Optional

MAILBOX_GPA = 0x0020_0000
MAGIC = 0x4150514d
VERSION = 1
CMDS_OFFSET = 0x100
MAX_CMDS = 1020
CMD_SIZE = 64

# Header fields: name -> (offset, struct format).
HEADER = {
    'magic': (0x00, '<I'), 'version': (0x04, '<I'),
    'request_seq': (0x08, '<I'), 'done_seq': (0x0c, '<I'),
    'count': (0x10, '<I'), 'current': (0x14, '<I'), 'ticks': (0x18, '<I'),
    'irq_line': (0x1c, '<I'), 'irq_count': (0x20, '<I'), 'irq_consumed': (0x24, '<I'),
    'spurious': (0x28, '<I'), 'other_irqs': (0x2c, '<I'),
    'calib_tsc': (0x30, '<Q'), 'calib_ticks': (0x38, '<I'),
    'fault_vector': (0x3c, '<I'), 'fault_eip': (0x40, '<I'), 'fault_error': (0x44, '<I'),
    'elcr': (0x48, '<I'), 'boots': (0x4c, '<I'), 'irq_last_tsc': (0x50, '<Q'),
}
HEADER_SIZE = 0x58
NO_FAULT = 0xffffffff
TICK_S = 0.001                 # the agent's PIT runs at 1 kHz
FAULT_EXIT_STATUS = (0x7e << 1) | 1     # isa-debug-exit of FAULT_EXIT_CODE

# struct agent_cmd
_CMD = struct.Struct('<IIIIIIII QQQ II')


class Op(enum.IntEnum):
    NOP = 0
    CFG_READ = 1
    CFG_WRITE = 2
    IO_READ = 3
    IO_WRITE = 4
    MEM_READ = 5
    MEM_WRITE = 6
    IRQ_ENABLE = 7
    IRQ_WAIT = 8
    IRQ_ACK = 9
    TSC = 10
    DELAY = 11
    TRAP = 12
    EXIT = 13


class Status(enum.IntEnum):
    OK = 0
    PENDING = 1
    BAD_OP = 2
    BAD_SIZE = 3
    TIMEOUT = 4
    BAD_LINE = 5


# CPU exception vectors, for messages.
EXCEPTIONS = {0: '#DE', 1: '#DB', 2: 'NMI', 3: '#BP', 4: '#OF', 5: '#BR', 6: '#UD',
              7: '#NM', 8: '#DF', 10: '#TS', 11: '#NP', 12: '#SS', 13: '#GP', 14: '#PF',
              16: '#MF', 17: '#AC', 18: '#MC', 19: '#XM'}


@dataclasses.dataclass
class Command:
    op: Op
    addr: int = 0
    size: int = 0
    value: int = 0
    arg: int = 0
    # Filled in by the agent:
    status: int = Status.PENDING
    irq_count: int = 0
    tsc_start: int = 0
    tsc_end: int = 0
    irq_tsc: int = 0

    def encode(self) -> bytes:
        return _CMD.pack(self.op, self.addr, self.size, self.value & 0xffffffff,
                         Status.PENDING, self.arg, 0, 0, 0, 0, 0, 0, 0)

    def decode_result(self, data: bytes) -> None:
        fields = _CMD.unpack(data)
        self.value, self.status = fields[3], fields[4]
        self.irq_count = fields[6]
        self.tsc_start, self.tsc_end, self.irq_tsc = fields[8], fields[9], fields[10]

    @property
    def status_name(self) -> str:
        try:
            return Status(self.status).name
        except ValueError:
            return f'status {self.status}'

    def describe(self) -> str:
        op = Op(self.op).name if self.op in Op._value2member_map_ else f'op {self.op}'
        if self.op in (Op.CFG_READ, Op.CFG_WRITE):
            bdf = self.arg
            where = (f' {bdf >> 8:02x}:{(bdf >> 3) & 0x1f:02x}.{bdf & 7}'
                     f' +{self.addr:#04x}/{self.size}')
        elif self.op in (Op.IO_READ, Op.IO_WRITE):
            where = f' port {self.addr:#06x}/{self.size}'
        elif self.op in (Op.MEM_READ, Op.MEM_WRITE):
            where = f' {self.addr:#010x}/{self.size}'
        elif self.op in (Op.IRQ_ENABLE, Op.IRQ_ACK):
            where = f' IRQ {self.arg}'
        elif self.op in (Op.IRQ_WAIT, Op.DELAY):
            where = f' {self.arg} ms'
        else:
            where = ''
        if self.op in (Op.CFG_WRITE, Op.IO_WRITE, Op.MEM_WRITE):
            where += f' = {self.value:#x}'
        return op + where


def cmd_offset(index: int) -> int:
    return CMDS_OFFSET + index * CMD_SIZE


def field(data: bytes, name: str) -> int:
    offset, fmt = HEADER[name]
    return struct.unpack_from(fmt, data, offset)[0]


def pack_field(name: str, value: int) -> tuple:
    """(offset, bytes) of header field ``name`` holding ``value``."""
    offset, fmt = HEADER[name]
    return offset, struct.pack(fmt, value)


def exception_name(vector: int) -> Optional[str]:
    return EXCEPTIONS.get(vector)
