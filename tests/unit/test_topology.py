"""The multi-process topology against real QEMU (TCG)."""

import os
import signal
import socket

import pytest

from harness.base.errors import HarnessError, LaunchError, ParameterError, QEMUBinaryError
from harness.mpqemu import topology
from harness.mpqemu.memview import wait_for_ram
from harness.mpqemu.topology import Machine
from harness.qemu import binary as qemu_binary
from harness.base.units import MIB

from conftest import pid_alive, socket_inodes



@pytest.fixture
def vm(caps, tmp_path):
    machine = Machine(caps, str(tmp_path / 'logs'))
    yield machine
    machine.shutdown()


def test_topology_starts_and_stops(vm, disk):
    vm.add_lsi('lsi1', disk)
    vm.launch()
    remote, proxy = vm.remote('lsi1'), vm.qemu
    assert remote.qmp('query-status')['status'] == 'running'
    assert proxy.qmp('query-status')['status'] == 'running'
    pids = [remote.pid, proxy.pid]
    assert vm.shutdown() == {'proxy': 'quit', 'remote-lsi1': 'exited'}
    assert not any(pid_alive(pid) for pid in pids)


def test_remote_shows_lsi_and_synced_guest_ram(vm, disk):
    vm.add_lsi('lsi1', disk)
    vm.launch()
    process = vm.remote('lsi1').process
    qtree = process.hmp('info qtree')
    assert 'dev: lsi53c895a, id "lsi1"' in qtree
    assert 'pci id 1000:0012' in qtree
    assert 'dev: scsi-hd, id "lsi1-hd"' in qtree
    regions = wait_for_ram(process, vm.memory_mb * MIB - 0x40000, timeout_s=10)
    assert all(r.name.startswith('remote-mem-') for r in regions)
    assert regions[-1].end == vm.memory_mb * MIB - 1


def test_each_process_holds_only_its_own_socket_end(caps, tmp_path, disk, monkeypatch):
    ends = {}
    real_socketpair = socket.socketpair

    def recording_socketpair(*args):
        proxy_end, remote_end = real_socketpair(*args)
        ends.setdefault('proxy', os.fstat(proxy_end.fileno()).st_ino)
        ends.setdefault('remote', os.fstat(remote_end.fileno()).st_ino)
        return proxy_end, remote_end

    vm = Machine(caps, str(tmp_path))
    vm.add_lsi('lsi1', disk)
    # The first socketpair the topology makes is the proxy<->remote link.
    monkeypatch.setattr(topology.socket, 'socketpair', recording_socketpair)
    try:
        vm.launch()
        monkeypatch.undo()
        remote_socks = socket_inodes(vm.remote('lsi1').pid)
        proxy_socks = socket_inodes(vm.qemu.pid)
        assert ends['remote'] in remote_socks and ends['proxy'] not in remote_socks
        assert ends['proxy'] in proxy_socks and ends['remote'] not in proxy_socks
        assert not {ends['proxy'], ends['remote']} & socket_inodes(os.getpid())
    finally:
        vm.shutdown()


def test_several_remotes_one_process_each(vm, tmp_path):
    drives = []
    for name in ('a', 'b', 'c'):
        path = tmp_path / f'{name}.raw'
        path.write_bytes(b'\0' * MIB)
        drives.append(str(path))
        vm.add_lsi(f'lsi-{name}', str(path))
    vm.launch()
    pids = {remote.pid for remote in vm.remotes()}
    assert len(pids) == 3
    proxied = {d['qdev_id'] for bus in vm.qemu.qmp('query-pci') for d in bus['devices']}
    assert {'lsi-a', 'lsi-b', 'lsi-c'} <= proxied
    for devid, drive in zip(('lsi-a', 'lsi-b', 'lsi-c'), drives):
        files = [b['inserted']['file'] for b in vm.remote(devid).qmp('query-block')
                 if 'inserted' in b]
        assert files == [drive]


def test_extra_arguments_reach_each_side(vm, disk):
    vm.add_lsi('lsi1', disk, args=['-name', 'remote-side'])
    vm.add_args('-name', 'proxy-side')
    vm.launch()
    assert vm.remote('lsi1').qmp('query-name') == {'name': 'remote-side'}
    assert vm.qemu.qmp('query-name') == {'name': 'proxy-side'}


def test_failed_proxy_launch_stops_the_remotes(vm, disk):
    remote = vm.add_lsi('lsi1', disk).remote
    vm.add_args('-device', 'no-such-device')
    with pytest.raises(LaunchError,
                       match="(?s)proxy exited during start-up .exited with status 1.*"
                             "no-such-device"):
        vm.launch()
    assert remote.process.pid and not pid_alive(remote.process.pid)


def test_start_up_hang_names_the_reply_the_proxy_waits_for(vm, disk, monkeypatch):
    """A remote that never answers (stopped before the proxy starts) keeps
    the proxy in its machine set-up: the error says whose reply it awaits,
    not just that QMP never came."""
    remote = vm.add_lsi('lsi1', disk).remote
    start = remote.start

    def start_then_stop(*args, **kwargs):
        start(*args, **kwargs)
        remote.process.send_signal(signal.SIGSTOP)
    monkeypatch.setattr(remote, 'start', start_then_stop)
    with pytest.raises(LaunchError) as caught:
        vm.launch(timeout_s=3.0)
    message = str(caught.value)
    assert message.startswith('proxy did not answer QMP within 3 s: it is still starting, '
                              'waiting for a reply on the socket to remote-lsi1, '
                              'stopped (SIGSTOP)'), message
    assert 'main thread in recvmsg on fd ' in message
    assert not pid_alive(remote.process.pid)


