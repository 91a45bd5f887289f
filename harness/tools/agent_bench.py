"""Agent-tier figures (``make bench``): boot to agent-ready, interrupt
latency, and interrupt- against poll-completed SCSI, remote LSI against the
in-process control in the same run.

    python -m harness.tools.agent_bench --out build/bench [--boots 3] [--interrupts 1000]

Figures, not asserts: medians and spread (min/p10/median/p90/p99/max) and
remote/in-process ratios, in ``agent-bench.json`` and ``agent-bench.md``.
Latency is the guest's TSC from the start of the DSP write that starts a
one-instruction SCRIPTS ``INT`` to the entry of the guest's handler: the
proxy's MMIO exit, the message to the remote, the SCRIPTS, the irqfd (or
the in-process IRQ) and the injection.  Under the PVM flavour of KVM the
guest runs in KVM's instruction emulator (about a microsecond per guest
instruction), so absolute figures are not a VMX/SVM host's; the ratios
against the control are the comparable part.
"""

import argparse
import os
import sys
import tempfile
import time
from typing import Dict, List

from ..base import params
from ..base.figures import spread, time_calls, write_report
from ..devices.lsi import driver as lsi, registers as lsi_regs
from ..mpqemu import topology
from ..base.units import MIB
from ..qemu import accel as qemu_accel
from ..qemu import binary as qemu_binary
from ..agent.access import AgentAccess
from ..agent.lsi_intx import IntxSource
from ..agent.mailbox import Status
from ..agent.session import AgentSession

DEFAULT_BOOTS = 3
DEFAULT_INTERRUPTS = 1000
DEFAULT_OPS = 50
CYCLES_PER_BATCH = 150
IRQ_TIMEOUT_MS = 2000
DISK_MIB = 16
KINDS = ('remote', 'in-process')


def _boot(caps, accel, kind: str, workdir: str, disk: str):
    placement = topology.IN_PROCESS if kind == 'in-process' else topology.PROXY
    vm = topology.Machine(caps, workdir, placement=placement, accel=accel.name, cpu=accel.cpu)
    vm.add_lsi('lsi1', disk)
    session = AgentSession(workdir)
    return vm, session, session.boot(vm)


def _interrupts(access: AgentAccess, device: lsi.Lsi53c895a, count: int) -> Dict:
    source = IntxSource(access, device)
    latencies: List[float] = []
    started = time.monotonic()
    while len(latencies) < count:
        n = min(CYCLES_PER_BATCH, count - len(latencies))
        batch = [c for _ in range(n) for c in source.cycle(IRQ_TIMEOUT_MS)]
        access.agent.run(batch)
        for i in range(n):
            start, wait = batch[6 * i], batch[6 * i + 1]
            if wait.status != Status.OK:
                return {'error': f'no interrupt after {len(latencies)} (needs KVM for the '
                                 f'remote: known issue proxy-intx-needs-kvm)'}
            latencies.append(source.latency_s(start, wait))
    elapsed = time.monotonic() - started
    return {'latency_us': spread(latencies, 1e6), 'per_s': round(count / elapsed, 1)}


def _io(device: lsi.Lsi53c895a, ops: int) -> Dict:
    out = {}
    device.wait_ready()
    for mode in ('interrupt', 'polled'):
        device.use_irq = mode == 'interrupt'
        times = time_calls(lambda: device.read10(0, 8), ops)
        out[f'read_4k_{mode}'] = {'ops_per_s': round(len(times) / sum(times), 1),
                                  'ms': spread(times, 1e3, 2)}
    out['interrupt_over_polled'] = round(out['read_4k_interrupt']['ops_per_s']
                                         / out['read_4k_polled']['ops_per_s'], 3)
    return out


