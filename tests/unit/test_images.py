"""Guest images (harness/guest): builder pieces, the cache, the console and
SSH helpers, and real boots of the built images under TCG.

The boot tests use the in-process lsi53c895a (the multi-process wiring is
tested elsewhere); they keep every wait bounded and always stop QEMU.
"""

import concurrent.futures
import gzip
import hashlib
import io
import os
import shutil
import socket
import json
import subprocess
import sys
import threading
import time

import pytest

from harness.images import bootdisk, cpio, debs, elf, image, initramfs
from harness.base.waiting import wait_until
from harness.guest import console, ssh
from harness.guest.session import network_args
from harness.qemu.process import QEMUProcess

BUILD_TIMEOUT_S = 180          # the bound for a build from an empty cache
WARM_BUILD_LIMIT_S = 2.0
READY_TIMEOUT_S = 90           # generous: TCG on a loaded 2-core machine
SSH_TIMEOUT_S = 30
GUEST_MEMORY_MB = '512'
SCRATCHA_OFFSET = 0x34         # LSI 53C895A SCRATCHA register, in the IO BAR


# ------------------------------------------------------------ cpio / elf

def _parse_newc(data: bytes) -> dict:
    """name -> (mode, body, rdevmajor, rdevminor): an independent reader."""
    entries, pos = {}, 0
    while True:
        assert data[pos:pos + 6] == b'070701', f"bad magic at {pos}"
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        name = data[pos + 110: pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos:pos + size]
        pos += size + (-size % 4)
        if name == 'TRAILER!!!':
            return entries
        entries[name] = (mode, body, rmaj, rmin)


def test_cpio_writer_produces_newc_the_host_cpio_reads(tmp_path):
    out = io.BytesIO()
    writer = cpio.CpioWriter(out)
    writer.add_dir('etc')
    writer.add_file('etc/hello', b'hello\n', 0o600)
    writer.add_symlink('bin', 'usr/bin')
    writer.add_char_device('console', 5, 1)
    writer.close()
    data = out.getvalue()
    assert len(data) % 4 == 0
    entries = _parse_newc(data)
    assert entries['etc/hello'] == (0o100600, b'hello\n', 0, 0)
    assert entries['bin'][1] == b'usr/bin'
    assert entries['console'][0] == 0o020600 and entries['console'][2:] == (5, 1)
    if shutil.which('cpio'):
        listing = subprocess.run(['cpio', '-it', '--quiet'], input=data,
                                 capture_output=True, check=True).stdout.decode()
        assert listing.split() == ['etc', 'etc/hello', 'bin', 'console']


def test_elf_reader_finds_loader_and_needed_libraries():
    python = elf.ElfFile(os.path.realpath(sys.executable))
    assert python.interpreter == '/lib64/ld-linux-x86-64.so.2'
    assert 'libc.so.6' in python.needed


def test_elf_reader_rejects_non_elf(tmp_path):
    script = tmp_path / 'script.sh'
    script.write_text('#!/bin/sh\n')
    with pytest.raises(elf.ElfError, match='not an x86-64 ELF'):
        elf.ElfFile(str(script))


def test_stage_realpath_resolves_absolute_links_inside_the_stage(tmp_path):
    (tmp_path / 'lib/x86_64-linux-gnu').mkdir(parents=True)
    (tmp_path / 'lib/x86_64-linux-gnu/ld-2.36.so').write_bytes(b'x')
    (tmp_path / 'lib64').mkdir()
    os.symlink('/lib/x86_64-linux-gnu/ld-2.36.so', tmp_path / 'lib64/ld.so')
    os.symlink('ld-2.36.so', tmp_path / 'lib/x86_64-linux-gnu/ld.so.2')
    assert initramfs.stage_realpath(str(tmp_path), '/lib64/ld.so') == \
        'lib/x86_64-linux-gnu/ld-2.36.so'
    assert initramfs.stage_realpath(str(tmp_path), '/lib/x86_64-linux-gnu/ld.so.2') == \
        'lib/x86_64-linux-gnu/ld-2.36.so'