def test_missing_disk_image_is_named_before_anything_starts(vm, tmp_path):
    missing = str(tmp_path / 'nowhere.raw')
    with pytest.raises(ParameterError, match=f'disk image {missing} does not exist'):
        vm.add_lsi('lsi1', missing)
    assert not vm.processes()


def test_bad_disk_format_is_named(vm, disk):
    with pytest.raises(ParameterError, match="disk format 'vmdk'"):
        vm.add_lsi('lsi1', disk, fmt='vmdk')


def test_unknown_accelerator_is_named(caps, tmp_path):
    with pytest.raises(ParameterError, match="accelerator 'hax' is not built into QEMU"):
        Machine(caps, str(tmp_path), accel='hax')


def test_binary_without_multiprocess_is_refused(caps, tmp_path):
    no_mp = qemu_binary.Capabilities(**{**caps.__dict__, 'multiprocess': None})
    with pytest.raises(QEMUBinaryError, match='no multi-process support'):
        Machine(no_mp, str(tmp_path))


def test_machine_needs_a_device(vm):
    with pytest.raises(HarnessError, match='at least one device'):
        vm.launch()


def test_duplicate_device_id_is_refused(vm, disk):
    vm.add_lsi('lsi1', disk)
    with pytest.raises(ParameterError, match="already is a device 'lsi1'"):
        vm.add_lsi('lsi1', disk)


def test_in_process_placement_emulates_the_lsi_in_the_guests_qemu(caps, tmp_path, disk):
    vm = Machine(caps, str(tmp_path), placement=topology.IN_PROCESS)
    vm.add_lsi('lsi1', disk)
    try:
        vm.launch()
        devices = [d for bus in vm.qemu.qmp('query-pci') for d in bus['devices']]
        lsi = next(d for d in devices if d.get('qdev_id') == 'lsi1')
        assert (lsi['id']['vendor'], lsi['id']['device']) == (0x1000, 0x0012)
        assert vm.device_process('lsi1') is vm.qemu
        assert vm.processes() == [vm.qemu]
        with pytest.raises(HarnessError, match='no remote process'):
            vm.remote('lsi1')
    finally:
        vm.shutdown()


def test_one_machine_mixes_placements(vm, disk, tmp_path):
    """A device in a remote beside one inside the guest's QEMU: each is
    emulated where it was placed, and its arguments reach that process."""
    other = tmp_path / 'other.raw'
    other.write_bytes(b'\0' * MIB)
    vm.add_lsi('lsi1', disk, args=['-name', 'remote-side'])
    vm.add_lsi('lsi2', str(other), placement=topology.IN_PROCESS,
               args=['-name', 'guest-side'])
    vm.launch()
    assert vm.multiprocess
    assert vm.device_process('lsi1') is vm.remote('lsi1').process
    assert vm.device_process('lsi2') is vm.qemu
    assert vm.remote('lsi1').qmp('query-name') == {'name': 'remote-side'}
    assert vm.qemu.qmp('query-name') == {'name': 'guest-side'}
    devices = {d.get('qdev_id') for bus in vm.qemu.qmp('query-pci') for d in bus['devices']}
    assert {'lsi1', 'lsi2'} <= devices
    assert [b['inserted']['file'] for b in vm.qemu.qmp('query-block')
            if 'inserted' in b] == [str(other)]
    assert 'rd_bytes' in vm.disk_stats('lsi2')        # found in the guest's QEMU
    with pytest.raises(HarnessError, match='lsi2 is emulated inside the guest'):
        vm.remote('lsi2')


def test_unknown_placement_and_device_are_named(vm, disk):
    with pytest.raises(ParameterError, match="placement 'vfio' is not one of in-process, proxy"):
        vm.add_lsi('lsi1', disk, placement='vfio')
    with pytest.raises(HarnessError, match="no device 'lsi9'"):
        vm.remote('lsi9')


def test_a_running_remote_is_not_started_twice(vm, disk, caps, tmp_path):
    remote = vm.add_lsi('lsi1', disk).remote
    vm.launch()
    ours, theirs = socket.socketpair()
    try:
        with pytest.raises(HarnessError, match='remote-lsi1 is still running'):
            remote.start(caps, str(tmp_path), theirs)
    finally:
        ours.close()
        theirs.close()
    assert remote.generation == 0 and remote.past == []


def test_vfio_user_needs_a_client_and_a_server(caps, tmp_path):
    """Debian 12's QEMU has neither vfio-user-pci (10.1+) nor the server:
    both are named before anything starts."""
    with pytest.raises(QEMUBinaryError, match='has no vfio-user-pci'):
        Machine(caps, str(tmp_path), placement=topology.VFIO_USER)
    client = qemu_binary.Capabilities(**{**caps.__dict__, 'vfio_user_client': True})
    with pytest.raises(QEMUBinaryError, match='has no x-vfio-user-server: build it with '
                                              '--enable-vfio-user-server'):
        Machine(client, str(tmp_path), placement=topology.VFIO_USER)
