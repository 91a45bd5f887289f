"""What a transport gives the shared fuzzer (harness/fuzz/runner.py).

A :class:`Transport` names the protocol, generates its cases (its
:class:`~harness.fuzz.generator.Families`), starts its remotes (a
:class:`Pool` of :class:`FuzzRemote`) and says where its reproducers live.  A :class:`FuzzRemote` is one remote process and the
harness's connection to it: raw sends for the case's steps, the set-up a
proxy or client does at start, the restore of what a surviving case
touched, and the follow-up (requests with known answers) that tells a
live remote from a silent one.  Errors are those of
harness/base/fdstream.py: RemoteGone when the socket closed, RemoteTimeout
when nothing came, ProtocolError for a reply the protocol does not allow.
"""

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from ..qemu.binary import Capabilities
from ..qemu.guestmem import GuestMemory
from ..qemu.process import QEMUProcess
from .cases import Case, Layout
from .generator import Families


class FuzzRemote(Protocol):
    process: QEMUProcess
    ready: bool                 # set up (memory, interrupts, BARs) and usable

    @property
    def pid(self) -> int: ...
    @property
    def requests(self) -> int:
        """Messages the harness's own requests (setup, restore) sent."""
    def wait_started(self) -> None: ...
    def setup(self, memory: GuestMemory) -> None: ...
    def restore(self, memory: GuestMemory, touches: Sequence[str]) -> None:
        """Undo what a case may have changed; returns once the remote has
        processed all of it (the last request is answered), so that a
        remote the case broke fails here, not in the next case."""
    def layout(self, memory: GuestMemory) -> Layout: ...
    def send_raw(self, data: bytes, fds: Sequence[int], timeout_s: float) -> None: ...
    def recv_any(self, timeout_s: float) -> None:
        """Receive one message, whatever it is."""
    def hangup(self) -> None:
        """Shut the harness's write side: the remote sees EOF."""
    def send_followup(self, timeout_s: float) -> int:
        """Send the follow-up requests; returns how many messages."""
    def await_followup(self, timeout_s: float) -> int:
        """Receive until the follow-up's replies came with their known
        values; returns how many messages were received."""
    def close(self) -> None: ...


class Pool(Protocol):
    launched: int

    def take(self) -> FuzzRemote: ...
    def retire(self, remote: FuzzRemote) -> str:
        """Stop ``remote``; returns its log tail."""
    def close(self) -> None: ...


@dataclass(frozen=True)
class Transport:
    """One wire protocol, as the fuzzer sees it."""
    name: str                   # 'proxy' or 'vfio-user' (harness/mpqemu/remote.py)
    corpus_dir: str             # its checked-in reproducers
    families: Families
    pool: Callable[[Capabilities, str], Pool]     # (caps, log dir) -> a pool of remotes
    # Whether a surviving case that leaves the remote holding more fds
    # than after its set-up is a finding (OUTCOME_FD_LEAK).
    tracks_fds: bool = False

    def generate(self, seed: int, index: int, layout: Layout) -> Case:
        return self.families.generate(seed, index, layout)
