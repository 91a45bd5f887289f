"""Why a guest did not come up: the evidence, and the likeliest cause first.

A boot that misses its deadline looks the same from the console whatever
went wrong: an empty ``console.log`` may mean that the firmware found no
disk, that the remote serving the boot disk is stopped, or that the proxy's
vCPU waits for a reply that never comes.  :func:`boot_failure` gathers what
tells them apart:

- how far the firmware got: SeaBIOS's debug console (isa-debugcon, port
  0x402) captured in ``firmware.log`` next to ``console.log``;
- the console's last lines;
- the guest's run state (``query-status``), if the proxy's QMP answers;
- for the proxy and each remote: alive, stopped or exited; where its
  threads wait (harness/qemu/waits.py: e.g. a vCPU in ``recvmsg`` on the
  socket to remote-lsi1); its last log lines;
- where each vCPU is in the guest (harness/qemu/vcpus.py), when asking
  cannot wedge the monitor (no vCPU waits on a device);

and names a cause from them, the most specific first.
"""

import dataclasses
import time
from typing import List, Optional

from ..base.errors import QMPError
from ..qemu import vcpus, waits
from ..qemu.process import QEMUProcess

FIRMWARE_TAIL_LINES = 8
CONSOLE_TAIL_LINES = 12
LOG_TAIL_LINES = 4
# A vCPU caught once in recvmsg may be in the middle of a normal device
# access; one still there in every sample waits for a reply.
WAIT_SAMPLES = 3
WAIT_SAMPLE_INTERVAL_S = 0.2
QMP_TIMEOUT_S = 2.0


@dataclasses.dataclass
class Diagnosis:
    cause: str
    evidence: List[str]

    def __str__(self) -> str:
        return self.cause + ''.join(f'\n  {line}' for line in self.evidence)


def _tail(text: str, lines: int) -> List[str]:
    return [line for line in text.replace('\r', '').splitlines() if line.strip()][-lines:]


def _steady_peer_waits(process: QEMUProcess) -> List[waits.ThreadWait]:
    """Threads of ``process`` found reading a known peer's socket in every
    one of a few samples: waiting for a reply, not passing through."""
    steady = None
    for sample in range(WAIT_SAMPLES):
        if sample:
            time.sleep(WAIT_SAMPLE_INTERVAL_S)
        now = {w.tid: w for w in waits.awaited_peers(process.waits())}
        steady = now if steady is None else {t: w for t, w in now.items() if t in steady}
    return list((steady or {}).values())


def _run_state(proxy: QEMUProcess) -> Optional[str]:
    try:
        return proxy.qmp('query-status', timeout_s=QMP_TIMEOUT_S)['status']
    except QMPError:
        return None


def _firmware_cause(firmware: List[str], console: List[str]) -> Optional[str]:
    if any('No bootable device' in line for line in firmware):
        tried = [line for line in firmware if line.startswith('Boot failed')]
        return ("the firmware found no bootable disk"
                + (f" ({'; '.join(dict.fromkeys(tried))})" if tried else ''))
    if console:
        return None
    if not firmware:
        return ("nothing ran: the firmware printed nothing to its debug console "
                "(did the vCPU start? see the accelerator and the proxy's log)")
    last = firmware[-1]
    if last.startswith('Booting from'):
        return (f"the firmware handed over ({last!r}) and then the guest printed "
                f"nothing on its serial console")
    return f"the firmware stopped after {last!r}, before handing over to a boot loader"


def boot_failure(vm, session, error: Exception) -> Diagnosis:
    """Diagnose ``error`` (a console or SSH wait of ``session`` that
    failed) in machine ``vm`` (harness/mpqemu/topology.py)."""
    proxy = vm.qemu
    remotes = [r.process for r in vm.remotes() if r.process]
    evidence = [f'error: {str(error).splitlines()[0]}']
    causes: List[str] = []

    if not proxy.is_running():
        causes.append(f"the guest's QEMU ({proxy.name}) {proxy.state_description()}")
    for remote in remotes:
        state = remote.state_description()
        if state != 'running':
            causes.append(f"{remote.name} is {state}" if state.startswith('stopped')
                          else f"{remote.name} {state}")
    peer_waits = _steady_peer_waits(proxy) if proxy.is_running() else []
    for wait in peer_waits:
        who = 'main thread' if wait.main else wait.name
        causes.append(f"the proxy's {who} waits for a reply on {wait.fd_role}")

    status = _run_state(proxy) if proxy.is_running() else None
    if proxy.is_running():
        evidence.append(f'query-status: {status or "no answer"}')
        if status is None and not peer_waits:
            causes.append(f"the proxy's monitor does not answer "
                          f"({waits.describe(proxy.waits())})")
        elif status not in (None, 'running'):
            causes.append(f"the guest is not running: its state is {status!r}")

    firmware = _tail(session.firmware.text(), FIRMWARE_TAIL_LINES)
    console = _tail(session.console.text(), CONSOLE_TAIL_LINES)
    firmware_cause = _firmware_cause(firmware, console)
    if firmware_cause and (not causes or 'no bootable disk' in firmware_cause):
        causes.append(firmware_cause)
    elif not causes:
        marker = session.ready_marker
        reached = marker and marker in session.console.text()
        causes.append("the guest reached its ready marker but SSH did not answer"
                      if reached else
                      f"the guest started but did not reach its ready marker "
                      f"(last console line: {console[-1]!r})")

    if status == 'running' and not peer_waits:
        # HMP "info registers" stops each vCPU: never while one waits on a device.
        try:
            evidence.append(f'vCPUs: {vcpus.describe(vcpus.snapshot(proxy))}')
        except QMPError as err:
            evidence.append(f'vCPUs: unknown ({err})')
    evidence.append(f'firmware ({session.firmware.path}), last lines:')
    evidence += [f'  {line}' for line in firmware] or ['  (nothing)']
    if session.console.path != session.firmware.path:
        evidence.append(f'console ({session.console.path}), last lines:')
        evidence += [f'  {line}' for line in console] or ['  (nothing)']
    for process in [proxy] + remotes:
        evidence.append(f'{process.name} (pid {process.pid}): {process.state_description()}; '
                        f'{waits.describe(process.waits()) if process.is_running() else "-"}')
        evidence += [f'  {line}' for line in _tail(process.log_tail(), LOG_TAIL_LINES)]
    return Diagnosis('; '.join(causes), evidence)
