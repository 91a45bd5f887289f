"""LSI 53C895A SCRIPTS started by the guest, with no guest tool.

The guest's only part is to touch the device's I/O BAR through sysfs
(harness/guest/pci.py): writing DSP starts SCRIPTS at that guest physical
address, and the chip fetches the program and moves data by DMA, i.e. in the
remote process, through the RAM the proxy synced to it.  The harness writes
the program into guest RAM from the host (harness/mpqemu/proxyram.py) and
checks the bytes the DMA moved in the files behind the RAM and the disk.

One SSH command per run: write DSP, poll ISTAT0 until DIP or SIP, then read
the interrupt registers (hw/scsi/lsi53c895a.c: reading DSTAT and SIST0/1
clears them).

Addresses: SCRIPTS fetches, MEMORY MOVE, and the message/command/status
phases use 32-bit addresses; only data-phase block moves reach above 4 GiB,
with the upper bits in DBMS (lsi_do_dma).  A hot-plugged DIMM on pc is
above 4 GiB, so DMA into and out of it is a SCSI READ/WRITE whose data
phase has DBMS set, with the program and its small buffers in boot RAM.
"""

import os
import struct
from typing import Callable, Dict, Optional

from ..devices import pci
from ..devices.lsi import registers as lsi_regs, scripts as lsi_scripts, scsi
from ..devices.lsi.errors import LsiError, LsiTimeout, SelectionTimeout
from ..base.errors import HarnessError
from ..mpqemu import proxyram
from .pci import GuestPCIDevice
from .ssh import GuestSSH

RUN_TIMEOUT_S = 10
SECTOR_BYTES = 512
PAGE_BYTES = 4096            # one command block page

# Offsets in the command block page (boot RAM) that :func:`scsi_script` uses.
CB_SCRIPT = 0x000
CB_CDB = 0x800
CB_MSGOUT = 0x810
CB_MSGIN = 0x818
CB_STATUS = 0x820


class GuestLsi:
    """An LSI seen by the guest through sysfs, driven through its I/O BAR."""

    def __init__(self, device: GuestPCIDevice):
        self.device = device
        self.ssh = device.ssh
        self.res = f'{device.path}/resource{lsi_regs.IO_BAR}'

    def enable_bus_master(self) -> int:
        """COMMAND |= IO | MEMORY | MASTER (DMA needs MASTER, in the remote
        too: the proxy forwards the config write); returns the new value."""
        command = self.device.config_read32(pci.COMMAND) & 0xffff
        command |= pci.COMMAND_IO | pci.COMMAND_MEMORY | pci.COMMAND_MASTER
        self.device.config_write16(pci.COMMAND, command)
        return self.device.config_read32(pci.COMMAND) & 0xffff

    def run(self, dsp: int, timeout_s: int = RUN_TIMEOUT_S) -> lsi_scripts.Stop:
        """Start SCRIPTS at ``dsp`` from inside the guest and wait for the
        stop; raises LsiError unless it stopped at INT_DONE."""
        res = self.res
        escaped = ''.join(f'\\x{b:02x}' for b in dsp.to_bytes(4, 'little'))
        rd = lambda off, n: (f'$(dd if={res} bs={n} skip={off // n} count=1 2>/dev/null'  # noqa: E731
                             f' | xxd -p)')
        script = (
            # DIEN/SIEN0/SIEN1 = 0: no interrupt line, polling only (TCG).
            f"printf '\\x00\\x00\\x00\\x00' | dd of={res} bs=1 seek={lsi_regs.DIEN} count=1 "
            f"conv=notrunc 2>/dev/null; "
            f"printf '\\x00\\x00' | dd of={res} bs=2 seek={lsi_regs.SIEN0 // 2} count=1 "
            f"conv=notrunc 2>/dev/null; "
            f"printf '{escaped}' | dd of={res} bs=4 seek={lsi_regs.DSP // 4} count=1 "
            f"conv=notrunc 2>/dev/null; "
            f"n=0; while :; do i={rd(lsi_regs.ISTAT0, 1)}; "
            f"[ $((0x$i & 3)) -ne 0 ] && break; n=$((n+1)); "
            f"[ $n -gt {timeout_s * 100} ] && break; usleep 10000; done; "
            f"echo $i {rd(lsi_regs.DSTAT, 1)} {rd(lsi_regs.SIST0, 1)} {rd(lsi_regs.SIST1, 1)} "
            f"{rd(lsi_regs.DSPS, 4)} {rd(lsi_regs.DSP, 4)} $n")
        out = self.ssh.run(script, timeout_s=timeout_s + 10, check=True).stdout.split()
        if len(out) != 7:
            raise HarnessError(f"guest SCRIPTS runner printed {out!r}")
        le = lambda h: int.from_bytes(bytes.fromhex(h), 'little')  # noqa: E731
        istat0, dstat, sist0, sist1, dsps, dsp_now = (le(h) for h in out[:6])
        stop = lsi_scripts.Stop(istat0, dstat & ~lsi_regs.DSTAT_DFE, sist0, sist1, dsps,
                                dsp_now, by_irq=False, elapsed_s=0.0)   # polls: int(out[6])
        if not istat0 & (lsi_regs.ISTAT0_DIP | lsi_regs.ISTAT0_SIP):
            raise LsiTimeout(f"SCRIPTS at {dsp:#x} still running after {timeout_s} s "
                             f"({stop})")
        if stop.sist1 & lsi_regs.SIST1_STO:
            raise SelectionTimeout(f"no SCSI target answered ({stop}): is a disk "
                                   f"attached to the LSI?")
        if not stop.done:
            raise LsiError(f"SCRIPTS at {dsp:#x} stopped unexpectedly: {stop}")
        return stop


