"""The report's plots: one PNG per figure of interest, bars with spread.

A ``Plot`` names the whiteboard figures it shows (fnmatch patterns over
the names harness/report/results.py flattens: ``diskio.*.read.mb_s``).  A
bar is one test and one figure, pooled over the report's jobs:

- its length is the median of what the test recorded, a spread's median
  when the test recorded one (``{'median', 'p10', 'p90', 'n', ...}``);
- its whisker covers the widest of the recorded spreads (p10–p90, else
  min–max) and the values' own range across the jobs;
- its label says how many samples stand behind it, its colour the
  transport (x-pci-proxy-dev, vfio-user, or the in-process control).

``ratios()`` puts each scenario's remote figures over its in-process
control of the same job: the price of moving the device out, 1.0 being
none.  Drawn with matplotlib's Agg backend (no display needed).
"""

import dataclasses
import fnmatch
import os
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

from ..mpqemu.topology import IN_PROCESS, PROXY, VFIO_USER
from . import scenarios
from .results import Job

LOG_SCALE_SPAN = 50             # whiskers spanning more than this factor: log axis
COLOURS = {PROXY: '#4c72b0', VFIO_USER: '#dd8452', IN_PROCESS: '#55a868'}
TRANSPORT_NAMES = {PROXY: 'x-pci-proxy-dev', VFIO_USER: 'vfio-user',
                   IN_PROCESS: 'in-process (control)'}
# A spread's keys (harness/base/figures.py spread()), in preference order.
LOW_KEYS, HIGH_KEYS = ('p10', 'min'), ('p90', 'max')


@dataclasses.dataclass(frozen=True)
class Plot:
    name: str                   # the PNG's file name, without .png
    title: str
    unit: str
    figures: Tuple[str, ...]    # fnmatch patterns over figure names
    top: Optional[int] = None   # only the biggest bars


PLOTS = (
    Plot('test-durations', 'The slowest tests', 's', ('time_s',), top=30),
    Plot('boot-to-ssh', 'Boot to SSH (QEMU started to SSH login)', 's',
         ('boot_to_ssh_s', 'reset_to_ssh_s')),
    Plot('detection-latency', 'Remote fault noticed by the watchdog', 'ms',
         ('detect_*_ms', 'kill_detect_ms')),
    Plot('interrupt-latency', "LSI interrupt to the agent's handler", 'µs',
         ('interrupt_latency_us',)),
    Plot('io-throughput', 'Disk and DMA throughput', 'MB/s',
         ('diskio.*.mb_s', 'dma_*_mb_s', 'dma_*_MBps')),
    Plot('io-rate', 'SCSI READ(10) of 4 KiB, commands per second', 'ops/s',
         ('read_4k_*_ops_per_s',)),
    Plot('device-access', 'One device access from the guest', 'µs',
         ('bar_*_us', 'config_*_us')),
)
RATIOS = Plot('remote-vs-in-process', 'Remote over in-process, same scenario and job',
              '× the in-process control',
              ('boot_to_ssh_s', 'interrupt_latency_us', 'read_4k_*_ops_per_s',
               'diskio.*.mb_s', 'bar_*_us', 'config_*_us'))


@dataclasses.dataclass
class Sample:
    value: float
    low: float
    high: float
    n: int


@dataclasses.dataclass
class Bar:
    label: str
    transport: str
    value: float
    low: float
    high: float
    n: int


def figure_names(figures: Dict[str, float]) -> List[str]:
    """The figures of one test: plain numbers, and spreads by their name
    (``x`` for ``x.median``, ``x.p90``, ...)."""
    names = {name for name in figures if not name.endswith(tuple(
        f'.{k}' for k in ('median', 'min', 'max', 'p10', 'p90', 'p99', 'n')))}
    names |= {name[:-len('.median')] for name in figures if name.endswith('.median')}
    return sorted(names)


def sample(figures: Dict[str, float], name: str) -> Optional[Sample]:
    if name in figures:
        value = float(figures[name])
        return Sample(value, value, value, 1)
    median = figures.get(f'{name}.median')
    if median is None:
        return None
    low = next((figures[f'{name}.{k}'] for k in LOW_KEYS if f'{name}.{k}' in figures), median)
    high = next((figures[f'{name}.{k}'] for k in HIGH_KEYS if f'{name}.{k}' in figures), median)
    return Sample(float(median), float(low), float(high), int(figures.get(f'{name}.n', 1)))


def pool(samples: Sequence[Sample]) -> Sample:
    """Samples of one test and figure from several jobs as one."""
    if len(samples) == 1:
        return samples[0]
    values = [s.value for s in samples]
    return Sample(statistics.median(values), min(values + [s.low for s in samples]),
                  max(values + [s.high for s in samples]), sum(s.n for s in samples))


def matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def short_test(name: str) -> str:
    """``tests/functional/test_x.py:Class.test_y`` → ``Class.test_y``."""
    _, cls, method = scenarios.split_name(name)
    return f'{cls}.{method}'


def bars(jobs: Sequence[Job], plot: Plot) -> List[Bar]:
    """The plot's bars, grouped by figure, then by test."""
    found: Dict[Tuple[str, str], List[Sample]] = {}
    transports: Dict[str, str] = {}
    for job in jobs:
        for name, test in job.tests.items():
            for figure in figure_names(test['figures']):
                if matches(figure, plot.figures):
                    found.setdefault((figure, name), []).append(
                        sample(test['figures'], figure))
                    transports[name] = scenarios.transport(test['tags'])
    out = []
    for (figure, name), samples in sorted(found.items()):
        pooled = pool(samples)
        out.append(Bar(f'{short_test(name)}  {figure}', transports[name], pooled.value,
                       pooled.low, pooled.high, pooled.n))
    if plot.top:
        out = sorted(out, key=lambda b: -b.value)[:plot.top]
    return out


def ratios(jobs: Sequence[Job], plot: Plot = RATIOS) -> List[Bar]:
    """Per scenario and figure, each remote transport's value over the
    in-process control's, job by job, pooled over the jobs."""
    found: Dict[Tuple[str, str, str], List[float]] = {}
    for job in jobs:
        by_scenario: Dict[Tuple[str, str], Dict[str, float]] = {}
        for name, test in job.tests.items():
            for figure in figure_names(test['figures']):
                if matches(figure, plot.figures):
                    key = (scenarios.scenario(name), figure)
                    by_scenario.setdefault(key, {})[scenarios.transport(test['tags'])] = \
                        sample(test['figures'], figure).value
        for (scenario, figure), values in by_scenario.items():
            control = values.get(IN_PROCESS)
            for transport in (PROXY, VFIO_USER):
                if control and transport in values:
                    found.setdefault((scenario, figure, transport), []).append(
                        values[transport] / control)
    out = []
    for (scenario, figure, transport), values in sorted(found.items()):
        value = statistics.median(values)
        out.append(Bar(f"{scenario.split(':', 1)[-1]}  {figure}", transport, value,
                       min(values), max(values), len(values)))
    return out


def draw(plot: Plot, plotted: Sequence[Bar], path: str, reference: Optional[float] = None) -> None:
    """One horizontal bar chart of ``plotted`` into the PNG ``path``."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot
    from matplotlib.patches import Patch

    height = 1.2 + 0.3 * len(plotted)
    figure, axes = pyplot.subplots(figsize=(10, height))
    rows = list(range(len(plotted)))
    axes.barh(rows, [b.value for b in plotted], color=[COLOURS[b.transport] for b in plotted],
              xerr=[[b.value - b.low for b in plotted], [b.high - b.value for b in plotted]],
              capsize=2, error_kw={'elinewidth': 0.8})
    axes.set_yticks(rows, [b.label for b in plotted], fontsize=7)
    axes.invert_yaxis()
    lowest = min((b.low for b in plotted if b.low > 0), default=0)
    if lowest and max(b.high for b in plotted) / lowest > LOG_SCALE_SPAN:
        axes.set_xscale('log')
    for row, bar in zip(rows, plotted):
        axes.annotate(f' {bar.value:.4g}  n={bar.n}', (max(bar.high, bar.value), row),
                      va='center', fontsize=6)
    if reference is not None:
        axes.axvline(reference, color='grey', linewidth=0.8, linestyle='--')
    axes.margins(x=0.12)                # room for the labels past the whiskers
    axes.set_xlabel(plot.unit)
    axes.set_title(plot.title, fontsize=10)
    shown = [t for t in (PROXY, VFIO_USER, IN_PROCESS) if any(b.transport == t for b in plotted)]
    axes.legend(handles=[Patch(color=COLOURS[t], label=TRANSPORT_NAMES[t]) for t in shown],
                fontsize=7, loc='lower right')
    figure.tight_layout()
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    figure.savefig(path, dpi=96)
    pyplot.close(figure)


def draw_all(jobs: Sequence[Job], out_dir: str) -> List[Tuple[Plot, Optional[str]]]:
    """Every plot of ``PLOTS`` and the ratios into ``out_dir``: (plot, the
    PNG's path, or None where no test of these jobs recorded its figures)."""
    drawn = []
    for plot, plotted, reference in ([(p, bars(jobs, p), None) for p in PLOTS]
                                     + [(RATIOS, ratios(jobs), 1.0)]):
        path = None
        if plotted:
            path = os.path.join(out_dir, f'{plot.name}.png')
            draw(plot, plotted, path, reference)
        drawn.append((plot, path))
    return drawn
