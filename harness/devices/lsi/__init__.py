"""The LSI 53C895A SCSI controller QEMU emulates, in modules of one job each:

registers
    its PCI identity, BARs, register map and bit names (hw/scsi/lsi53c895a.c);
scripts
    a small assembler for SCRIPTS, the chip's own instruction set, the INT
    vectors our programs stop with, and :class:`~.scripts.Stop`, why a
    program stopped;
scsi
    the SCSI commands, status and message bytes spoken to the disk behind it;
errors
    what goes wrong driving it;
driver
    :class:`~.driver.Lsi53c895a`, which programs the device through a
    :class:`harness.devices.pci.DeviceAccess` and runs SCSI commands.
"""
