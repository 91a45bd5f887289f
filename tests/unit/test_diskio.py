"""Disk IO workloads (harness/guest/diskio.py) and the guest tool lsi-dio
(tests/images/tools/lsi-dio.c), compiled here and run on the host with its
block-device backend against a file: the pattern, the checks, the exit
statuses and the JSON report are the ones the guest produces.
"""

import json
import os
import subprocess

import pytest

from harness.guest import diskio
from harness.images import guesttools, image
from harness.guest.diskio import Workload
from harness.mpqemu import topology

TOOL_SOURCE = os.path.join(image.RECIPES_DIR, 'tools', 'lsi-dio.c')
RUN_TIMEOUT_S = 60


@pytest.fixture(scope='module')
def tool(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('lsi-dio') / 'lsi-dio')
    guesttools.compile_tool({'source': 'tools/lsi-dio.c', 'path': TOOL_SOURCE,
                             'install': '/usr/bin/lsi-dio'}, out)
    return out


def run_tool(tool, *args):
    proc = subprocess.run([tool, *args], capture_output=True, timeout=RUN_TIMEOUT_S)
    return proc


def run_workload(tool, dev, w: Workload, direct=False):
    """The tool exactly as GuestDiskIO would run it on the driver path."""
    dio = diskio.GuestDiskIO(ssh=None, path=diskio.PATH_DRIVER, dev=dev, direct=direct,
                             tool=tool)
    proc = subprocess.run(dio.command(w), shell=True, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    return diskio.parse_output(proc.stdout, proc.returncode, proc.stderr, 0.0)


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / 'disk.raw'
    with open(path, 'wb') as f:
        f.truncate(8 << 20)
    return str(path)


def test_python_pattern_is_the_tools_pattern(tool):
    for seed, lba, blocks in ((1, 0, 3), (0xdeadbeefcafe, 123456, 2), (2 ** 64 - 1, 7, 1)):
        proc = run_tool(tool, 'pattern', '--seed', str(seed), '--lba', str(lba),
                        '--blocks', str(blocks))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == diskio.pattern(seed, lba, blocks)


def test_pattern_differs_per_block_and_seed():
    blocks = diskio.pattern(5, 100, 2)
    assert blocks[:512] != blocks[512:]
    assert diskio.pattern(5, 100, 1) != diskio.pattern(6, 100, 1)
    assert diskio.pattern(5, 101, 1) == blocks[512:]


@pytest.mark.parametrize('direct', [False, True])
@pytest.mark.parametrize('order,bs', [('seq', 4096), ('rand', 65536), ('rand', 524288)])
def test_verify_lands_the_pattern_where_the_host_expects_it(tool, disk, order, bs, direct):
    w = Workload('verify', lba=1000, blocks=4096, bs=bs, order=order, seed=9)
    result = run_workload(tool, disk, w, direct=direct)
    assert result.ok, result.report
    assert result.report['backend'] == 'blockdev'
    write, read = result.phase('write'), result.phase('read')
    assert write['bytes'] == read['bytes'] == w.bytes
    assert write['commands'] == read['commands'] == -(-w.blocks * 512 // bs)
    assert read['mismatched_bytes'] == 0 and read['first_mismatch'] is None
    assert set(result.figures()) == {'write', 'read'}
    assert diskio.check_image(disk, 9, 1000, 4096) is None
    # Nothing was written before the range.
    with open(disk, 'rb') as f:
        assert f.read(1000 * 512) == bytes(1000 * 512)


def test_a_flipped_byte_is_reported_at_its_offset_by_tool_and_host(tool, disk):
    w = Workload('write', lba=64, blocks=256, bs=65536, seed=3)
    assert run_workload(tool, disk, w).ok
    offset = (64 + 200) * 512 + 17
    expected = diskio.pattern(3, 264, 1)[17]
    flipped = diskio.flip_byte(disk, offset, 0x01)
    assert flipped == expected ^ 0x01

    result = run_workload(tool, disk, Workload('read', lba=64, blocks=256, bs=65536, seed=3))
    assert result.exit_status == diskio.EXIT_MISMATCH and result.status == 'mismatch'
    assert result.first_mismatch() == {'offset': offset, 'lba': 264, 'got': flipped,
                                       'expected': expected}
    assert str(offset) in result.error
    host = diskio.check_image(disk, 3, 64, 256)
    assert (host.offset, host.got, host.expected, host.count) == (offset, flipped, expected, 1)


def test_the_tools_deadline_ends_it_with_a_timeout_report(tool, disk):
    w = Workload('verify', blocks=16384, bs=512, seed=1, deadline_s=1e-6)
    result = run_workload(tool, disk, w)
    assert result.exit_status == diskio.EXIT_TIMEOUT
    assert result.report['status'] == 'timeout' and 'deadline' in result.error


def test_errors_still_print_one_json_object(tool, disk):
    proc = run_tool(tool, 'read', '--dev', disk, '--bs', '1000')
    assert proc.returncode == diskio.EXIT_USAGE
    report = json.loads(proc.stdout)
    assert report['ok'] is False and '--bs 1000' in report['error']
    proc = run_tool(tool, 'read', '--dev', disk, '--lba', 'x')
    assert proc.returncode == diskio.EXIT_USAGE
    assert 'not a number' in json.loads(proc.stdout)['error']


def test_polled_path_without_the_device_says_so(tool, tmp_path):
    proc = run_tool(tool, 'info', '--bdf', '0000:ff:1f.7')
    report = json.loads(proc.stdout)
    assert proc.returncode in (diskio.EXIT_USAGE, diskio.EXIT_DEVICE)
    assert report['ok'] is False and '0000:ff:1f.7' in report['error']


def test_commands_for_both_paths():
    polled = diskio.GuestDiskIO(None, diskio.PATH_POLLED)
    cmd = polled.command(Workload('read', lba=8, blocks=16, bs=4096, order='rand', seed=2,
                                  regs='io', cpu=1, deadline_s=30))
    assert cmd.startswith('taskset 2 /usr/bin/lsi-dio read --lba 8 --blocks 16 --bs 4096 ')
    assert '--regs io' in cmd and '--deadline 30' in cmd and '--dev' not in cmd
    driver = diskio.GuestDiskIO(None, diskio.PATH_DRIVER, dev='/dev/sda', direct=True)
    cmd = driver.command(Workload())
    assert cmd.endswith('--dev /dev/sda --direct') and '--regs' not in cmd
    with pytest.raises(diskio.DiskIOError):
        diskio.GuestDiskIO(None, diskio.PATH_DRIVER)
    with pytest.raises(diskio.DiskIOError, match='deadline'):
        polled.start(Workload())
    assert diskio.path_for('kvm', topology.PROXY) == diskio.PATH_DRIVER
    assert diskio.path_for('tcg', topology.PROXY) == diskio.PATH_POLLED
    assert diskio.path_for('tcg', topology.IN_PROCESS) == diskio.PATH_POLLED
    assert diskio.path_for('kvm', topology.VFIO_USER) == diskio.PATH_POLLED


def test_parse_output_needs_the_json_line():
    with pytest.raises(diskio.DiskIOError, match='no JSON'):
        diskio.parse_output('Segmentation fault\n', 139, '', 0.1)
    r = diskio.parse_output('noise\n{"ok": false, "status": "gone", "error": "x"}\n', 4, '', 1)
    assert (r.ok, r.status, r.error) == (False, 'gone', 'x')


def test_image_key_covers_the_tool_source(tmp_path):
    recipes = tmp_path / 'images'
    (recipes / 'tools').mkdir(parents=True)
    source = recipes / 'tools' / 't.c'
    source.write_text('int main(void) { return 0; }\n')
    recipe = {'name': 'r', 'tools': [{'source': 'tools/t.c', 'install': '/usr/bin/t'}]}
    specs = guesttools.tool_specs(recipe, str(recipes))
    first = guesttools.key_material(specs)
    assert guesttools.key_material(specs) == first
    source.write_text('int main(void) { return 1; }\n')
    assert guesttools.key_material(specs) != first
    assert guesttools.key_material([]) == b''
    with pytest.raises(guesttools.GuestToolError, match='does not exist'):
        guesttools.tool_specs({'name': 'r', 'tools': [{'source': 'tools/x.c',
                                                       'install': '/usr/bin/x'}]},
                              str(recipes))
    with pytest.raises(guesttools.GuestToolError, match='install'):
        guesttools.tool_specs({'name': 'r', 'tools': [{'source': 'tools/t.c'}]}, str(recipes))


def test_tiny_recipe_installs_lsi_dio():
    plan = image.Plan('tiny')
    assert [t['install'] for t in plan.tools] == ['/usr/bin/lsi-dio']
    assert plan.tools[0]['path'] == TOOL_SOURCE
