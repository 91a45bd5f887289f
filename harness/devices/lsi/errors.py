"""What goes wrong driving an LSI 53C895A: SCRIPTS that stop in the wrong
place or not at all, an absent target, a failed SCSI command.

Shared by every driver of the chip (harness.devices.lsi.driver over a
device access, harness.guest.lsi_dma from inside the guest, the agent's
interrupt source).
"""

from ...base.errors import HarnessError, Timeout


class LsiError(HarnessError):
    """The controller stopped somewhere other than where SCRIPTS said."""


class LsiTimeout(LsiError, Timeout):
    """SCRIPTS did not finish within the deadline."""


class SelectionTimeout(LsiError, Timeout):
    """No target answered the selection (SIST1.STO)."""


class ScsiError(LsiError):
    """The target completed the command with a status other than GOOD."""

    def __init__(self, message: str, status: int, sense: bytes = b''):
        super().__init__(message)
        self.status = status
        self.sense = sense