def test_depends_field_parsing_keeps_first_alternative_without_versions():
    assert debs._first_alternatives(
        'libc6 (>= 2.34), libcrypt1 (>= 1:4.1.0) | libxcrypt, debconf:any, ') == \
        ['libc6', 'libcrypt1', 'debconf']


def test_data_area_sector_pattern():
    sector = bootdisk.data_area_sector(0x10000)
    assert len(sector) == bootdisk.SECTOR_BYTES
    assert sector[:16] == b'mpqemu 00010000\n'
    assert sector == sector[:16] * 32


# ------------------------------------------------------------ console

def _append_later(path, text: str, delay_s: float) -> threading.Timer:
    def write():
        with open(path, 'a') as f:
            f.write(text)
    timer = threading.Timer(delay_s, write)
    timer.start()
    return timer


def test_console_wait_sees_a_line_written_later(tmp_path):
    log = console.Console(str(tmp_path / 'console.log'))
    _append_later(log.path, 'booting\nMPQEMU-GUEST-READY uptime=3.2\n', 0.2).join(5)
    match = console.wait_for_console(log, r'MPQEMU-GUEST-READY uptime=(\S+)', timeout=5)
    assert match.match.group(1) == '3.2'
    assert match.end_offset == len('booting\nMPQEMU-GUEST-READY uptime=3.2')


def test_console_wait_only_looks_after_since(tmp_path):
    log = console.Console(str(tmp_path / 'console.log'))
    with open(log.path, 'w') as f:
        f.write('READY first boot\n')
    mark = log.mark()
    timer = _append_later(log.path, 'READY second boot\n', 0.2)
    match = log.wait_for(r'READY \w+ boot', timeout_s=5, since=mark)
    timer.join(5)
    assert match.text == 'READY second boot'


def test_console_failure_pattern_ends_the_wait_at_once(tmp_path):
    log = console.Console(str(tmp_path / 'console.log'))
    with open(log.path, 'w') as f:
        f.write('[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root\n')
    started = time.monotonic()
    with pytest.raises(console.ConsoleFailure) as err:
        log.wait_for('MPQEMU-GUEST-READY', timeout_s=30)
    assert time.monotonic() - started < 1
    assert err.value.line == 'Kernel panic - not syncing'
    assert 'Unable to mount root' in str(err.value)        # the tail is attached


def test_console_wait_times_out_with_the_tail(tmp_path):
    log = console.Console(str(tmp_path / 'console.log'))
    with open(log.path, 'w') as f:
        f.write('still booting\n')
    started = time.monotonic()
    with pytest.raises(console.ConsoleTimeout, match='still booting'):
        log.wait_for('never', timeout_s=0.3)
    assert 0.3 <= time.monotonic() - started < 2


def test_console_wait_stops_when_the_guest_is_gone(tmp_path):
    log = console.Console(str(tmp_path / 'missing.log'))
    with pytest.raises(console.GuestGone):
        log.wait_for('READY', timeout_s=30, alive=lambda: False)


# ------------------------------------------------------------ GuestImage API

def test_user_disk_is_wrapped_with_its_credentials(tmp_path):
    disk = tmp_path / 'cloud.qcow2'
    disk.write_bytes(b'QFI\xfb')
    guest = image.resolve_image(str(disk), ssh_user='debian', ssh_password='secret')
    assert (guest.disk, guest.disk_format) == (str(disk), 'qcow2')
    assert (guest.ssh_user, guest.ssh_password, guest.ssh_key) == ('debian', 'secret', None)
    assert guest.ready_marker is None and guest.kernel is None


def test_user_disk_without_credentials_is_refused(tmp_path):
    disk = tmp_path / 'cloud.img'
    disk.write_bytes(b'\0')
    with pytest.raises(image.ImageError, match='SSH credentials'):
        image.resolve_image(str(disk))


def test_unknown_image_names_the_recipes():
    with pytest.raises(image.ImageError, match='tiny'):
        image.resolve_image('no-such-image')


def test_boot_append_adds_the_sym53c8xx_flag_only_on_request():
    guest = image.GuestImage(name='x', append='console=ttyS0')
    assert guest.boot_append() == 'console=ttyS0'
    assert guest.boot_append(load_sym53c8xx=True, extra='quiet') == \
        'console=ttyS0 mpqemu.sym53c8xx=1 scsi_mod.inq_timeout=5 quiet'


