"""Known upstream bugs as data: ``tests/known_issues/*.json``.

Each entry names the QEMU versions it affects, what was observed and what
was expected, the evidence, and a ``match`` that recognises it in a
result (so far: fuzzing outcomes).  A test that meets a known issue
reports it (a warning and the whiteboard) instead of failing; one that no
longer meets it where the entry says it should is flagged too, since the
entry may be out of date.

    {"id": "...", "title": "...",
     "qemu": {"min": "6.0", "fixed_in": null},
     "match": {"outcome": "crash", "signal": "SIGABRT",
               "log": "regex on the remote's log tail",
               "notes": "regex on the fuzz case's step notes"},
     "observed": "...", "expected": "...", "evidence": {...},
     "reproducer": "tests/fuzz/corpus/....json"}
"""

import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .errors import HarnessError
from .paths import REPO_DIR

DEFAULT_DIR = os.path.join(REPO_DIR, 'tests', 'known_issues')
MATCH_KEYS = ('outcome', 'signal', 'log', 'notes')


def parse_version(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split('.'))
    except ValueError:
        raise HarnessError(f"QEMU version {text!r} in a known issue is not like '7.2' or "
                           f"'10.0.1'") from None


@dataclass
class KnownIssue:
    id: str
    title: str
    qemu_min: Tuple[int, ...]
    fixed_in: Optional[Tuple[int, ...]]
    match: Dict[str, str]
    path: str
    data: dict = field(repr=False, default_factory=dict)

    def affects(self, version: Tuple[int, ...]) -> bool:
        """True if QEMU ``version`` is in [min, fixed_in)."""
        if tuple(version) < self.qemu_min:
            return False
        return self.fixed_in is None or tuple(version) < self.fixed_in

    def matches(self, result: Dict[str, str]) -> bool:
        """``result`` has the keys of MATCH_KEYS (missing ones are '')."""
        for key, wanted in self.match.items():
            value = str(result.get(key) or '')
            if key in ('log', 'notes'):
                if not re.search(wanted, value):
                    return False
            elif value != wanted:
                return False
        return True


def load(directory: str = DEFAULT_DIR) -> List[KnownIssue]:
    issues = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if not name.endswith('.json'):
            continue
        path = os.path.join(directory, name)
        with open(path, encoding='utf-8') as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as err:
                raise HarnessError(f"known issue {path} is not valid JSON: {err}") from None
        unknown = set(data.get('match', {})) - set(MATCH_KEYS)
        if unknown or not data.get('match'):
            raise HarnessError(f"known issue {path}: 'match' needs some of {MATCH_KEYS}, "
                               f"not {sorted(unknown)}")
        qemu = data.get('qemu', {})
        issues.append(KnownIssue(
            data['id'], data['title'], parse_version(qemu.get('min', '0')),
            parse_version(qemu['fixed_in']) if qemu.get('fixed_in') else None,
            data['match'], path, data))
    return issues


def lookup(issues: List[KnownIssue], result: Dict[str, str],
           version: Tuple[int, ...]) -> Optional[KnownIssue]:
    """The known issue that explains ``result`` on QEMU ``version``."""
    for issue in issues:
        if issue.affects(version) and issue.matches(result):
            return issue
    return None
