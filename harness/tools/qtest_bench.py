"""What the multi-process split costs: the same accesses to an LSI 53C895A
through a real proxy and to one emulated inside the same QEMU, both driven
through qtest (no guest), and their ratio.

    python -m harness.tools.qtest_bench --qemu-src debian:bookworm --out build/bench

Config space and register (BAR) round trips, and READ(10)/WRITE(10) DMA
throughput, each as a median with its spread; ``ratio`` is proxied over
in-process (latency: how many times slower; DMA: the fraction of
in-process throughput kept).  Figures, not asserts: a 2-core runner shared
with other jobs is noisy.  :mod:`harness.tools.bench` includes this comparison in
its report when its QEMU has the qtest accelerator.
"""

import argparse
import os
import sys
import tempfile
from typing import Dict

from ..base import bytecheck, params
from ..base.figures import write_report
from ..devices import lsi_scenarios
from ..devices.lsi import driver as lsi
from ..mpqemu import topology
from ..base.units import MIB
from ..qemu import binary as qemu_binary
from ..qemu.qtest import launch_lsi

SLOT = 3
RAM_MB = 64
IMAGE_SLACK_MIB = 8


def measure_one(caps, workdir: str, control: bool, runs: int, samples: int,
                dma_mib: int) -> Dict[str, dict]:
    """Latency and DMA figures of one tier (proxied or in-process)."""
    dma_bytes = dma_mib * MIB
    name = 'in-process' if control else 'proxied'
    log_dir = os.path.join(workdir, name)
    image = bytecheck.write_random_image(os.path.join(workdir, f'{name}.raw'),
                                         dma_bytes + IMAGE_SLACK_MIB * MIB)
    placement = topology.IN_PROCESS if control else topology.PROXY
    with topology.Machine(caps, log_dir, placement=placement, accel='qtest', machine='pc',
                          memory_mb=RAM_MB) as vm:
        client, access = launch_lsi(vm, drive=image, slot=SLOT, ram_bytes=RAM_MB * MIB)
        try:
            device = lsi.Lsi53c895a(access)
            device.setup()
            figures = lsi_scenarios.measure_latency(device, runs, samples)
            figures.update(lsi_scenarios.measure_dma(device, image, runs, dma_bytes))
        finally:
            client.close()
    return figures


def compare(caps, workdir: str, runs: int = 3, samples: int = 300,
            dma_mib: int = 4) -> dict:
    """Both tiers and the ratio of their medians."""
    proxied = measure_one(caps, workdir, False, runs, samples, dma_mib)
    in_process = measure_one(caps, workdir, True, runs, samples, dma_mib)
    ratio = {name: round(proxied[name]['median'] / in_process[name]['median'], 2)
             for name in proxied if in_process[name]['median']}
    return {'qemu': caps.version_string, 'proxied': proxied, 'in_process': in_process,
            'ratio_proxied_over_in_process': ratio}


def markdown(report: dict) -> str:
    lines = ['## Proxied vs in-process (qtest, same QEMU)', '',
             '| figure | unit | proxied median | in-process median | ratio |',
             '|---|---|---:|---:|---:|']
    for name, ratio in report['ratio_proxied_over_in_process'].items():
        p, i = report['proxied'][name], report['in_process'][name]
        lines.append(f"| {name} | {p['unit']} | {p['median']} | {i['median']} | {ratio} |")
    return '\n'.join(lines + [''])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m harness.tools.qtest_bench',
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('--qemu-bin', help='QEMU with qtest (default $QEMU_BIN)')
    parser.add_argument('--qemu-src', help='or build one (a harness/qemu/source.py spec)')
    parser.add_argument('--out', default=os.path.join('build', 'bench'))
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--samples', type=int, default=300)
    parser.add_argument('--dma-mib', type=int, default=4)
    args = parser.parse_args(argv)
    if args.qemu_src:
        from ..qemu import build  # pylint: disable=import-outside-toplevel
        path = build.build(args.qemu_src, log=lambda m: print(m, file=sys.stderr)).binary
    else:
        path = args.qemu_bin or params.get('qemu_bin')
    caps = qemu_binary.probe(path)
    if not caps.has_qtest:
        print(f"error: {caps.path} has no qtest accelerator: pass --qemu-src debian:bookworm",
              file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='qtest-bench-', dir=args.out) as workdir:
        report = compare(caps, workdir, args.runs, args.samples, args.dma_mib)
    write_report(args.out, 'qtest-bench', report, markdown(report))
    return 0


if __name__ == '__main__':
    sys.exit(main())
