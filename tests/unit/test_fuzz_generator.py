"""The fuzzer's case generation, for both transports, without QEMU.

Cases must be rebuilt exactly from (seed, index) (findings and the
corpus rely on it), survive JSON, and over a few thousand cases use every
family a transport declares.  vfio-user cases must never use the msg ids
the client and the follow-up use, or replies could be taken for theirs.
"""

import struct

import pytest

from harness.fuzz.cases import IO_BASE, MMIO_BASE, RAM_BYTES, RAM_GPA, Case, Layout
from harness.mpqemu.fuzz import TRANSPORT as PROXY
from harness.vfio_user import client, protocol as vfu
from harness.vfio_user.fuzz import TRANSPORT as VFIO_USER
from harness.vfio_user.fuzz.families import FOLLOWUP_ID_BASE

LAYOUT = Layout(RAM_GPA, RAM_BYTES, ((0, True, IO_BASE, 0x100), (1, False, MMIO_BASE, 0x400),
                                     (2, False, MMIO_BASE + 0x2000, 0x2000)))
CASES = 3000


@pytest.mark.parametrize('transport', [PROXY, VFIO_USER], ids=lambda t: t.name)
def test_cases_are_rebuilt_exactly_and_survive_json(transport):
    for index in (0, 1, 17, 999):
        case = transport.generate(7, index, LAYOUT)
        assert case.to_json() == transport.generate(7, index, LAYOUT).to_json()
        assert Case.from_json(case.to_json()).to_json() == case.to_json()
    assert transport.generate(7, 1, LAYOUT).to_json() != transport.generate(8, 1, LAYOUT).to_json()


@pytest.mark.parametrize('transport', [PROXY, VFIO_USER], ids=lambda t: t.name)
def test_every_declared_family_is_used(transport):
    used = set()
    for index in range(CASES):
        used.update(transport.generate(1, index, LAYOUT).families)
    assert used == set(transport.families.names())


def test_vfio_user_cases_keep_off_the_clients_and_followups_ids():
    for index in range(CASES):
        for step in VFIO_USER.generate(1, index, LAYOUT).steps:
            if 'random bytes' in step.note or len(step.data) < vfu.HEADER_SIZE:
                continue
            msg_id = struct.unpack('<H', step.data[:2])[0]
            assert client.MAX_CLIENT_MSG_ID < msg_id < FOLLOWUP_ID_BASE, step.note