def test_cache_key_follows_recipe_files_and_package_versions(tmp_path, monkeypatch):
    recipes = tmp_path / 'recipes'
    shutil.copytree(image.RECIPES_DIR, recipes)
    monkeypatch.setattr(image, 'RECIPES_DIR', str(recipes))
    monkeypatch.setenv('MPQEMU_BUILD_DIR', str(tmp_path / 'build'))
    versions = {'busybox-static': '1', 'linux-image-6.1.0-1-amd64': '6.1.1-1'}
    resolved = {'meta': {'linux-image-amd64': 'linux-image-6.1.0-1-amd64'},
                'packages': versions}
    monkeypatch.setattr(debs, 'resolve_cached', lambda request, cache_dir: resolved)

    first = image.Plan('tiny')
    assert image.Plan('tiny').key == first.key
    assert first.out_dir == str(tmp_path / 'build/images' / f'tiny-{first.key}')
    lsi_first = image.Plan('lsi-boot').key

    rcs = recipes / 'tiny/rootfs/etc/init.d/rcS'
    rcs.write_text(rcs.read_text() + '# changed\n')
    second = image.Plan('tiny').key
    assert second != first.key
    assert image.Plan('lsi-boot').key != lsi_first      # follows its base

    versions['busybox-static'] = '2'
    assert image.Plan('tiny').key not in (first.key, second)


# ------------------------------------------------------------ real builds

@pytest.fixture(scope='session')
def built():
    """Both recipes, built (or found in the cache) once per session."""
    started = time.monotonic()
    images = {name: image.build_recipe(name) for name in ('tiny', 'lsi-boot')}
    assert time.monotonic() - started < BUILD_TIMEOUT_S
    return images


def test_unchanged_recipes_rebuild_nothing(built):
    before = {n: image.read_manifest(os.path.dirname(g.manifest)) for n, g in built.items()}
    started = time.monotonic()
    result = subprocess.run([sys.executable, '-m', 'harness.tools.images', 'build',
                             *image.recipe_names()],
                            capture_output=True, text=True, timeout=60,
                            cwd=image.paths.REPO_DIR)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < WARM_BUILD_LIMIT_S, f"a warm build of every recipe took {elapsed:.2f} s"
    assert 'building' not in result.stdout + result.stderr
    for name, guest in built.items():
        assert image.read_manifest(os.path.dirname(guest.manifest)) == before[name]


def test_manifest_records_versions_hashes_and_login(built):
    for guest in built.values():
        out_dir = os.path.dirname(guest.manifest)
        manifest = image.read_manifest(out_dir)
        kernel_pkg = manifest['kernel']['package']
        assert kernel_pkg.startswith('linux-image-') and kernel_pkg in manifest['packages']
        for pkg in ('busybox-static', 'dropbear-bin', 'libc6'):
            assert manifest['packages'][pkg]
        for name, rec in manifest['outputs'].items():
            with open(os.path.join(out_dir, name), 'rb') as f:
                assert hashlib.sha256(f.read()).hexdigest() == rec['sha256'], name
        assert os.stat(guest.ssh_key).st_mode & 0o077 == 0
        assert guest.ssh_host_key.startswith('ssh-ed25519 ')
        assert guest.ready_marker == 'MPQEMU-GUEST-READY'


def test_tiny_initramfs_loads_sym53c8xx_only_on_request(built):
    with open(built['tiny'].initrd, 'rb') as f:
        entries = _parse_newc(gzip.decompress(f.read()))
    for path in ('init', 'usr/sbin/dropbear', 'lib64/ld-linux-x86-64.so.2',
                 'usr/lib/x86_64-linux-gnu/libtomcrypt.so.1', 'root/.ssh/authorized_keys',
                 'etc/dropbear/dropbear_ed25519_host_key', 'dev/console'):
        assert path in entries, path
    boot = entries['etc/mpqemu/modules.boot'][1].decode()
    sym = entries['etc/mpqemu/modules.sym53c8xx'][1].decode()
    assert 'virtio_net.ko' in boot and 'sym53c8xx' not in boot and 'scsi_mod' not in boot
    # kmod's order: the SCSI core before the driver, the driver before sd_mod.
    lines = sym.split()
    index = {os.path.basename(p): i for i, p in enumerate(lines)}
    assert index['scsi_mod.ko'] < index['sym53c8xx.ko'] < index['sd_mod.ko']
    with open(built['tiny'].ssh_key + '.pub', 'rb') as f:
        assert entries['root/.ssh/authorized_keys'][1] == f.read()


