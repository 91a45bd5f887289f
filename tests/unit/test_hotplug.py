"""Memory-table resync at device level: the fake proxy plays a proxy whose
guest gains and loses RAM, and sends the table itself (SYNC_SYSMEM).

The guest-level counterparts (a real proxy hot-plugging DIMMs) are in
tests/functional/test_hotplug.py; DMA into a region synced later is
test_fake_proxy.py's test_second_memory_region_synced_later_is_usable_for_dma.
"""

import os

import pytest

from harness.devices.lsi import driver as lsi
from harness.mpqemu import fake_remote, memview, protocol

from conftest import pid_alive

RAM_SIZE = 4 << 20
REGION_SIZE = 1 << 20
HIGH_GPA = 0x1_0000_0000          # where pc puts hot-plugged DIMMs
REPLY_TIMEOUT_S = 5.0
EXIT_TIMEOUT_S = 5.0


@pytest.fixture
def remote(caps, tmp_path):
    with fake_remote.launch(caps, log_dir=str(tmp_path), ram_size=RAM_SIZE,
                            timeout_s=REPLY_TIMEOUT_S) as launched:
        device = lsi.Lsi53c895a(launched.access)
        device.setup()
        yield launched, device


def add_dimms(memory, count):
    return [memory.add_region(HIGH_GPA + i * REGION_SIZE, REGION_SIZE, f'dimm{i}')
            for i in range(count)]


def test_seven_regions_are_mapped_and_usable(remote):
    launched, device = remote
    memory = launched.memory
    dimms = add_dimms(memory, protocol.REMOTE_MAX_USABLE_FDS - 1)
    launched.proxy.sync_sysmem(memory.sysmem_table())
    regions = memview.remote_ram_regions(launched.remote.process)
    assert [(r.start, r.size) for r in regions] == \
        [(0, RAM_SIZE)] + [(d.gpa, d.size) for d in dimms]
    # MEMORY MOVE is 32-bit: boot RAM -> boot RAM still works after the resync.
    src, dst = memory.alloc(4096), memory.alloc(4096)
    memory.write(src, os.urandom(4096))
    device.memory_move(dst, src, 4096)
    assert memory.read(dst, 4096) == memory.read(src, 4096)


def test_eight_regions_make_the_remote_exit(remote):
    """Known issue remote-rejects-eighth-ram-section: the wire format has
    room for 8 fds, the remote takes 7 (mpqemu_msg_valid) and exits."""
    launched, _ = remote
    add_dimms(launched.memory, protocol.REMOTE_MAX_FDS - 1)
    with pytest.raises(protocol.RemoteGone):
        launched.proxy.sync_sysmem(launched.memory.sysmem_table())
    assert launched.remote.process.wait_exit(EXIT_TIMEOUT_S)
    assert not pid_alive(launched.remote.process.pid)
    assert 'Received invalid message from proxy' in launched.remote.process.log_tail()


def test_a_table_without_a_region_unmaps_it(remote):
    launched, _ = remote
    memory = launched.memory
    add_dimms(memory, 2)
    launched.proxy.sync_sysmem(memory.sysmem_table())
    assert len(memview.remote_ram_regions(launched.remote.process)) == 3
    # "Unplug" dimm1: the proxy resends the table without it.
    table = [r for r in memory.sysmem_table() if r.gpa != HIGH_GPA + REGION_SIZE]
    launched.proxy.sync_sysmem(table)
    regions = memview.remote_ram_regions(launched.remote.process)
    assert [(r.start, r.size) for r in regions] == [(0, RAM_SIZE), (HIGH_GPA, REGION_SIZE)]
