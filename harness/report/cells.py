"""One test's result as a cell of a table: pass, known issue, skip with
its reason, failure (the matrix's cells, harness/tools/matrix.py, and the
report's, harness/report/page.py).

  pass             PASS
  pass, fixed?     WARN from a known-issue guard: the entry's bug did not
                   reproduce (fixed upstream? update the entry)
  known issue: ID  CANCEL whose reason is a known-issue entry
  skip: reason     SKIP or CANCEL for another reason (missing capability…),
                   or the ERROR of a test whose guest the column's KVM
                   cannot run (a Linux guest on a PVM host)
  fail: reason     FAIL, ERROR, INTERRUPTED
  not run          the test did not exist in that job
"""

import dataclasses
import json
import os
import re
from typing import Dict, Optional

from ..base import known_issues
from . import scenarios

# harness/qemu/accel.py select_accel: the column asked for an accelerator
# that cannot run this test's guest here, a capability, not a failure.
ACCEL_MISSING = 'accel=kvm requested but KVM cannot run'
REASON_CHARS = 160
KINDS = ('pass', 'fixed?', 'known', 'skip', 'fail', 'not-run')


@dataclasses.dataclass
class Cell:
    kind: str                   # pass, fixed?, known, skip, fail, not-run
    text: str
    detail: str = ''
    issue: Optional[str] = None
    # The row's scenario and transport (row_info), not part of the cell's JSON.
    row: Optional[dict] = dataclasses.field(default=None, compare=False)

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        del data['row']
        return data


def short(text: str, limit: int = REASON_CHARS) -> str:
    text = ' '.join((text or '').split())
    return text if len(text) <= limit else text[:limit - 1] + '…'


def _whiteboard(test: dict) -> dict:
    try:
        return json.loads(test.get('whiteboard') or '{}')
    except ValueError:
        return {}


def classify(test: dict) -> Cell:
    """One Avocado result (an entry of results.json's "tests") as a cell."""
    cell = _classify_status(test)
    cell.row = row_info(test.get('name', ''), scenarios.transport(test.get('tags')))
    return cell


def _classify_status(test: dict) -> Cell:
    status = test.get('status', '')
    reason = test.get('fail_reason') or ''
    if reason == '<unknown>':
        reason = ''
    board = _whiteboard(test)
    if status == 'PASS':
        return Cell('pass', 'pass')
    if status == 'WARN':
        if board.get('known_issue_not_reproduced'):
            issue = board['known_issue_not_reproduced']
            return Cell('fixed?', f'pass, fixed upstream? ({issue})', issue=issue)
        return Cell('pass', 'pass (warnings)')
    if status in ('CANCEL', 'SKIP'):
        match = re.match(rf'{known_issues.KNOWN_ISSUE_PREFIX} (\S+)', reason)
        if match:
            return Cell('known', f'known issue: {match.group(1)}', short(reason, 400),
                        match.group(1))
        return Cell('skip', f'skip: {short(reason, 90)}', reason)
    if status == 'ERROR' and ACCEL_MISSING in reason:
        return Cell('skip', f'skip: {short(reason[reason.index(ACCEL_MISSING):], 90)}', reason)
    return Cell('fail', f'{status.lower()}: {short(reason, 90)}', reason)


def test_row_name(name: str) -> str:
    """``tests/functional/test_x.py:Class.test_y`` → ``test_x:Class.test_y``."""
    path, _, rest = name.partition(':')
    return f'{os.path.splitext(os.path.basename(path))[0]}:{rest}' if rest else name


def row_info(name: str, transport: str) -> dict:
    """A row's scenario, transport and the class that ran it, from the
    test's Avocado name."""
    _, cls, method = scenarios.split_name(name)
    if not method:
        return {'scenario': name, 'transport': '', 'test_class': ''}
    return {'scenario': scenarios.scenario(name), 'transport': transport, 'test_class': cls}


def read_results(path: str) -> Dict[str, Cell]:
    with open(path, encoding='utf-8') as f:
        data = json.load(f)
    return {test_row_name(t['name']): classify(t) for t in data.get('tests', [])}