def test_lsi_boot_disk_layout(built):
    guest = built['lsi-boot']
    area = guest.data_area
    assert area.offset_bytes == 32 * bootdisk.MIB and area.size_bytes == 32 * bootdisk.MIB
    assert os.path.getsize(guest.disk) == area.offset_bytes + area.size_bytes
    with open(guest.disk, 'rb') as f:
        assert f.read(512)[510:] == b'\x55\xaa'                  # boot signature
        last_lba = (area.offset_bytes + area.size_bytes) // 512 - 1
        f.seek(last_lba * 512)
        assert f.read(512) == bootdisk.data_area_sector(last_lba)
    files = subprocess.run(['mdir', '-a', '-b', '-i', guest.disk, '::'], capture_output=True,
                           text=True, check=True).stdout.lower()
    for name in ('ldlinux.sys', 'ldlinux.c32', 'syslinux.cfg', 'vmlinuz', 'initrd.img'):
        assert name in files


def test_prepare_boot_disk_rewrites_append_on_a_private_copy(built, tmp_path):
    guest = built['lsi-boot']
    with open(guest.disk, 'rb') as f:
        cached_sha = hashlib.sha256(f.read()).hexdigest()
    copy = image.prepare_boot_disk(guest, str(tmp_path / 'disk.img'), load_sym53c8xx=True,
                                   extra_append='mpqemu.test=1')
    cfg = subprocess.run(['mtype', '-i', copy, '::syslinux.cfg'], capture_output=True,
                         text=True, check=True).stdout
    assert f'APPEND {guest.append} mpqemu.sym53c8xx=1 scsi_mod.inq_timeout=5 mpqemu.test=1' \
        in cfg
    with open(guest.disk, 'rb') as f:
        assert hashlib.sha256(f.read()).hexdigest() == cached_sha


