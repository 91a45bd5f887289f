"""Reproducers: finding JSON files, and the checked-in corpus replayed.

A finding saved by a run (``OUT/findings/*.json``, see campaign.py) is a
reproducer: its case (or the minimized one) replays alone on a fresh
remote.  The ones worth keeping live in each transport's corpus directory
(``tests/fuzz/corpus`` for the proxy, ``tests/fuzz/corpus-vfio-user``);
each known issue (``tests/known_issues``) names its reproducer there, and
test_fuzz.py replays them all to notice a fix upstream.
"""

import json
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..base import known_issues, paths
from .campaign import Fuzzer
from .cases import Case
from .runner import Result

CORPUS_ROOT = os.path.join(paths.REPO_DIR, 'tests', 'fuzz')
CORPUS_ATTEMPTS = 3     # some findings depend on timing (the busy-loop hang does)


@dataclass
class ReplayOutcome:
    """One reproducer replayed: what it recorded, and what it did now."""
    path: str
    expected: str             # outcome:signal recorded in the corpus entry
    got: Result
    known_issue: Optional[str]

    @property
    def same(self) -> bool:
        return f'{self.got.outcome}:{self.got.signal}' == self.expected


def corpus_files(directory: str) -> List[str]:
    """The reproducers in ``directory``, sorted."""
    if not os.path.isdir(directory):
        return []
    return sorted(os.path.join(directory, n) for n in os.listdir(directory)
                  if n.endswith('.json'))


def load_reproducer(path: str) -> Tuple[Case, dict]:
    """A reproducer's case (the minimized one where it has one) and its JSON."""
    with open(path, encoding='utf-8') as f:
        data = json.load(f)
    return Case.from_json(data.get('minimized') or data['case']), data


def replay_corpus(fuzzer: Fuzzer, paths: Sequence[str]) -> List[ReplayOutcome]:
    """Replay reproducers on fresh remotes, each up to CORPUS_ATTEMPTS
    times until it shows its recorded outcome."""
    outcomes = []
    for path in paths:
        case, data = load_reproducer(path)
        fuzzer.get_layout()
        for _ in range(CORPUS_ATTEMPTS):
            result = fuzzer.replay(case)
            if (result.outcome, result.signal) == (data['outcome'], data.get('signal') or ''):
                break
        issue = known_issues.lookup(fuzzer.issues, result.match_keys(case, fuzzer.transport.name),
                                    fuzzer.caps.version)
        outcomes.append(ReplayOutcome(path, f"{data['outcome']}:{data.get('signal') or ''}",
                                      result, issue.id if issue else None))
    return outcomes
