"""A qtest client, and the device access that drives a PCI device with it.

qtest replaces the guest: QEMU runs with ``-accel qtest`` (no vCPU runs)
and executes port I/O, MMIO and memory commands sent as text lines over a
socket (QEMU's system/qtest.c; tests/qtest/libqtest.c is the C client).
QEMU connects to a unix socket the harness listens on (``-qtest
unix:PATH``), so the harness owns the socket from before the launch:

    listener = QTestListener()
    vm.add_args(*listener.qemu_args(log_path))
    vm.launch()
    client = listener.accept(timeout_s=5)
    access = QTestPciAccess(client, slot=3, ram_bytes=256 << 20)

Every read has a deadline (a wedged QEMU is a QTestTimeout, a dead one a
QTestError), and QEMU's asynchronous ``IRQ raise N`` / ``IRQ lower N``
lines (after ``irq_intercept_in``) are collected whenever they arrive.

:class:`QTestPciAccess` is a :class:`harness.devices.pci.DeviceAccess`:
config space through the 0xcf8/0xcfc mechanism of the PC's host bridge,
BARs through inX/outX and readX/writeX, guest memory through
b64read/b64write, DMA buffers allocated from guest RAM (nothing else uses
it: no guest runs).  The same LSI engine that the fake proxy drives then
drives a device behind a real ``x-pci-proxy-dev``, or the in-process
``lsi53c895a`` as a control.
"""

import base64
import os
import shutil
import socket
import tempfile
import time
from typing import Callable, List, Optional

from ..base.errors import HarnessError, Timeout
from ..base.units import MIB
from .guestmem import FirstFit

DEFAULT_TIMEOUT_S = 10.0
ACCEPT_TIMEOUT_S = 15.0
SOCKET_NAME = 'qtest.sock'

# PCI configuration mechanism #1 (the i440FX/Q35 host bridge).
PCI_CONFIG_ADDRESS = 0xcf8
PCI_CONFIG_DATA = 0xcfc
PCI_CONFIG_ENABLE = 0x8000_0000
# PIIX3's PIRQ route control registers (00:01.0, 0x60..0x63: PIRQA..D),
# which SeaBIOS programs on a real boot; without firmware they read 0x80
# (routing disabled), so the harness programs them itself.
PIIX3_DEVFN = 0x08
PIIX3_PIRQRC = 0x60
DMA_RAM_BASE = 0x10_0000        # above the legacy VGA/BIOS holes


class QTestError(HarnessError):
    """qtest refused a command, or QEMU went away."""


class QTestTimeout(QTestError, Timeout):
    """QEMU did not answer a qtest command before the deadline."""


class QTestListener:
    """The unix socket QEMU's ``-qtest unix:PATH`` connects to.  It lives in
    a private temporary directory: the test's output directory is usually
    too deep for a socket path (108 bytes)."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix='mpqemu-qtest-')
        self.path = os.path.join(self._dir, SOCKET_NAME)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.bind(self.path)
        self._sock.listen(1)

    def qemu_args(self, log_path: Optional[str] = None) -> List[str]:
        """Arguments for the QEMU that will connect; ``log_path`` gets
        QEMU's own timestamped log of every qtest command."""
        args = ['-qtest', f'unix:{self.path}']
        if log_path:
            args += ['-qtest-log', log_path]
        return args

    def accept(self, timeout_s: float = ACCEPT_TIMEOUT_S,
               command_timeout_s: float = DEFAULT_TIMEOUT_S) -> 'QTestClient':
        """The connection of the QEMU started with :meth:`qemu_args`."""
        self._sock.settimeout(timeout_s)
        try:
            conn, _ = self._sock.accept()
        except socket.timeout:
            raise QTestTimeout(f"no QEMU connected to {self.path} within {timeout_s} s "
                               f"(was it started with {' '.join(self.qemu_args())}?)") from None
        finally:
            self.close()
        return QTestClient(conn, timeout_s=command_timeout_s)

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


