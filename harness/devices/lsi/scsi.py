"""The SCSI the harness speaks to QEMU's scsi-hd behind the LSI: command
opcodes, status and message bytes, and the INQUIRY data it reads back.

Opcodes and layouts as in QEMU's include/scsi/constants.h and
hw/scsi/scsi-disk.c.
"""

from dataclasses import dataclass

SCSI_TEST_UNIT_READY = 0x00
SCSI_REQUEST_SENSE = 0x03
SCSI_INQUIRY = 0x12
SCSI_READ_10 = 0x28
SCSI_WRITE_10 = 0x2a
CDB_FUA = 0x08               # WRITE(10) byte 1: write through to the medium

STATUS_GOOD = 0x00
STATUS_CHECK_CONDITION = 0x02
INQUIRY_STANDARD_LEN = 36
SENSE_FIXED_LEN = 18
MSG_IDENTIFY = 0x80


@dataclass
class Inquiry:
    peripheral_type: int
    vendor: str
    product: str
    revision: str
    raw: bytes

