"""Trace events in a QEMU process's log, with the time they happened.

With the ``log`` trace backend and ``-msg timestamp=on``, each event line
reads ``PID@SECONDS.MICROS:name args`` (scripts/tracetool/backend/log.py),
where the time is the wall clock (gettimeofday), comparable with the
harness's ``time.time()``.
"""

import re
from typing import List, Sequence

from .process import QEMUProcess

_LINE_RE = re.compile(r'^\d+@(\d+\.\d+):(\w+)(?: (.*))?$', re.MULTILINE)


def trace_args(*events: str) -> List[str]:
    """Arguments that trace ``events`` with wall-clock timestamps."""
    args = ['-msg', 'timestamp=on']
    for event in events:
        args += ['-trace', event]
    return args


def event_times(process: QEMUProcess, names: Sequence[str]) -> List[float]:
    """Wall-clock times of the logged events called any of ``names``."""
    try:
        with open(process.log_path, encoding='utf-8', errors='replace') as f:
            text = f.read()
    except OSError:
        return []
    return [float(t) for t, name, _ in _LINE_RE.findall(text) if name in names]
