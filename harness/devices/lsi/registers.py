"""The LSI 53C895A's PCI identity, BARs and register map, as QEMU emulates it.

Names and offsets as in hw/scsi/lsi53c895a.c (and the 53C895A manual).
Emulation details the drivers rely on:
  - register BARs (0: I/O, 1: MMIO) only take 1-byte accesses; QEMU splits
    wider ones, little endian, so a 4-byte write of DSP is one round trip;
  - writing DSP[31:24] starts SCRIPTS when DMODE.MAN is clear;
  - reading DSTAT, SIST0 or SIST1 clears it and re-evaluates the IRQ;
  - the bus "phase" reads as DATA OUT (0) once disconnected.
"""

from typing import Dict

VENDOR_ID = 0x1000          # PCI_VENDOR_ID_LSI_LOGIC
DEVICE_ID = 0x0012          # PCI_DEVICE_ID_LSI_53C895A
IO_BAR = 0                  # 256 bytes of registers in I/O space
MMIO_BAR = 1                # the same registers, 1 KiB memory BAR
SCRIPT_RAM_BAR = 2          # 8 KiB of on-chip SCRIPTS RAM
SCRIPT_RAM_SIZE = 0x2000
# BAR index -> size, as QEMU's lsi53c895a registers them (and a proxy
# learns them from its remote).
BAR_SIZES = {IO_BAR: 0x100, MMIO_BAR: 0x400, SCRIPT_RAM_BAR: SCRIPT_RAM_SIZE}

# ---------------------------------------------------------------- registers

SCNTL0 = 0x00
SCNTL1 = 0x01
SCNTL2 = 0x02
SCNTL3 = 0x03
SCID = 0x04
SXFER = 0x05
SDID = 0x06
GPREG = 0x07
SFBR = 0x08
SOCL = 0x09
SSID = 0x0a
SBCL = 0x0b
DSTAT = 0x0c
SSTAT0 = 0x0d
SSTAT1 = 0x0e
SSTAT2 = 0x0f
DSA = 0x10
ISTAT0 = 0x14
ISTAT1 = 0x15
MBOX0 = 0x16
MBOX1 = 0x17
CTEST0 = 0x18
CTEST1 = 0x19
CTEST2 = 0x1a
CTEST3 = 0x1b
TEMP = 0x1c
DFIFO = 0x20
CTEST4 = 0x21
CTEST5 = 0x22
CTEST6 = 0x23
DBC = 0x24                  # 24 bits
DCMD = 0x27
DNAD = 0x28
DSP = 0x2c
DSPS = 0x30
SCRATCHA = 0x34
DMODE = 0x38
DIEN = 0x39
SBR = 0x3a
DCNTL = 0x3b
ADDER = 0x3c
SIEN0 = 0x40
SIEN1 = 0x41
SIST0 = 0x42
SIST1 = 0x43
SLPAR = 0x44
MACNTL = 0x46
GPCNTL0 = 0x47
STIME0 = 0x48
STIME1 = 0x49
RESPID0 = 0x4a
RESPID1 = 0x4b
STEST0 = 0x4c
STEST1 = 0x4d
STEST2 = 0x4e
STEST3 = 0x4f
SIDL = 0x50
STEST4 = 0x52
SODL = 0x54
CCNTL0 = 0x56
CCNTL1 = 0x57
SBDL = 0x58
SCRATCHB = 0x5c             # SCRATCHC..R follow, 4 bytes each
MMRS = 0xa0
MMWS = 0xa4
SFS = 0xa8
DRS = 0xac
SBMS = 0xb0
DBMS = 0xb4
DNAD64 = 0xb8
PMJAD1 = 0xc0
PMJAD2 = 0xc4
RBC = 0xc8
UA = 0xcc
IA = 0xd4
SBC = 0xd8
CSBC = 0xdc
REGISTER_SPACE_SIZE = 0x100

REGISTER_NAMES: Dict[int, str] = {
    value: name for name, value in globals().items()
    if name.isupper() and isinstance(value, int) and name not in (
        'VENDOR_ID', 'DEVICE_ID', 'IO_BAR', 'MMIO_BAR', 'SCRIPT_RAM_BAR', 'SCRIPT_RAM_SIZE',
        'REGISTER_SPACE_SIZE')
}

ISTAT0_DIP = 0x01           # DMA interrupt pending (DSTAT)
ISTAT0_SIP = 0x02           # SCSI interrupt pending (SIST0/1)
ISTAT0_INTF = 0x04
ISTAT0_CON = 0x08
ISTAT0_SEM = 0x10
ISTAT0_SIGP = 0x20
ISTAT0_SRST = 0x40          # software reset
ISTAT0_ABRT = 0x80

ISTAT1_SRUN = 0x02          # SCRIPTS running

DSTAT_IID = 0x01            # illegal instruction
DSTAT_SIR = 0x04            # SCRIPTS INT instruction
DSTAT_SSI = 0x08
DSTAT_ABRT = 0x10
DSTAT_BF = 0x20
DSTAT_MDPE = 0x40
DSTAT_DFE = 0x80            # DMA FIFO empty: QEMU always sets it on read

SIST0_PAR = 0x01
SIST0_RST = 0x02
SIST0_UDC = 0x04            # unexpected disconnect (QEMU: 10000-insn loop guard)
SIST0_SGE = 0x08
SIST0_RSL = 0x10
SIST0_SEL = 0x20
SIST0_CMP = 0x40
SIST0_MA = 0x80             # phase mismatch
SIST1_HTH = 0x01
SIST1_GEN = 0x02
SIST1_STO = 0x04            # selection timeout: no such target

DMODE_MAN = 0x01            # manual start: writing DSP does not start SCRIPTS
SCNTL1_RST = 0x08

# SCSI bus phases (SSTAT1[2:0], and bits 26:24 of phase-checking SCRIPTS)
PHASE_DATA_OUT = 0
PHASE_DATA_IN = 1
PHASE_COMMAND = 2
PHASE_STATUS = 3
PHASE_MSG_OUT = 6
PHASE_MSG_IN = 7
