"""Exceptions the harness raises.  Each message names the cause and, where
there is one, the fix, so a failing test reads like an instruction."""


class HarnessError(Exception):
    """Base class of every error the harness raises on purpose."""


class Timeout(HarnessError):
    """A bounded wait ran out.  Every deadline in the harness raises a
    subclass."""


class ParameterError(HarnessError):
    """A test or environment parameter has a value the harness cannot use."""


class QEMUBinaryError(HarnessError):
    """The QEMU binary is missing, not executable, or lacks a feature."""


class AccelError(HarnessError):
    """The requested accelerator cannot run guests on this host."""


class LaunchError(HarnessError):
    """A QEMU process failed to start or to answer QMP in time."""


class QMPError(HarnessError):
    """A QMP command failed, timed out, or its process went away."""
