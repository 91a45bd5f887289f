"""What a hostile remote sends instead of the right reply, as data.

A :class:`Reply` describes the bytes, fds and timing that go on the wire
for one request of the proxy (a config or BAR access, a DEVICE_RESET).
The proxy's side of each is in QEMU's hw/remote/mpqemu-link.c
(mpqemu_msg_send_and_await_reply reads one message per request; the
message is checked by mpqemu_msg_valid, which for RET checks neither the
size nor that no fds came with it) and hw/remote/proxy.c.

The field values of :data:`CORRECT` are the right reply.  A reply is
*legal* when it says what hw/remote/message.c would say, however it is cut
into pieces or delayed; a proxy that copes with an illegal one rejects it
(a guest read gets all-ones, an error is logged) and keeps the link in
step.  ``end`` says what the remote does after (or instead of) replying:

  ''          nothing: the link goes on
  'eof'       closes its end of the socket
  'silent'    never answers (the harness ends the wait: see remote.py)
  'truncate'  sends ``data_len`` bytes of the header, then closes
  'shutdown'  shuts its write side down, reading on
"""

import dataclasses
import random
from dataclasses import dataclass
from typing import List, Optional, Tuple

from ..protocol import DATA_UNION_SIZE, HEADER, HEADER_SIZE, RET_U64, Cmd

END_NONE, END_EOF, END_SILENT, END_TRUNCATE, END_SHUTDOWN = (
    '', 'eof', 'silent', 'truncate', 'shutdown')
ENDS = (END_NONE, END_EOF, END_SILENT, END_TRUNCATE, END_SHUTDOWN)
# Kinds of fds a reply may carry (harness/fuzz/cases.py open_fd).
FD_KINDS = ('memfd:8192', 'socket', 'dev-zero', 'eventfd', 'pipe-read', 'regular-file')
# A recvmsg() control buffer of QEMU's io/channel-socket.c holds 16 fds.
CHANNEL_MAX_FDS = 16