def scsi_script(cb: int, cdb: bytes, data_gpa: Optional[int] = None, data_len: int = 0,
                data_in: bool = True, target: int = 0) -> bytes:
    """A SCRIPTS program, assembled for the command block page at ``cb``
    (boot RAM, below 4 GiB), that runs one SCSI command whose data phase
    moves ``data_len`` bytes at ``data_gpa`` (any 64-bit address) and
    stops with INT_DONE.  The CDB, message and status bytes live in the
    same page: write :func:`command_block` there too."""
    s = lsi_scripts.Script()
    # lsi_do_dma: DBMS supplies address bits 63:32 of data-phase moves.
    high = (data_gpa or 0) >> 32
    for i in range(4):
        s.load_register(lsi_regs.DBMS + i, (high >> (8 * i)) & 0xff)
    s.select(target, alt=s.ref('already_connected'))
    s.move(lsi_regs.PHASE_MSG_OUT, 1, cb + CB_MSGOUT)
    s.move(lsi_regs.PHASE_COMMAND, len(cdb), cb + CB_CDB)
    s.label('dispatch')
    s.jump(s.ref('status'), when=lsi_regs.PHASE_STATUS)
    s.jump(s.ref('msg_in'), when=lsi_regs.PHASE_MSG_IN)
    if data_len:
        s.jump(s.ref('data'),
               when=lsi_regs.PHASE_DATA_IN if data_in else lsi_regs.PHASE_DATA_OUT)
    s.int_(lsi_scripts.INT_BAD_PHASE)
    # The target disconnects while the block layer works and reselects us.
    s.label('msg_in')
    s.move(lsi_regs.PHASE_MSG_IN, 2, cb + CB_MSGIN)
    s.wait_reselect(alt=s.ref('reselect_aborted'))
    s.move(lsi_regs.PHASE_MSG_IN, 1, cb + CB_MSGIN + 2)
    s.jump(s.ref('dispatch'), when=lsi_regs.PHASE_MSG_IN, if_not=True)
    s.int_(lsi_scripts.INT_BAD_PHASE)
    s.label('data')
    if data_len:
        s.move(lsi_regs.PHASE_DATA_IN if data_in else lsi_regs.PHASE_DATA_OUT, data_len,
               data_gpa & 0xffffffff)
    s.jump(s.ref('dispatch'))
    s.label('status')
    s.move(lsi_regs.PHASE_STATUS, 1, cb + CB_STATUS)
    s.move(lsi_regs.PHASE_MSG_IN, 1, cb + CB_MSGIN + 4)
    s.int_(lsi_scripts.INT_DONE)
    s.label('reselect_aborted')
    s.int_(lsi_scripts.INT_RESELECT_ABORTED)
    s.label('already_connected')
    s.int_(lsi_scripts.INT_ALREADY_CONNECTED)
    code = s.assemble(cb + CB_SCRIPT)
    if len(code) > CB_CDB - CB_SCRIPT:
        raise ValueError(f"SCRIPTS of {len(code)} bytes overrun the CDB")
    return code


