"""Run a host program the harness depends on, with a deadline and an error
that says which Debian package provides it."""

import subprocess
from typing import List, Type

from .errors import HarnessError

TOOL_TIMEOUT_S = 60


def run_tool(argv: List[str], fix: str, error: Type[HarnessError] = HarnessError,
             timeout_s: float = TOOL_TIMEOUT_S) -> str:
    """stdout of ``argv``; ``error`` naming ``fix`` (e.g. "apt-get install
    mtools") if the program is missing, or its stderr if it fails."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except FileNotFoundError:
        raise error(f"{argv[0]} not found: {fix}") from None
    except subprocess.TimeoutExpired:
        raise error(f"{' '.join(argv)} did not finish within {timeout_s} s") from None
    if proc.returncode != 0:
        raise error(f"{' '.join(argv)} failed (exit {proc.returncode}): "
                    f"{(proc.stderr or proc.stdout).strip()}")
    return proc.stdout
