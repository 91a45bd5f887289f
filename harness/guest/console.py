"""The guest's serial console: QEMU writes it to a file in the test's output
directory (``-chardev file``), and the harness waits for lines in it.

A wait ends at the first of: the pattern, a failure pattern (kernel panic,
the image's failure marker, firmware finding no boot disk), QEMU exiting, or
the deadline; every outcome but the first raises with the console's tail.
"""

import dataclasses
import os
import re
import time
from typing import Callable, Iterable, List, Optional, Pattern, Sequence, Tuple, Union

from ..base.errors import HarnessError, Timeout
from ..base.waiting import wait_until

# Lines that mean the boot is lost whatever happens next.
DEFAULT_FAILURE_PATTERNS = (
    r'Kernel panic - not syncing',
    r'MPQEMU-GUEST-FAILED[^\n]*',
    r'No bootable device',
    r'Boot failed: [^\n]*',
    r'Could not find kernel image[^\n]*',
    # The SCSI layer gave up on a command (30 s without completion): the
    # disk's driver cannot drive the controller, and the boot would drag on.
    r'scsi \d+:\d+:\d+:\d+: (?:tag#\d+ )?ABORT operation started',
)
# SeaBIOS gives up on every boot device (it then retries after 60 s).
FIRMWARE_FAILURE_PATTERNS = (r'No bootable device',)
FIRMWARE_DEBUG_PORT = 0x402       # SeaBIOS's CONFIG_DEBUG_IO port, QEMU's isa-debugcon
POLL_INTERVAL_S = 0.02
TAIL_LINES = 25
DEFAULT_TIMEOUT_S = 60.0

PatternLike = Union[str, Pattern]


class ConsoleError(HarnessError):
    """A console wait did not see what it waited for."""

    def __init__(self, message: str, console: 'Console'):
        super().__init__(f"{message}\n--- last {TAIL_LINES} lines of {console.path} ---\n"
                         f"{console.tail()}")
        self.console = console


class ConsoleTimeout(ConsoleError, Timeout):
    """The console did not show what was awaited before the deadline."""


class ConsoleFailure(ConsoleError):
    """A failure pattern appeared; ``.line`` is what matched."""

    def __init__(self, message: str, console: 'Console', line: str):
        super().__init__(message, console)
        self.line = line


class GuestGone(ConsoleError):
    """The process producing the console exited during the wait."""


@dataclasses.dataclass(frozen=True)
class ConsoleMatch:
    text: str          # what the pattern matched
    end_offset: int    # byte offset just past the match: ``since`` for the next wait
    elapsed_s: float   # from the start of the wait
    match: re.Match


def _compile(pattern: PatternLike) -> Pattern:
    return pattern if isinstance(pattern, re.Pattern) else re.compile(pattern)


class Console:
    """A serial console log at ``path`` (created by QEMU; may not exist yet)."""

    def __init__(self, path: str):
        self.path = path

    def qemu_args(self, chardev_id: str = 'console0') -> List[str]:
        """QEMU arguments that send the first serial port to this file."""
        return ['-chardev', f'file,id={chardev_id},path={self.path}',
                '-serial', f'chardev:{chardev_id}']

    def read_bytes(self, since: int = 0) -> bytes:
        try:
            with open(self.path, 'rb') as f:
                f.seek(since)
                return f.read()
        except FileNotFoundError:
            return b''

    def text(self, since: int = 0) -> str:
        return self.read_bytes(since).decode('utf-8', errors='replace')

    def mark(self) -> int:
        """Current end of the log: pass as ``since`` to wait only for output
        that comes after now (e.g. the marker of the next boot)."""
        try:
            return os.path.getsize(self.path)
        except FileNotFoundError:
            return 0

    def first_match(self, patterns: Iterable[PatternLike], since: int = 0) -> Optional[str]:
        """What the first of ``patterns`` to match after byte ``since`` matched."""
        text = self.text(since)
        for pattern in patterns:
            found = _compile(pattern).search(text)
            if found:
                return found.group(0)
        return None

    def tail(self, lines: int = TAIL_LINES) -> str:
        return '\n'.join(self.text().replace('\r', '').splitlines()[-lines:])

    def wait_for(self, pattern: PatternLike,
                 failure_patterns: Iterable[PatternLike] = DEFAULT_FAILURE_PATTERNS,
                 timeout_s: float = DEFAULT_TIMEOUT_S, since: int = 0,
                 alive: Optional[Callable[[], bool]] = None,
                 other_failures: Sequence[Tuple['Console', int, Sequence[PatternLike]]] = ()
                 ) -> ConsoleMatch:
        """Wait until ``pattern`` (a regex) appears after byte ``since``.

        ``alive``: called between polls; once it returns False the wait
        stops with GuestGone instead of running out its deadline.
        ``other_failures``: (log, since, patterns) that end the wait too,
        e.g. the firmware's debug console giving up on every boot disk.
        """
        wanted = _compile(pattern)
        failures = [_compile(p) for p in failure_patterns]
        started = time.monotonic()
        data = b''

        def seen() -> Optional[ConsoleMatch]:
            nonlocal data
            gone = alive is not None and not alive()
            # Read after the liveness check: output written just before the
            # exit is still seen.
            data += self.read_bytes(since + len(data))
            # surrogateescape: byte offsets survive the round trip exactly.
            text = data.decode('utf-8', errors='surrogateescape')
            found = wanted.search(text)
            failed = [m for m in (f.search(text) for f in failures) if m]
            first_failure = min(failed, key=lambda m: m.start()) if failed else None
            if first_failure and (not found or first_failure.start() < found.start()):
                raise ConsoleFailure(f"console showed {first_failure.group(0)!r} while "
                                     f"waiting for {wanted.pattern!r}", self,
                                     first_failure.group(0))
            if found:
                end = since + len(text[:found.end()].encode('utf-8', errors='surrogateescape'))
                return ConsoleMatch(found.group(0), end, time.monotonic() - started, found)
            for log, offset, patterns in other_failures:
                failed_there = log.first_match(patterns, offset)
                if failed_there:
                    raise ConsoleFailure(f"{log.path} showed {failed_there!r} while "
                                         f"waiting for {wanted.pattern!r}", self, failed_there)
            if gone:
                raise GuestGone(f"the guest's QEMU exited while waiting for "
                                f"{wanted.pattern!r} on the console", self)
            return None

        return wait_until(seen, timeout_s, f'console wait for {wanted.pattern!r}', POLL_INTERVAL_S,
                          error=lambda s: ConsoleTimeout(f"{wanted.pattern!r} did not appear on "
                                                         f"the console within {s:.0f} s", self))


class FirmwareLog(Console):
    """SeaBIOS's debug output (port 0x402, QEMU's isa-debugcon) in a file:
    how far the firmware got when nothing reached the serial console."""

    def qemu_args(self, chardev_id: str = 'firmware') -> List[str]:
        return ['-chardev', f'file,id={chardev_id},path={self.path}',
                '-device', f'isa-debugcon,iobase={FIRMWARE_DEBUG_PORT:#x},chardev={chardev_id}']


def wait_for_console(console: Console, pattern: PatternLike,
                     failure_patterns: Iterable[PatternLike] = DEFAULT_FAILURE_PATTERNS,
                     timeout: float = DEFAULT_TIMEOUT_S, since: int = 0,
                     alive: Optional[Callable[[], bool]] = None) -> ConsoleMatch:
    """Module-level form of ``Console.wait_for`` (timeout in seconds)."""
    return console.wait_for(pattern, failure_patterns, timeout, since, alive)
