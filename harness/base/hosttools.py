"""Run a short host command (a tool, or QEMU answering a question) with a
deadline, and turn every way it can fail into one error that names it."""

import shlex
import subprocess
from typing import Dict, List, Optional, Sequence, Type

from .errors import HarnessError
from . import lifeline

TOOL_TIMEOUT_S = 60
ERROR_TAIL_CHARS = 2000


def run_tool(argv: Sequence[str], fix: str = '', error: Type[HarnessError] = HarnessError,
             timeout_s: float = TOOL_TIMEOUT_S, cwd: Optional[str] = None,
             env: Optional[Dict[str, str]] = None, what: str = '') -> str:
    """stdout of ``argv``.  Raises ``error``: naming ``fix`` (e.g.
    "apt-get install mtools") if the program is missing, saying so if it
    overran ``timeout_s``, with its stderr if it failed.  ``what`` names
    the step in messages instead of the command line."""
    argv: List[str] = list(argv)
    what = what or shlex.join(argv)
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout_s,
                              check=False, preexec_fn=lifeline.preexec())
    except FileNotFoundError:
        raise error(f"{argv[0]} not found" + (f": {fix}" if fix else '')) from None
    except subprocess.TimeoutExpired:
        raise error(f"{what}: no result within {timeout_s:.0f} s") from None
    except OSError as err:
        raise error(f"{what}: cannot run {argv[0]}: {err}") from None
    if proc.returncode != 0:
        raise error(f"{what} failed (exit {proc.returncode}): "
                    f"{(proc.stderr or proc.stdout).strip()[-ERROR_TAIL_CHARS:]}")
    return proc.stdout