def test_modified_output_is_rebuilt(built):
    guest = image.build_recipe('lsi-boot')
    manifest_before = image.read_manifest(os.path.dirname(guest.manifest))
    with open(guest.disk, 'r+b') as f:
        f.seek(guest.data_area.offset_bytes)
        f.write(b'scribbled by a test')
    rebuilt = image.build_recipe('lsi-boot')
    with open(rebuilt.disk, 'rb') as f:
        f.seek(rebuilt.data_area.offset_bytes)
        assert f.read(512) == bootdisk.data_area_sector(rebuilt.data_area.offset_bytes // 512)
    assert image.read_manifest(os.path.dirname(rebuilt.manifest))['built_at'] >= \
        manifest_before['built_at']


# ------------------------------------------------------------ real boots

def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Guest:
    """One TCG guest: its QEMU, console and SSH port.  Always call stop()."""

    def __init__(self, caps, log_dir: str, boot_args: list):
        self.console = console.Console(os.path.join(log_dir, 'console.log'))
        args = [*caps.firmware_args, '-accel', 'tcg', '-m', GUEST_MEMORY_MB,
                '-nodefaults', '-display', 'none', '-no-reboot',
                *self.console.qemu_args(),
                *network_args(),
                *boot_args]
        self.qemu = QEMUProcess(caps.path, args, name='guest', log_dir=log_dir)
        self.started = time.monotonic()
        self.qemu.launch()
        self.port = ssh.hostfwd_port(self.qemu.hmp('info usernet'))

    def wait_ready(self, guest_image) -> float:
        self.console.wait_for(guest_image.ready_marker, timeout_s=READY_TIMEOUT_S,
                              alive=self.qemu.is_running)
        return time.monotonic() - self.started

    def ssh(self, guest_image) -> ssh.GuestSSH:
        return ssh.connect_to_image(guest_image, '127.0.0.1', self.port,
                                    timeout_s=SSH_TIMEOUT_S, alive=self.qemu.is_running)

    def stop(self):
        self.qemu.shutdown()


@pytest.fixture
def boot(caps, tmp_path):
    guests = []

    def start(boot_args):
        guest = Guest(caps, str(tmp_path), boot_args)
        guests.append(guest)
        return guest
    yield start
    for guest in guests:
        guest.stop()


@pytest.mark.slow
def test_tiny_boots_by_kernel_with_lsi_as_data_disk(built, boot, disk, tmp_path):
    tiny = built['tiny']
    guest = boot(['-kernel', tiny.kernel, '-initrd', tiny.initrd,
                  '-append', tiny.boot_append(extra='scsi_mod.inq_timeout=7'),
                  '-device', 'lsi53c895a,id=lsi0,addr=4',
                  '-drive', f'if=none,id=d0,file={disk},format=raw',
                  '-device', 'scsi-hd,drive=d0,bus=lsi0.0'])
    marker_s = guest.wait_ready(tiny)
    with guest.ssh(tiny) as session:
        print(f"tiny: marker {marker_s:.1f} s, ssh {time.monotonic() - guest.started:.1f} s")
        pci = session.run('cat /sys/bus/pci/devices/0000:00:04.0/vendor '
                          '/sys/bus/pci/devices/0000:00:04.0/device', check=True)
        assert pci.stdout.split() == ['0x1000', '0x0012']
        # Under TCG the proxy could not deliver the driver's interrupts.
        modules = session.run('cat /proc/modules', check=True).stdout
        assert 'virtio_net' in modules and 'sym53c8xx' not in modules
        assert 'mpqemu.sym53c8xx' not in session.run('cat /proc/cmdline').stdout

        # An LSI register written through the IO BAR reads back.
        bar = '/sys/bus/pci/devices/0000:00:04.0/resource0'
        word = SCRATCHA_OFFSET // 4
        session.run(f"printf '\\x78\\x56\\x34\\x12' | "
                    f"dd of={bar} bs=4 seek={word} count=1 conv=notrunc", check=True)
        readback = session.run(f'dd if={bar} bs=4 skip={word} count=1 2>/dev/null | xxd -p',
                               check=True)
        assert readback.stdout.strip() == '78563412'

        result = session.run('echo out; echo err >&2; exit 3')
        assert (result.exit_status, result.stdout, result.stderr) == (3, 'out\n', 'err\n')
        with pytest.raises(ssh.CommandFailed, match='exited with 3'):
            session.run('exit 3', check=True)

        payload = os.urandom(200_000)
        (tmp_path / 'payload').write_bytes(payload)
        session.upload(str(tmp_path / 'payload'), '/tmp/payload', mode=0o600)
        assert session.run('stat -c %a /tmp/payload').stdout.strip() == '600'
        assert session.run('sha256sum /tmp/payload').stdout.split()[0] == \
            hashlib.sha256(payload).hexdigest()
        session.download('/tmp/payload', str(tmp_path / 'back'))
        assert (tmp_path / 'back').read_bytes() == payload

        started = time.monotonic()
        with pytest.raises(ssh.CommandTimeout):
            session.run('sleep 60', timeout_s=2)
        assert time.monotonic() - started < 2 + ssh.HOST_DEADLINE_MARGIN_S + 1
        # The guest-side timeout killed it: no sleep left behind.
        assert 'sleep 60' not in session.run('ps').stdout

        # A guest that stops answering altogether (every vCPU paused): the
        # command fails at its deadline, not at paramiko's (it has none for
        # starting a command), and the session works again afterwards.
        guest.qemu.qmp('stop')
        started = time.monotonic()
        with pytest.raises(ssh.CommandTimeout):
            session.run('true', timeout_s=2)
        assert time.monotonic() - started < 2 + ssh.HOST_DEADLINE_MARGIN_S + 1
        guest.qemu.qmp('cont')
        assert session.run('echo back', check=True).stdout == 'back\n'

        # Modules loaded later get their parameters from the kernel command
        # line, as modprobe gives them (the in-process LSI's INTx works
        # under TCG): the scan then finds the data disk.
        session.run('mpqemu-modules sym53c8xx', check=True, timeout_s=60)
        assert session.run('cat /sys/module/scsi_mod/parameters/inq_timeout',
                           check=True).stdout.strip() == '7'
        assert session.run('cat /sys/block/sda/device/vendor', check=True).stdout.strip()

    # The host key is checked against the image's, not trusted on first use.
    with open(tiny.ssh_key + '.pub') as f:
        not_the_host_key = f.read()
    with pytest.raises(ssh.SSHConnectError, match='host key other than'):
        ssh.GuestSSH.connect('127.0.0.1', guest.port, key_path=tiny.ssh_key,
                             host_key=not_the_host_key, timeout_s=SSH_TIMEOUT_S)

    # The guest's QEMU gone under an open session: the harness's error for
    # a closed connection, whether paramiko has noticed yet or not.
    with guest.ssh(tiny) as session, concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(session.run, 'sleep 20', timeout_s=30)
        wait_until(lambda: 'sleep 20' in session.run('ps').stdout, SSH_TIMEOUT_S,
                   'the guest to run the sleep')
        guest.qemu.kill()
        with pytest.raises(ssh.SSHError, match='is closed'):
            running.result(timeout=40)
        with pytest.raises(ssh.SSHError, match='is closed'):
            session.run('true', timeout_s=5)


@pytest.mark.slow
def test_lsi_boot_boots_from_the_lsi_disk(built, boot, tmp_path):
    lsi_boot = built['lsi-boot']
    disk = image.prepare_boot_disk(lsi_boot, str(tmp_path / 'disk.img'),
                                   extra_append='mpqemu.run=lsi-boot-test')
    guest = boot(['-device', 'lsi53c895a,id=lsi0,addr=4',
                  '-drive', f'if=none,id=d0,file={disk},format=raw',
                  '-device', 'scsi-hd,drive=d0,bus=lsi0.0,bootindex=0'])
    marker_s = guest.wait_ready(lsi_boot)
    with guest.ssh(lsi_boot) as session:
        print(f"lsi-boot: marker {marker_s:.1f} s, ssh {time.monotonic() - guest.started:.1f} s")
        cmdline = session.run('cat /proc/cmdline', check=True).stdout
        # syslinux put BOOT_IMAGE there; the per-run APPEND reached the kernel.
        assert cmdline.startswith('BOOT_IMAGE=/vmlinuz ')
        assert 'mpqemu.run=lsi-boot-test' in cmdline
        assert 'sym53c8xx' not in session.run('cat /proc/modules').stdout
    assert 'SYSLINUX' in guest.console.text()


def test_hostfwd_port_is_read_from_info_usernet():
    text = ('Hub -1 (n0):\r\n  Protocol[State]    FD  Source Address  Port   '
            'Dest. Address  Port RecvQ SendQ\r\n  TCP[HOST_FORWARD]   9       '
            '127.0.0.1 38959       10.0.2.15    22     0     0\r\n')
    assert ssh.hostfwd_port(text) == 38959
    with pytest.raises(ssh.SSHError, match='hostfwd=tcp:127.0.0.1:0-:2222'):
        ssh.hostfwd_port(text, guest_port=2222)


def test_ssh_connect_gives_up_at_its_deadline():
    port = _free_tcp_port()                  # nothing listens there
    started = time.monotonic()
    with pytest.raises(ssh.SSHConnectError, match='within 1 s'):
        ssh.GuestSSH.connect('127.0.0.1', port, password='x', timeout_s=1)
    assert time.monotonic() - started < 3


def test_user_disk_boots_from_a_qcow2_overlay(tmp_path):
    from harness.guest.session import boot_drive
    disk = tmp_path / 'cloud.raw'
    disk.write_bytes(b'\xa5' * 65536)
    user = image.resolve_image(str(disk), ssh_user='debian', ssh_password='pw')
    drive, fmt = boot_drive(user, str(tmp_path), load_sym53c8xx=False)
    assert fmt == 'qcow2' and drive != str(disk)
    info = subprocess.run(['qemu-img', 'info', '--output=json', drive], check=True,
                          capture_output=True, text=True).stdout
    assert json.loads(info)['backing-filename'] == str(disk)
