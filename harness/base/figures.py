"""Figures, not asserts: timing calls, the median and spread of samples,
and the report (JSON and a Markdown table) every benchmark writes.

Shared by the benchmarks of harness/tools, the LSI measurements of
harness/devices/lsi_scenarios.py, the guest disk benchmark and the tests
that record the same figures in their whiteboards.
"""

import json
import os
import statistics
import time
from typing import Callable, Dict, List, Sequence


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