class QTestClient:
    """One qtest connection: commands in, replies (and IRQ events) out."""

    def __init__(self, sock: socket.socket, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.sock = sock
        self.timeout_s = timeout_s
        self._buf = b''
        self.irq_levels = {}            # line -> last level QEMU reported
        self.irq_raises = {}            # line -> raise events seen
        self.commands = 0

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.sock.close()

    # -- the wire

    def _read_line(self, deadline: float) -> Optional[str]:
        """One line, or None at the deadline."""
        while b'\n' not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(MIB)
            except socket.timeout:
                return None
            except OSError as err:
                raise QTestError(f"qtest connection failed: {err}") from None
            if not chunk:
                raise QTestError("QEMU closed the qtest connection (it exited or crashed; "
                                 "see its log)")
            self._buf += chunk
        line, self._buf = self._buf.split(b'\n', 1)
        return line.decode('ascii', errors='replace')

    def _note_irq(self, line: str) -> bool:
        words = line.split()
        if len(words) == 3 and words[0] == 'IRQ' and words[1] in ('raise', 'lower'):
            number = int(words[2])
            self.irq_levels[number] = words[1] == 'raise'
            if words[1] == 'raise':
                self.irq_raises[number] = self.irq_raises.get(number, 0) + 1
            return True
        return False

    def command(self, line: str, timeout_s: Optional[float] = None) -> List[str]:
        """Send one command; return the words after ``OK``."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        try:
            # A stopped QEMU stops reading: a large b64write must not block.
            self.sock.settimeout(timeout_s)
            self.sock.sendall(line.encode('ascii') + b'\n')
        except socket.timeout:
            raise QTestTimeout(f"qtest {line.split()[0]}: QEMU took nothing within "
                               f"{timeout_s} s (stuck)") from None
        except OSError as err:
            raise QTestError(f"qtest {line.split()[0]}: cannot send ({err}): QEMU is gone") \
                from None
        self.commands += 1
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._read_line(deadline)
            if reply is None:
                raise QTestTimeout(f"qtest {line[:60]!r}: no reply within {timeout_s} s "
                                   f"(QEMU stuck, e.g. a proxied access waiting on a stopped "
                                   f"remote)")
            if self._note_irq(reply):
                continue
            words = reply.split()
            if words and words[0] == 'OK':
                return words[1:]
            raise QTestError(f"qtest {line[:60]!r} failed: {reply}")

    def poll_irqs(self, timeout_s: float = 0.0) -> None:
        """Collect IRQ lines that arrived (waiting up to ``timeout_s`` for
        the first one)."""
        deadline = time.monotonic() + timeout_s
        while True:
            line = self._read_line(deadline)
            if line is None:
                return
            if not self._note_irq(line):
                raise QTestError(f"unexpected qtest line with no command pending: {line!r}")
            deadline = time.monotonic()     # after one, only what is already there

    # -- commands (QEMU's system/qtest.c)

    def out(self, port: int, value: int, size: int) -> None:
        self.command(f'out{_SUFFIX[size]} {port:#x} {value:#x}')

    def in_(self, port: int, size: int) -> int:
        return int(self.command(f'in{_SUFFIX[size]} {port:#x}')[0], 16)

    def write(self, addr: int, value: int, size: int) -> None:
        self.command(f'write{_SUFFIX[size]} {addr:#x} {value:#x}')

    def read(self, addr: int, size: int) -> int:
        return int(self.command(f'read{_SUFFIX[size]} {addr:#x}')[0], 16)

    def memread(self, addr: int, length: int) -> bytes:
        if length == 0:
            return b''
        return base64.b64decode(self.command(f'b64read {addr:#x} {length:#x}')[0])

    def memwrite(self, addr: int, data: bytes) -> None:
        if data:
            self.command(f'b64write {addr:#x} {len(data):#x} '
                         f'{base64.b64encode(data).decode("ascii")}')

    def irq_intercept_in(self, qom_path: str) -> None:
        """Report the input GPIO lines of ``qom_path`` (e.g. ``ioapic``)
        as ``IRQ raise/lower N`` instead of delivering them."""
        self.command(f'irq_intercept_in {qom_path}')

    def endianness(self) -> str:
        return self.command('endianness')[0]


_SUFFIX = {1: 'b', 2: 'w', 4: 'l', 8: 'q'}


class QTestIrqLine:
    """An ioapic input observed through ``irq_intercept_in``: a
    :class:`harness.devices.pci.IrqLine`.  Like an eventfd, a wait or a
    poll consumes every raise seen so far."""

    def __init__(self, client: QTestClient, gsi: int):
        self.client = client
        self.gsi = gsi
        self._consumed = 0

    @property
    def count(self) -> int:
        """Raises of the line seen so far."""
        return self.client.irq_raises.get(self.gsi, 0)

    def _consume(self) -> bool:
        if self.count > self._consumed:
            self._consumed = self.count
            return True
        return False

    def wait(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        self.client.poll_irqs(0.0)
        while not self._consume():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.client.poll_irqs(remaining)
        return True

    def pending(self) -> bool:
        self.client.poll_irqs(0.0)
        return self._consume()

    def level(self) -> bool:
        self.client.poll_irqs(0.0)
        return self.client.irq_levels.get(self.gsi, False)

    def ack(self) -> None:
        """Level-triggered: the device lowers INTx itself once its status
        registers are read; nothing to do."""


class QTestPciAccess:
    """A PCI function on bus 0 of a PC, reached through qtest.

    ``ram_bytes`` of guest RAM from address 0 serve as DMA memory
    (allocations start at 1 MiB).  ``irq_gsi``, when given, routes the
    function's INTx to that ioapic input (PIIX3 PIRQ routing) and makes it
    observable as ``irq``; None where no interrupt can be observed.
    """

    def __init__(self, client: QTestClient, slot: int, ram_bytes: int, function: int = 0,
                 irq_gsi: Optional[int] = None, interrupt_pin: int = 1):
        self.client = client
        self.devfn = slot << 3 | function
        self.slot = slot
        self._dma = FirstFit(DMA_RAM_BASE, ram_bytes - DMA_RAM_BASE)
        self.irq: Optional[QTestIrqLine] = None
        if irq_gsi is not None:
            self.route_intx(interrupt_pin, irq_gsi)
            client.irq_intercept_in('ioapic')
            self.irq = QTestIrqLine(client, irq_gsi)

    # -- configuration space: mechanism #1

    def _select(self, devfn: int, offset: int) -> None:
        self.client.out(PCI_CONFIG_ADDRESS,
                        PCI_CONFIG_ENABLE | devfn << 8 | (offset & 0xfc), 4)

    def _config_read(self, devfn: int, offset: int, size: int) -> int:
        self._select(devfn, offset)
        return self.client.in_(PCI_CONFIG_DATA + (offset & 3), size)

    def _config_write(self, devfn: int, offset: int, value: int, size: int) -> None:
        self._select(devfn, offset)
        self.client.out(PCI_CONFIG_DATA + (offset & 3), value, size)

    def config_read(self, offset: int, size: int) -> int:
        return self._config_read(self.devfn, offset, size)

    def config_write(self, offset: int, value: int, size: int) -> None:
        self._config_write(self.devfn, offset, value, size)

    def route_intx(self, pin: int, gsi: int) -> None:
        """Route INTx ``pin`` (1 = INTA) of our slot to ISA IRQ ``gsi``, as
        SeaBIOS does (hw/i386/pc_piix.c: pirq = (pin - 1 + slot - 1) & 3)."""
        pirq = (pin - 1 + self.slot - 1) & 3
        self._config_write(PIIX3_DEVFN, PIIX3_PIRQRC + pirq, gsi, 1)

    # -- BARs

    def bar_read(self, addr: int, size: int, memory: bool) -> int:
        return self.client.read(addr, size) if memory else self.client.in_(addr, size)

    def bar_write(self, addr: int, value: int, size: int, memory: bool) -> None:
        if memory:
            self.client.write(addr, value, size)
        else:
            self.client.out(addr, value, size)

    # -- guest memory

    def mem_read(self, gpa: int, length: int) -> bytes:
        return self.client.memread(gpa, length)

    def mem_write(self, gpa: int, data: bytes) -> None:
        self.client.memwrite(gpa, data)

    def dma_alloc(self, size: int, align: int = 64) -> int:
        return self._dma.take(size, align)

    def dma_free(self, gpa: int) -> None:
        self._dma.free(gpa)


def launch_lsi(vm, *, drive: Optional[str], slot: int, ram_bytes: int,
               irq_gsi: Optional[int] = None, qtest_log: Optional[str] = None,
               launch: Optional[Callable[[object], object]] = None):
    """Add an LSI ``lsi1`` at ``slot`` to a not yet launched machine made
    with accel='qtest' (harness/mpqemu/topology.py), launch it (with
    ``launch(vm)`` if given, e.g. a test's own launch) and connect.
    Returns (client, access); the caller closes the client and shuts the
    machine down."""
    vm.add_lsi('lsi1', drive, addr=f'{slot:#x}')
    listener = QTestListener()
    try:
        vm.add_args(*listener.qemu_args(qtest_log))
        if launch:
            launch(vm)
        else:
            vm.launch()
        client = listener.accept()
    finally:
        listener.close()
    try:
        access = QTestPciAccess(client, slot, ram_bytes, irq_gsi=irq_gsi)
    except BaseException:
        client.close()
        raise
    return client, access
