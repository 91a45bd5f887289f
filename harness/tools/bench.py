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

The timing helpers (:func:`time_calls`, :func:`spread`) are shared with
the functional scenarios, which record the same figures in their
whiteboards.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

from ..base import bytecheck, params
from ..devices import pci
from ..devices.lsi import driver as lsi, registers as lsi_regs
from ..mpqemu import fake_remote
from ..qemu import binary as qemu_binary

BLOCK_SIZE = 512
DEFAULT_RUNS = 5
DEFAULT_SAMPLES = 1000                  # accesses per latency run
DEFAULT_DMA_MIB = 8                     # per DMA run
IMAGE_SLACK_MIB = 8                     # image = DMA size + this
WARMUP_CALLS = 50
IN_PROCESS_NOTE = 'in-process comparison: needs a QEMU with qtest (issue 7)'


def time_calls(call: Callable[[], object], count: int) -> List[float]:
    """Seconds taken by each of ``count`` calls of ``call``."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ordered sequence."""
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def spread(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> Dict[str, float]:
    """Median and spread (min/p10/p90/p99/max) of ``values`` times ``scale``."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(v * scale for v in values)
    figures = {'min': ordered[0], 'p10': _percentile(ordered, 0.10),
               'median': statistics.median(ordered), 'p90': _percentile(ordered, 0.90),
               'p99': _percentile(ordered, 0.99), 'max': ordered[-1]}
    out = {k: round(v, digits) for k, v in figures.items()}
    out['n'] = len(ordered)
    return out


def write_report(out_dir: str, name: str, report: dict, table: str) -> None:
    """``NAME.json`` (the figures) and ``NAME.md`` (the table) in
    ``out_dir``; the table is printed too."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f'{name}.json'), 'w', encoding='utf-8') as f:
        json.dump(report, f, indent=2)
        f.write('\n')
    with open(os.path.join(out_dir, f'{name}.md'), 'w', encoding='utf-8') as f:
        f.write(table)
    print(table)


# ---------------------------------------------------------------- measurements

def latency_probes(remote: Optional[fake_remote.FakeProxiedRemote],
                   device: lsi.Lsi53c895a) -> Dict[str, Callable[[], object]]:
    """The proxied accesses whose round trip is measured, by name.  They go
    through ``device.access`` (the fake proxy's here, qtest's in
    harness/tools/qtest_bench.py); ``remote`` is not needed."""
    proxy = device.access
    mmio = device.function.bar(lsi_regs.MMIO_BAR).address
    io = device.function.bar(lsi_regs.IO_BAR).address
    return {
        'config_read': lambda: proxy.config_read(pci.VENDOR_ID, 4),
        'config_write': lambda: proxy.config_write(pci.INTERRUPT_LINE, 0x0b, 1),
        'bar_read_mmio': lambda: proxy.bar_read(mmio + lsi_regs.SCRATCHA, 4, True),
        'bar_write_mmio': lambda: proxy.bar_write(mmio + lsi_regs.SCRATCHA, 0x5a5a5a5a, 4, True),
        'bar_read_io': lambda: proxy.bar_read(io + lsi_regs.SCRATCHA, 4, False),
    }


def measure_latency(remote, device, runs: int, samples: int) -> Dict[str, dict]:
    """Round-trip latency in microseconds of each probe: the spread over
    all samples of all runs, plus each run's median."""
    results = {}
    for name, probe in latency_probes(remote, device).items():
        time_calls(probe, WARMUP_CALLS)
        all_times, run_medians = [], []
        for _ in range(runs):
            times = time_calls(probe, samples)
            all_times += times
            run_medians.append(round(statistics.median(times) * 1e6, 1))
        results[name] = dict(spread(all_times, 1e6), unit='us', run_medians=run_medians)
    return results


def measure_dma(device: lsi.Lsi53c895a, image: str, runs: int,
                length: int) -> Dict[str, dict]:
    """READ(10) and WRITE(10) throughput in MB/s (10^6 bytes per second),
    one figure per run; every run's data is checked byte for byte."""
    blocks = length // BLOCK_SIZE
    memory = device.access
    buf = memory.dma_alloc(length, 4096)
    reads, writes = [], []
    try:
        device.wait_ready()
        expected = bytecheck.read_image(image, 0, length)
        for run in range(runs):
            memory.mem_write(buf, b'\0' * length)
            started = time.perf_counter()
            device.read10_to(buf, 0, blocks)
            reads.append(length / (time.perf_counter() - started) / 1e6)
            bytecheck.assert_same_bytes(memory.mem_read(buf, length), expected,
                                        f'READ(10) run {run}')
        for run in range(runs):
            payload = os.urandom(length)
            memory.mem_write(buf, payload)
            started = time.perf_counter()
            device.write10_from(buf, 0, blocks)
            writes.append(length / (time.perf_counter() - started) / 1e6)
            bytecheck.assert_same_bytes(bytecheck.read_image(image, 0, length), payload,
                                        f'image after WRITE(10) run {run}')
    finally:
        memory.dma_free(buf)
    return {'dma_read': dict(spread(reads), unit='MB/s', bytes=length),
            'dma_write': dict(spread(writes), unit='MB/s', bytes=length)}


def run(caps: qemu_binary.Capabilities, workdir: str, runs: int = DEFAULT_RUNS,
        samples: int = DEFAULT_SAMPLES, dma_mib: int = DEFAULT_DMA_MIB) -> dict:
    """All benchmarks against one remote; returns the report."""
    dma_bytes = dma_mib << 20
    image = bytecheck.write_random_image(os.path.join(workdir, 'bench-disk.raw'),
                                         dma_bytes + (IMAGE_SLACK_MIB << 20))
    with fake_remote.launch(caps, log_dir=workdir, drive=image,
                            ram_size=max(fake_remote.DEFAULT_RAM_SIZE, 2 * dma_bytes)) as remote:
        device = lsi.Lsi53c895a(remote.access)
        device.setup()
        figures = measure_latency(remote, device, runs, samples)
        figures.update(measure_dma(device, image, runs, dma_bytes))
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
    from . import qtest_bench  # pylint: disable=import-outside-toplevel
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