def command_block(cb_page: bytes, cdb: bytes) -> bytes:
    """``cb_page`` with the CDB, IDENTIFY and a 0xff status placeholder."""
    page = bytearray(cb_page)
    page[CB_CDB:CB_CDB + 16] = cdb.ljust(16, b'\0')
    page[CB_MSGOUT] = scsi.MSG_IDENTIFY
    page[CB_STATUS] = 0xff
    return bytes(page)


def rw10_cdb(write: bool, lba: int, blocks: int) -> bytes:
    return struct.pack('>BBIBHB', scsi.SCSI_WRITE_10 if write else scsi.SCSI_READ_10,
                       0, lba, 0, blocks, 0)


def rw10(mem_write: Callable[[int, bytes], object], mem_read: Callable[[int, int], bytes],
         start: Callable[[int], object], cb: int, write: bool, lba: int, gpa: int,
         length: int) -> int:
    """One READ(10)/WRITE(10) of ``length`` bytes between the disk and
    ``gpa``, with its command block page at ``cb``: the block and its
    SCRIPTS go in with ``mem_write``, ``start(cb)`` runs them to their stop,
    the status comes back with ``mem_read``.  A CHECK CONDITION (the UNIT
    ATTENTION a reset leaves, reported once) is retried once.  Returns the
    SCSI status byte."""
    cdb = rw10_cdb(write, lba, length // SECTOR_BYTES)
    for _ in range(2):
        mem_write(cb, command_block(bytes(PAGE_BYTES), cdb))
        mem_write(cb, scsi_script(cb, cdb, gpa, length, data_in=not write))
        start(cb)
        status = mem_read(cb + CB_STATUS, 1)[0]
        if status != scsi.STATUS_CHECK_CONDITION:
            break
    return status


def memory_move_script(base: int, moves, vector: int = lsi_scripts.INT_DONE) -> bytes:
    """MEMORY MOVEs [(src, dst, count)] (32-bit addresses) then INT."""
    s = lsi_scripts.Script()
    for src, dst, count in moves:
        s.memory_move(count, src, dst)
    s.int_(vector)
    return s.assemble(base)


def place_marked_pages(ssh: GuestSSH, ram: proxyram.MappedRam, count: int,
                       path: str = '/tmp/mpqemu-dma-pages',
                       require_all: bool = True) -> Dict[int, int]:
    """Make the guest own ``count`` pages of RAM (a tmpfs file) and find
    their guest physical addresses: {page index: gpa}.

    The pages travel over SSH with an incomplete marker and the guest
    completes it in place with a one-byte write, so that the socket and
    pipe buffers the upload went through never hold the full marker and
    only the page-cache pages match.  Without ``require_all``, the pages
    found in ``ram`` may be a subset (the rest are elsewhere in RAM).
    """
    nonce = os.urandom(8).hex().encode()
    marker = b'MPQEMU-DMA-' + nonce
    fix_at = marker.index(b'A-')
    draft = marker[:fix_at] + b'X' + marker[fix_at + 1:]
    ssh.write_bytes(path, b''.join(proxyram.marked_page(draft, i) for i in range(count)))
    ssh.run(f'i=0; while [ $i -lt {count} ]; do printf A | dd of={path} bs=1 '
            f'seek=$((i * {proxyram.PAGE_SIZE} + {fix_at})) count=1 conv=notrunc '
            f'2>/dev/null; i=$((i + 1)); done', check=True)
    found = ram.find_marked_pages(marker)
    missing = sorted(set(range(count)) - set(found))
    if missing and (require_all or not found):
        raise HarnessError(f"guest pages {missing} of {path} are not in the RAM at "
                           f"{ram.gpa:#x}..{ram.gpa + ram.size:#x} ({ram.path})")
    return found