def run(caps, workdir: str, boots: int, interrupts: int, ops: int) -> Dict:
    accel = qemu_accel.select_accel(caps, params.get_accel(), 'agent')
    report = {'qemu': caps.version_string, 'accel': accel.name, 'accel_reason': accel.reason,
              'kinds': {}}
    disk = os.path.join(workdir, 'disk.raw')
    with open(disk, 'wb') as f:
        f.truncate(DISK_MIB * MIB)
    for kind in KINDS:
        ready = []
        figures: Dict = {}
        for boot in range(boots):
            vm, session, agent = _boot(caps, accel, kind, os.path.join(workdir, f'{kind}-{boot}'),
                                       disk)
            try:
                ready.append(session.ready_s)
                if boot == 0:
                    bdf = agent.find_device(lsi_regs.VENDOR_ID, lsi_regs.DEVICE_ID)
                    access = AgentAccess(agent, bdf, vm.memory_mb * MIB)
                    device = lsi.Lsi53c895a(access)
                    device.setup()
                    figures['interrupts'] = _interrupts(access, device, interrupts)
                    if 'error' not in figures['interrupts']:
                        figures['io'] = _io(device, ops)
                    figures['tsc_mhz'] = round(agent.tsc_hz / 1e6, 1)
            finally:
                session.close()
                vm.shutdown()
        figures['boot_to_ready_s'] = spread(ready, 1, 3)
        report['kinds'][kind] = figures
    remote, local = report['kinds']['remote'], report['kinds']['in-process']
    ratios = {'boot_to_ready': round(remote['boot_to_ready_s']['median']
                                     / local['boot_to_ready_s']['median'], 3)}
    if 'latency_us' in remote['interrupts'] and 'latency_us' in local['interrupts']:
        ratios['interrupt_latency'] = round(remote['interrupts']['latency_us']['median']
                                            / local['interrupts']['latency_us']['median'], 3)
        ratios['irq_read_4k_ops'] = round(remote['io']['read_4k_interrupt']['ops_per_s']
                                          / local['io']['read_4k_interrupt']['ops_per_s'], 3)
    report['remote_over_in_process'] = ratios
    return report


def markdown(report: Dict) -> str:
    def cell(d, unit):
        return (f"{d['median']} {unit} (p10 {d['p10']}, p90 {d['p90']}, p99 {d['p99']}, "
                f"max {d['max']}, n={d['n']})")
    lines = ['# Agent tier: remote LSI vs in-process', '',
             f"QEMU {report['qemu']}, accel {report['accel']} ({report['accel_reason']}).", '',
             'Under the PVM flavour of KVM the guest runs in KVM\'s instruction emulator: '
             'absolute figures are not a VMX/SVM host\'s; compare the ratios.', '',
             '| figure | remote | in-process |', '|---|---|---|']
    kinds = report['kinds']
    lines.append('| boot to agent ready | ' + ' | '.join(
        cell(kinds[k]['boot_to_ready_s'], 's') for k in KINDS) + ' |')
    lines.append('| interrupt latency (DSP write → handler) | ' + ' | '.join(
        cell(kinds[k]['interrupts']['latency_us'], 'µs') if 'latency_us'
        in kinds[k]['interrupts'] else kinds[k]['interrupts']['error'] for k in KINDS) + ' |')
    lines.append('| interrupts per second (cycle of 6 commands) | ' + ' | '.join(
        str(kinds[k]['interrupts'].get('per_s', '-')) for k in KINDS) + ' |')
    for mode in ('interrupt', 'polled'):
        lines.append(f'| READ(10) 4 KiB, {mode}-completed, ops/s | ' + ' | '.join(
            str(kinds[k]['io'][f'read_4k_{mode}']['ops_per_s']) if 'io' in kinds[k] else '-'
            for k in KINDS) + ' |')
    lines.append('| interrupt / polled ops | ' + ' | '.join(
        str(kinds[k]['io']['interrupt_over_polled']) if 'io' in kinds[k] else '-'
        for k in KINDS) + ' |')
    lines += ['', 'Remote / in-process: ' + ', '.join(
        f'{k} {v}' for k, v in report['remote_over_in_process'].items()), '']
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m harness.tools.agent_bench',
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default=os.path.join('build', 'bench'))
    parser.add_argument('--qemu-bin', default=None)
    parser.add_argument('--boots', type=int, default=DEFAULT_BOOTS)
    parser.add_argument('--interrupts', type=int, default=DEFAULT_INTERRUPTS)
    parser.add_argument('--ops', type=int, default=DEFAULT_OPS)
    args = parser.parse_args(argv)
    if min(args.boots, args.interrupts, args.ops) < 1:
        parser.error('--boots, --interrupts and --ops must be positive')
    caps = qemu_binary.probe(args.qemu_bin or params.get('qemu_bin'))
    caps.require_multiprocess()
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='agent-bench-', dir=args.out) as workdir:
        report = run(caps, workdir, args.boots, args.interrupts, args.ops)
    write_report(args.out, 'agent-bench', report, markdown(report))
    return 0


if __name__ == '__main__':
    sys.exit(main())
