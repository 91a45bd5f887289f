"""Benchmarks of a remote device process, driven through the fake proxy.

    python -m harness.tools.bench --out build/bench

measures what every proxied guest access pays: a config space access and
a BAR (register) access round trip through the remote, and DMA throughput
of the remote's LSI 53C895A (READ(10)/WRITE(10) of a few MiB against a
raw image, byte-exact checked).  Each figure is reported with its median
and spread (min/p10/p90/max) over repeated runs, as ``bench.json`` and a
short Markdown table ``bench.md``.  These are figures, not asserts: a
noisy 2-core CI runner is not where to enforce a bound.

The in-process comparison (the same accesses to an LSI inside one QEMU,
through qtest) needs a QEMU with the qtest accelerator; Debian's 7.2 has
none, so the report says so instead of printing a ratio (issue 7).

The measurements are harness/devices/lsi_scenarios.py's, shared with
harness/tools/qtest_bench.py; the statistics are harness/base/figures.py's.
"""

import argparse
import os
import platform
import sys
import tempfile
from typing import Sequence

from . import qtest_bench
from ..base import bytecheck, params
from ..base.figures import write_report
from ..devices import lsi_scenarios
from ..devices.lsi import driver as lsi
from ..base.units import MIB
from ..mpqemu import fake_remote
from ..qemu import binary as qemu_binary

DEFAULT_RUNS = 5
DEFAULT_SAMPLES = 1000                  # accesses per latency run
DEFAULT_DMA_MIB = 8                     # per DMA run
IMAGE_SLACK_MIB = 8                     # image = DMA size + this
IN_PROCESS_NOTE = 'in-process comparison: needs a QEMU with qtest (issue 7)'


def run(caps: qemu_binary.Capabilities, workdir: str, runs: int = DEFAULT_RUNS,
        samples: int = DEFAULT_SAMPLES, dma_mib: int = DEFAULT_DMA_MIB) -> dict:
    """All benchmarks against one remote; returns the report."""
    dma_bytes = dma_mib * MIB
    image = bytecheck.write_random_image(os.path.join(workdir, 'bench-disk.raw'),
                                         dma_bytes + IMAGE_SLACK_MIB * MIB)
    with fake_remote.launch(caps, log_dir=workdir, drive=image,
                            ram_size=max(fake_remote.DEFAULT_RAM_SIZE, 2 * dma_bytes)) as remote:
        device = lsi.Lsi53c895a(remote.access)
        device.setup()
        figures = lsi_scenarios.measure_latency(device, runs, samples)
        figures.update(lsi_scenarios.measure_dma(device, image, runs, dma_bytes))
    return {
        'qemu': '.'.join(map(str, caps.version)), 'qemu_version_string': caps.version_string,
        'qemu_bin': caps.path,
        'host': {'machine': platform.machine(), 'cpus': os.cpu_count(),
                 'python': platform.python_version()},
        'tier': 'protocol (real remote, fake proxy, harness-owned guest RAM)',
        'runs': runs, 'samples_per_run': samples,
        'figures': figures,
        **_in_process_comparison(caps, workdir, runs, samples, dma_mib),
    }


def _in_process_comparison(caps, workdir: str, runs: int, samples: int, dma_mib: int) -> dict:
    """Proxied vs in-process through qtest (harness/tools/qtest_bench.py) when
    this QEMU has the qtest accelerator; else a note saying how to get one."""
    if not caps.has_qtest:
        return {'in_process': None,
                'in_process_note': IN_PROCESS_NOTE + ': this QEMU has none; '
                                   'run with QEMU_BIN=$(python -m harness.tools.qemu_build '
                                   'debian:bookworm)'}
    report = qtest_bench.compare(caps, workdir, runs, min(samples, 300), min(dma_mib, 4))
    return {'in_process': report, 'in_process_note': qtest_bench.markdown(report)}


def markdown(report: dict) -> str:
    lines = [f"# Remote device benchmarks (QEMU {report['qemu']}, "
             f"{report['host']['cpus']} CPUs)", '',
             f"Tier: {report['tier']}; {report['runs']} runs.", '',
             '| figure | unit | median | min | p10 | p90 | max | n |',
             '|---|---|---:|---:|---:|---:|---:|---:|']
    for name, f in report['figures'].items():
        lines.append(f"| {name} | {f['unit']} | {f['median']} | {f['min']} | {f['p10']} | "
                     f"{f['p90']} | {f['max']} | {f['n']} |")
    lines += ['', report['in_process_note'], '']
    return '\n'.join(lines)


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog='python -m harness.tools.bench', description=__doc__.split(
        '\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default=os.path.join('build', 'bench'),
                        help='directory for bench.json, bench.md and the remote log')
    parser.add_argument('--qemu-bin', default=None,
                        help='QEMU under test (default: $QEMU_BIN or qemu-system-x86_64)')
    parser.add_argument('--runs', type=int, default=DEFAULT_RUNS)
    parser.add_argument('--samples', type=int, default=DEFAULT_SAMPLES,
                        help='accesses per latency run')
    parser.add_argument('--dma-mib', type=int, default=DEFAULT_DMA_MIB,
                        help='MiB moved per DMA run (at most 8: one SCSI command)')
    args = parser.parse_args(list(argv) or None)
    if args.runs < 1 or args.samples < 1 or not 1 <= args.dma_mib <= 8:
        parser.error('--runs and --samples must be positive, --dma-mib 1..8')
    caps = qemu_binary.probe(args.qemu_bin or params.get('qemu_bin'))
    caps.require_multiprocess()
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='bench-', dir=args.out) as workdir:
        report = run(caps, workdir, args.runs, args.samples, args.dma_mib)
        # Keep the remote's log next to the figures; the image goes.
        for name in os.listdir(workdir):
            if name.endswith(('.log', '.cmdline')):
                os.replace(os.path.join(workdir, name), os.path.join(args.out, name))
    write_report(args.out, 'bench', report, markdown(report))
    print(f"written: {os.path.join(args.out, 'bench.json')}, {os.path.join(args.out, 'bench.md')}")
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