@dataclass(frozen=True)
class Reply:
    """One hostile (or correct) answer to one request.

    ``cmd`` and ``size`` go in the header (``size`` None: the right size
    for the request); ``data_len`` bytes of data follow (None: as many as
    ``size`` says, if that fits the message union, else none);
    ``value`` replaces the right u64 (a lie); ``fds`` are opened by kind
    and sent with the header; ``before`` unsolicited RETs go first and
    ``copies`` of the reply are sent; ``delay_s`` passes before the reply
    and ``fragments`` pieces of it go ``gap_s`` apart."""
    family: str = 'correct'
    cmd: int = Cmd.RET
    size: Optional[int] = None
    data_len: Optional[int] = None
    value: Optional[int] = None
    fds: Tuple[str, ...] = ()
    before: int = 0
    copies: int = 1
    delay_s: float = 0.0
    fragments: int = 1
    gap_s: float = 0.0
    end: str = END_NONE

    def __post_init__(self):
        if self.end not in ENDS:
            raise ValueError(f"reply end {self.end!r} is not one of {ENDS}")

    # -- what it is

    def right_size(self, reset: bool) -> int:
        return 0 if reset else RET_U64.size

    def header_size(self, reset: bool) -> int:
        return self.right_size(reset) if self.size is None else self.size

    def legal(self, reset: bool = False) -> bool:
        """What hw/remote/message.c could have sent, however cut up or
        late, and the link still open afterwards.  A lie (``value``) is
        legal: a device may answer anything."""
        return (self.cmd == Cmd.RET and self.header_size(reset) == self.right_size(reset)
                and self.data_len is None and not self.fds
                and not self.before and self.copies == 1 and self.end == END_NONE)

    @property
    def ends_link(self) -> bool:
        return self.end != END_NONE

    @property
    def queued(self) -> int:
        """RETs left in the socket for the proxy's next requests to take."""
        return self.before + self.copies - 1 if self.end == END_NONE else 0

    def describe(self) -> str:
        """``family key=value ...``: what a known issue's "notes" match."""
        fields = [f'{f.name}={getattr(self, f.name)!r}' for f in dataclasses.fields(self)
                  if f.name != 'family' and getattr(self, f.name) != f.default]
        return ' '.join([self.family] + fields)

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default or f.name == 'family'}

    @classmethod
    def from_json(cls, data: dict) -> 'Reply':
        data = dict(data)
        if 'fds' in data:
            data['fds'] = tuple(data['fds'])
        return cls(**data)

    # -- its bytes

    def frame(self, value: Optional[int], reset: bool, rng: random.Random) -> bytes:
        """The header and data of the (main) reply to a request whose
        right answer is ``value`` (None for DEVICE_RESET)."""
        size = self.header_size(reset)
        if self.value is not None:
            value = self.value
        data = b''
        if value is not None:
            data = RET_U64.pack(value)
        if self.data_len is not None:
            length = self.data_len
        else:
            length = size if size <= DATA_UNION_SIZE else 0
        data = (data + bytes(rng.getrandbits(8) for _ in range(max(0, length - len(data)))))
        return HEADER.pack(self.cmd, size) + data[:length]

    def pieces(self, frame: bytes) -> List[bytes]:
        if self.end == END_TRUNCATE:
            return [frame[:min(self.data_len or 0, HEADER_SIZE - 1)]]
        n = max(1, min(self.fragments, len(frame)))
        cuts = [len(frame) * i // n for i in range(n + 1)]
        return [frame[cuts[i]:cuts[i + 1]] for i in range(n)]


CORRECT = Reply()


# ---------------------------------------------------------------- catalogue
#
# The families of the fuzz run, each drawing its parameters from the case's
# random generator.  Weights favour what leaves the link open (cheap to run
# next to the next case); those that end it cost a re-plug.

def _fds(rng: random.Random, count: int) -> Tuple[str, ...]:
    return tuple(rng.choice(FD_KINDS) for _ in range(count))


def _wrong_cmd(rng):
    cmd = rng.choice([c for c in Cmd if c != Cmd.RET] + [-1, 0x7fffffff, rng.getrandbits(31)])
    return Reply('wrong-cmd', cmd=int(cmd), size=rng.choice([0, 8, 12, 24, 192,
                                                             rng.randrange(DATA_UNION_SIZE + 1)]))


def _ret_size(rng):
    size = rng.choice([0, 1, 4, 7, 9, 12, 24, 191, 192, rng.randrange(DATA_UNION_SIZE + 1)])
    return Reply('ret-size', size=size if size != RET_U64.size else 0)


def _oversize(rng):
    size = rng.choice([DATA_UNION_SIZE + 1, 256, 4096, 1 << 31, (1 << 64) - 1,
                       rng.randrange(DATA_UNION_SIZE + 1, 1 << 64)])
    return Reply('oversize', size=size, data_len=0)


def _fds_family(rng):
    count = rng.choice([1, 1, 2, 3, 7, 8, 9, 16, 17, 32])
    return Reply('fds', fds=_fds(rng, count))


def _lie(rng):
    return Reply('lie', value=rng.choice([0, (1 << 64) - 1, 1 << 32, rng.getrandbits(64)]))


def _duplicate(rng):
    return Reply('duplicate', copies=2)


def _unsolicited(rng):
    return Reply('unsolicited', before=1, value=None)


def _late(rng):
    return Reply('late', delay_s=rng.choice([0.01, 0.05, 0.2]))


def _split(rng):
    return Reply('split', fragments=rng.choice([2, 3, 16, 24]), gap_s=rng.choice([0.0, 0.002]))


def _ends(rng):
    end = rng.choice([END_EOF, END_SILENT, END_TRUNCATE, END_SHUTDOWN])
    if end == END_TRUNCATE:
        return Reply('ends', end=end, data_len=rng.randrange(HEADER_SIZE))
    return Reply('ends', end=end)


def _header_then_eof(rng):
    return Reply('ends', data_len=0, end=END_EOF)


# family name -> (weight, generator)
FAMILIES = {
    'correct': (6, lambda rng: CORRECT),
    'wrong-cmd': (14, _wrong_cmd),
    'ret-size': (14, _ret_size),
    'oversize': (8, _oversize),
    'fds': (12, _fds_family),
    'lie': (8, _lie),
    'duplicate': (8, _duplicate),
    'unsolicited': (6, _unsolicited),
    'late': (3, _late),
    'split': (6, _split),
    'ends': (2, lambda rng: (_header_then_eof if rng.random() < 0.25 else _ends)(rng)),
}


def generate(rng: random.Random) -> Reply:
    names = list(FAMILIES)
    name = rng.choices(names, weights=[FAMILIES[n][0] for n in names])[0]
    return FAMILIES[name][1](rng)
