"""The v8 series' own launcher, scripts/mpqemu-launcher.py (patch 20), run
as posted: the reference topology of the series, and what the suite's
orchestrator (harness/mpqemu/topology.py) does differently.

The script is taken from the series as posted (harness/qemu/seeds/v8) and
changed only where this host requires it, each change listed in the
whiteboard: the QEMU (the seed:v8 build, not /usr/bin's), the two disk
images (scratch qcow2 files instead of /build/ol7-nvme-test-1.qcow2 and
/home/ol7-hdd-1.qcow2), the firmware directories a source build needs
(-L), the accelerator this host can run, and no ``-vnc :0`` (the suite's
builds have no VNC).  Everything else, the fork, the socketpair, the
command lines, runs as written.
"""

import os
import signal
import subprocess
import sys
import time
import uuid

from harness.base import procfs
from harness.base.waiting import wait_until
from harness.qemu import seed
from harness.testing import MultiprocessTest

LAUNCHER = 'scripts/mpqemu-launcher.py'
LAUNCHER_TIMEOUT_S = 30.0       # the script itself: a fork and two Popens
UP_S = 3.0                      # both QEMUs must still run this long after it returned
GONE_TIMEOUT_S = 10.0
RUN_VARIABLE = 'MPQEMU_LAUNCHER_RUN'


class SeedLauncher(MultiprocessTest):
    """
    :avocado: enable
    :avocado: tags=launcher,topology
    """

    def setUp(self):
        self._started = []
        super().setUp()
        if self.caps.multiprocess.flavour != 'v8':
            self.cancel(f'{self.caps.version_string} is not the v8 series: its launcher '
                        f'speaks the v8 names (-machine remote, pci-proxy-dev, remote-object); '
                        f'run with -p qemu_src=seed:v8')

    def tearDown(self):
        for pid in self._started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(lambda: not any(procfs.state(pid) not in (None, 'Z')
                                   for pid in self._started),
                   GONE_TIMEOUT_S, "the launcher's QEMUs to go")
        super().tearDown()

    def script(self) -> tuple:
        """The launcher as posted, with this host's changes; (text, changes)."""
        text = seed.new_file(seed.by_name('v8'), LAUNCHER)
        images = []
        for name in ('remote-disk.qcow2', 'proxy-disk.qcow2'):
            path = os.path.join(self.workdir, name)
            subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', path, '64M'], check=True,
                           timeout=30)
            images.append(path)
        firmware = ''.join(f"'-L', '{d}', " for d in self.caps.firmware_dirs)
        changes = [
            ("PROC_QEMU='/usr/bin/qemu-system-x86_64'", f"PROC_QEMU='{self.caps.path}'"),
            ('file=/build/ol7-nvme-test-1.qcow2', f'file={images[0]}'),
            ('file=/home/ol7-hdd-1.qcow2', f'file={images[1]}'),
            ("'-machine', 'q35,accel=kvm',", f"'-machine', 'q35,accel={self.accel.name}', "
                                             f"{firmware}"),
            ("'-vnc', ':0',", ''),
        ]
        for old, new in changes:
            self.assertIn(old, text, f'the posted launcher has no {old!r} any more')
            text = text.replace(old, new)
        return text, [f'{old} -> {new or "(removed)"}' for old, new in changes]

    def run_launcher(self) -> tuple:
        text, changes = self.script()
        path = os.path.join(self.workdir, 'mpqemu-launcher.py')
        with open(path, 'w', encoding='utf-8') as f:
            f.write(text)
        token = uuid.uuid4().hex
        env = dict(os.environ, **{RUN_VARIABLE: token})
        started = time.monotonic()
        # Its output to a file: the QEMUs inherit its stdout and keep it
        # open, so a pipe would not see its end until they exit.
        with open(os.path.join(self.workdir, 'launcher.out'), 'w+', encoding='utf-8') as out:
            run = subprocess.run([sys.executable, path], cwd=self.workdir, env=env,
                                 stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, timeout=LAUNCHER_TIMEOUT_S,
                                 start_new_session=True, check=False)
        returned_s = time.monotonic() - started
        # Its QEMUs, found by what they inherited: the script keeps no pids.
        qemus = wait_until(lambda: self.launched(token, 2), LAUNCHER_TIMEOUT_S,
                           "the launcher's two QEMUs")
        self._started += [pid for pid, _ in qemus]
        return run, returned_s, dict((role, pid) for pid, role in qemus), changes

    @staticmethod
    def launched(token: str, count: int):
        found = []
        for pid in procfs.pids():
            argv = procfs.cmdline(pid)
            if argv and 'qemu-system' in os.path.basename(argv[0]) \
                    and procfs.environ_has(pid, f'{RUN_VARIABLE}={token}'):
                found.append((pid, 'remote' if 'remote' in argv[argv.index('-machine') + 1]
                              else 'proxy'))
        return found if len(found) >= count else None

    def test_the_series_launcher_brings_up_its_topology(self):
        """The script returns at once; its remote and its proxy come up and
        stay up (the proxy's realize probes the device through the remote:
        a proxy still running has been answered).  Then what it leaves to
        others: no QMP on either process, no pids kept, nothing that stops
        them: both outlive the script, orphans the test has to kill."""
        run, returned_s, qemus, changes = self.run_launcher()
        with open(os.path.join(self.workdir, 'launcher.out'), encoding='utf-8') as f:
            said = f.read()
        self.assertEqual(run.returncode, 0, said)
        self.assertIn('Launching QEMU with Proxy object', said)
        self.assertIn('Launching Remote process', said)
        self.assertEqual(sorted(qemus), ['proxy', 'remote'])
        time.sleep(UP_S)                 # a window they must stay up in, not a settle delay
        for role, pid in qemus.items():
            self.assertNotIn(procfs.state(pid), (None, 'Z'),
                             f'the launcher\'s {role} exited within {UP_S} s')
        argv = {role: procfs.cmdline(pid) for role, pid in qemus.items()}
        self.record(
            launcher_changes=changes, launcher_returned_s=round(returned_s, 2),
            launcher_qmp={role: any(a in ('-qmp', '-mon', '-chardev') for a in args)
                          for role, args in argv.items()},
            launcher_parents={role: procfs.ppid(pid) for role, pid in qemus.items()},
            launcher_sockets={role: sum(1 for fd in os.listdir(f'/proc/{pid}/fd')
                                        if os.readlink(f'/proc/{pid}/fd/{fd}')
                                        .startswith('socket:'))
                              for role, pid in qemus.items()})
