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

import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .errors import HarnessError
from .paths import REPO_DIR

DEFAULT_DIR = os.path.join(REPO_DIR, 'tests', 'known_issues')
MATCH_KEYS = ('outcome', 'signal', 'log', 'notes', 'error', 'transport')
# Conditions besides the version under which an entry applies ("when").
WHEN_KEYS = ('accel',)


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
            if key in ('log', 'notes', 'error'):
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


# ---------------------------------------------------------------- test guards
#
# Entries a test names (``MultiprocessTest.known_issue_guard('id')``) or that
# list the test in "tests" (fnmatch patterns on the Avocado test name, e.g.
# "*test_qtest.py:*") may also carry
#     "when": {"accel": ["tcg", "qtest"]}      extra conditions
#     "match": {"error": "regex on 'ExceptionType: message'"}
# A guarded block that fails the way the entry says is reported as the known
# issue (Avocado CANCEL whose reason starts with KNOWN_ISSUE_PREFIX); one that
# passes where the entry applies is flagged "fixed upstream?" (WARN).

KNOWN_ISSUE_PREFIX = 'KNOWN ISSUE'
FIXED_PREFIX = 'FIXED UPSTREAM?'


def by_id(issue_id: str, issues: Optional[List[KnownIssue]] = None) -> KnownIssue:
    for issue in load() if issues is None else issues:
        if issue.id == issue_id:
            return issue
    raise HarnessError(f"no known issue {issue_id!r} in {DEFAULT_DIR}: add "
                       f"tests/known_issues/{issue_id}.json or fix the name")


def applies(issue: KnownIssue, version: Tuple[int, ...], **context: str) -> bool:
    """True if ``issue`` is expected on QEMU ``version`` under ``context``
    (e.g. accel='tcg'): the version range and every "when" condition hold."""
    if not issue.affects(version):
        return False
    for key, allowed in issue.data.get('when', {}).items():
        if key not in WHEN_KEYS:
            raise HarnessError(f"known issue {issue.path}: 'when' knows {WHEN_KEYS}, "
                               f"not {key!r}")
        if key in context and str(context[key]) not in allowed:
            return False
    return True


def _without_variant(test_name: str) -> str:
    """``1-tests/x.py:A.b;run-accel-tcg-1a2b`` -> ``1-tests/x.py:A.b``: the
    patterns name tests, whichever variant of a job runs them."""
    return test_name.split(';', 1)[0]


def for_test(test_name: str, issues: Optional[List[KnownIssue]] = None) -> List[KnownIssue]:
    """Entries whose "tests" patterns match an Avocado test name."""
    test_name = _without_variant(test_name)
    return [issue for issue in (load() if issues is None else issues)
            if any(fnmatch.fnmatch(test_name, pattern) for pattern in issue.data.get('tests', [])
                   if any(ch in pattern for ch in '*?:.'))]


def covers(issue: KnownIssue, test_name: str) -> bool:
    """True unless the entry's "tests" patterns leave ``test_name`` out
    (entries without patterns, such as the fuzzer's, cover every test)."""
    patterns = [p for p in issue.data.get('tests', []) if any(ch in p for ch in '*?:.')]
    return not patterns or any(fnmatch.fnmatch(_without_variant(test_name), p)
                               for p in patterns)


def explain(issue: KnownIssue, version: Tuple[int, ...]) -> str:
    """One paragraph for a test result: what the entry says, where it is."""
    data = issue.data
    evidence = data.get('evidence', {})
    evidence_text = '; '.join(f'{k}: {v}' for k, v in evidence.items()) \
        if isinstance(evidence, dict) else str(evidence)
    return (f"{KNOWN_ISSUE_PREFIX} {issue.id} on QEMU {'.'.join(map(str, version))}: "
            f"{issue.title}. Observed: {data.get('observed', '?')} "
            f"Expected: {data.get('expected', '?')} "
            f"Evidence: {evidence_text} "
            f"(entry {os.path.relpath(issue.path, REPO_DIR)})")


def fixed_note(issue: KnownIssue, version: Tuple[int, ...]) -> str:
    return (f"{FIXED_PREFIX} known issue {issue.id} ({issue.title}) did not reproduce on QEMU "
            f"{'.'.join(map(str, version))}, which the entry says is affected: if QEMU fixed "
            f"it, set qemu.fixed_in in {os.path.relpath(issue.path, REPO_DIR)}")


def error_result(err: BaseException) -> Dict[str, str]:
    """The match keys of an exception raised in a guarded block."""
    # Avocado's assert* raise avocado.core.exceptions.TestFail, not AssertionError.
    failed = isinstance(err, AssertionError) or type(err).__name__ == 'TestFail'
    return {'outcome': 'fail' if failed else 'error', 'error': f'{type(err).__name__}: {err}'}
