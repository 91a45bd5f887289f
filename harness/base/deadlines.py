"""How long each kind of wait may take, and so how long a test may take.

One place for both, so that a harness deadline always expires well inside
the test's Avocado timeout and the failure is reported by the harness, with
its diagnosis, instead of as Avocado's bare "Test interrupted: Timeout
reached".

Two mechanisms:

* **Budgets**: the waits the harness makes (a QEMU launch, a boot to the
  ready marker and SSH, a guest command, teardown) have one constant each
  here, and :func:`test_timeout` derives a test's timeout from the waits
  it contains.  Figures are for TCG on a loaded two-core CI machine: a boot
  of ``lsi-boot`` from the remote LSI takes 11–13 s quiet, and reached 21 s
  under load (reset to SSH, issue 6).
* **A clock per test**: :func:`start_test` (called by the Avocado base
  class at the start of setUp) fixes when the test's own time runs out,
  less :data:`REPORT_RESERVE_S` (a third of a tiny timeout) for the
  diagnosis and the report; :func:`cap` shortens any harness wait that
  would run past it.  Avocado times setUp and the test method separately,
  each with the full timeout, so one clock started at setUp is always the
  earlier deadline.  Outside a test (pytest, command-line tools) nothing is
  capped.
"""

import logging
import time
from typing import Optional

LOG = logging.getLogger(__name__)

LAUNCH_S = 15.0            # one QEMU process to its QMP greeting
SHUTDOWN_S = 13.0          # one process's ladder: quit 5 s, SIGTERM 3 s, SIGKILL 5 s
BOOT_S = 60.0              # launch to the guest's ready marker (3x the worst seen)
SSH_LOGIN_S = 30.0         # marker to a first SSH session
AGENT_BOOT_S = 30.0        # launch to the agent's ready (4-5 s under PVM's emulator)
COMMAND_S = 30.0           # a guest command over SSH, unless it says otherwise
FAULT_S = 5.0              # a fault to be noticed (watchdog, events, traces)
SETUP_S = 20.0             # probe (cached), accelerator choice, image lookup
REPORT_RESERVE_S = 15.0    # diagnosis (vCPU sampling, /proc, QMP) and the report

_test_deadline: Optional[float] = None
_test_timeout: Optional[float] = None


def test_timeout(boots: int = 0, waits_s: float = 0.0, agent_boots: int = 0) -> float:
    """The Avocado timeout of a test that boots a Linux guest ``boots``
    times (launch, boot, login), the agent ``agent_boots`` times, and
    otherwise waits at most ``waits_s``."""
    return (SETUP_S + boots * (LAUNCH_S + BOOT_S + SSH_LOGIN_S)
            + agent_boots * (LAUNCH_S + AGENT_BOOT_S) + waits_s + REPORT_RESERVE_S)


def start_test(timeout_s: Optional[float]) -> None:
    """The running test has ``timeout_s`` from now (None: no limit)."""
    global _test_deadline, _test_timeout      # pylint: disable=global-statement
    _test_timeout = timeout_s
    # A test with a tiny timeout (a harness self-test) keeps most of it.
    reserve = min(REPORT_RESERVE_S, timeout_s / 3) if timeout_s else 0.0
    _test_deadline = (time.monotonic() + timeout_s - reserve) if timeout_s else None


def remaining() -> Optional[float]:
    """Seconds left before the harness must report, or None outside a test."""
    if _test_deadline is None:
        return None
    return max(0.0, _test_deadline - time.monotonic())


def cap(timeout_s: float, what: str = 'a wait') -> float:
    """``timeout_s``, or what is left of the test's time if that is less."""
    left = remaining()
    if left is None or left >= timeout_s:
        return timeout_s
    LOG.info("%s: %.0f s cut to %.1f s, what is left of the test's %.0f s timeout "
             "once the time to report is kept", what, timeout_s, left, _test_timeout)
    return left
