"""A confined remote: sandboxed, unprivileged, and what it can no longer do.

A remote is the process a hostile guest reaches first; confinement
(harness/mpqemu/confinement.py, ``-p confine_remotes``) starts every remote
under QEMU's seccomp sandbox and has it drop to an unprivileged user once
its device, disk and socket are set up.  These scenarios read the result
from ``/proc/PID/status``, make the remote itself try to open what it has no
business with (through its own QMP, as compromised device code would ask
the kernel), and break the sandbox on purpose: the kernel kills the remote
with SIGSYS, which the watchdog and the proxy see as they see any crash.
Every check of what the remote cannot do has its control: the same request
to an unconfined remote succeeds.
"""

import os
import signal
import statistics
import time

from harness.base.errors import QMPError
from harness.base.units import ms
from harness.mpqemu import confinement, topology
from harness.mpqemu.remote import Remote
from harness.testing import MultiprocessTest

DETECT_TIMEOUT_S = 5.0          # only keeps a broken watchdog from hanging the test
START_RUNS = 5
NO_CAPABILITIES = '0000000000000000'
PERMISSION_DENIED = 'Permission denied'
# QMP migrate to exec: forks and execs "sh -c CMD" (migration/exec.c):
# the system calls spawn=deny forbids.
SPAWNING_MIGRATION = 'exec:true'
SPAWN_REFUSED = 'Failed to fork (Operation not permitted)'


def proc_status(pid: int) -> dict:
    with open(f'/proc/{pid}/status', encoding='utf-8') as f:
        return dict(line.rstrip('\n').split(':\t', 1) for line in f if ':\t' in line)


class ConfinedRemote(MultiprocessTest):
    """Each remote runs with Seccomp 2, NoNewPrivs 1, no capabilities and
    the uid of mpqemu-remote, and cannot open another test's files or the
    proxy's memory; a sandbox violation kills it like a crash.

    :avocado: enable
    :avocado: tags=confine,security
    """

    def require(self, part: str) -> confinement.Confinement:
        """This test's confinement, or CANCEL naming why ``part`` is not
        applied here ('sandbox' or 'user')."""
        confined = self.confinement
        if confined is None or not getattr(confined, part):
            why = confined.reason if confined else \
                f"confine_remotes={self.figures['confine_remotes']} or nothing to apply"
            self.cancel(f"remotes run without the {part} part of the confinement here: {why}")
        return confined

    def launch_remote(self, **machine):
        vm = self.launch(disks=[self.scratch_disk(16)], **machine)
        return vm, vm.remote('lsi1')

    def unconfined_remote(self, name):
        """The control: a second machine whose remote runs as the harness
        does, on a disk of its own."""
        vm = self.new_vm(confinement=None)
        vm.add_lsi('lsi1', self.scratch_disk(16, name))
        vm.launch()
        return vm, vm.remote('lsi1')

    def open_image(self, remote: Remote, path: str, node: str):
        """Ask the remote to open disk image ``path`` read-only (a
        blockdev-add of a file node): None if it could, else QEMU's error."""
        try:
            remote.qmp('blockdev-add', driver='file', filename=path, **{'node-name': node},
                       **{'read-only': True})
        except QMPError as err:
            return str(err)
        remote.qmp('blockdev-del', **{'node-name': node})
        return None

    def open_for_reading(self, remote: Remote, path: str, chardev: str):
        """Ask the remote to open ``path`` for reading and nothing else (a
        file chardev: the block layer would also seek to its end, which
        /proc/PID/mem refuses): None if it could, else QEMU's error."""
        backend = {'type': 'file', 'data': {'in': path, 'out': os.devnull}}
        try:
            remote.qmp('chardev-add', id=chardev, backend=backend)
        except QMPError as err:
            return str(err)
        remote.qmp('chardev-remove', id=chardev)
        return None

    def test_remote_is_sandboxed(self):
        """Seccomp mode 2 (a filter) and no_new_privs, as -sandbox sets them."""
        self.require('sandbox')
        _, remote = self.launch_remote()
        status = proc_status(remote.pid)
        self.assertEqual(status['Seccomp'], '2')
        self.assertEqual(status['NoNewPrivs'], '1')
        self.record(seccomp=status['Seccomp'], no_new_privs=status['NoNewPrivs'],
                    seccomp_filters=status.get('Seccomp_filters'))

    def test_remote_runs_as_the_unprivileged_user(self):
        """Real, effective, saved and filesystem ids are mpqemu-remote's,
        with no capability left in any set."""
        confined = self.require('user')
        _, remote = self.launch_remote()
        uid, gid = confined.uid_gid()
        status = proc_status(remote.pid)
        self.assertEqual(status['Uid'].split(), [str(uid)] * 4)
        self.assertEqual(status['Gid'].split(), [str(gid)] * 4)
        self.assertEqual(status['Groups'].split(), [str(gid)])
        for caps in ('CapInh', 'CapPrm', 'CapEff', 'CapAmb'):
            self.assertEqual(status[caps], NO_CAPABILITIES, caps)
        self.record(remote_uid=status['Uid'], remote_gid=status['Gid'],
                    remote_cap_eff=status['CapEff'])

    def test_remote_cannot_open_another_tests_image(self):
        """A disk in a test's work directory (as every test's are) that the
        remote was not given: denied to the confined remote, opened by an
        unconfined one.  The remote opened its own disk before it dropped
        to the user; Avocado makes each test's temporary directory, above
        its work directory, with mkdtemp (0700)."""
        self.require('user')
        _, remote = self.launch_remote()
        other = self.scratch_disk(16, 'another-test.raw')
        _, control = self.unconfined_remote('control.raw')
        self.assertIsNone(self.open_image(control, other, 'other'))
        denied = self.open_image(remote, other, 'other')
        self.assertIsNotNone(denied, 'the confined remote opened another test image')
        self.assertIn(PERMISSION_DENIED, denied)
        self.record(other_image_error=denied,
                    other_image_mode=oct(os.stat(other).st_mode & 0o777),
                    test_tmpdir_mode=oct(os.stat(os.path.dirname(self.workdir)).st_mode & 0o777))

    def test_remote_cannot_open_the_proxys_memory(self):
        """/proc/PID/mem of the guest's QEMU: the guest's RAM and the
        proxy's secrets.  Denied to the confined remote (not root, no
        CAP_SYS_PTRACE), opened by an unconfined one."""
        self.require('user')
        vm, remote = self.launch_remote()
        proxy_mem = f'/proc/{vm.qemu.pid}/mem'
        _, control = self.unconfined_remote('control.raw')
        self.assertIsNone(self.open_for_reading(control, proxy_mem, 'mem'))
        denied = self.open_for_reading(remote, proxy_mem, 'mem')
        self.assertIsNotNone(denied, "the confined remote opened the proxy's memory")
        self.assertIn(PERMISSION_DENIED, denied)
        self.record(proxy_mem_error=denied)

    def test_sandbox_stops_a_spawn(self):
        """A remote asked to spawn a program (migrate to exec:) must not
        run it.  QEMU 7.2's filter kills the remote with SIGSYS: its
        watchdog sees it dead and the guest's QEMU survives it, as it does
        a SIGKILL.  10.0's answers EPERM to fork, vfork, execve and clone
        (system/qemu-seccomp.c, spawn rules): the command fails and the
        remote lives on."""
        self.require('sandbox')
        vm, remote = self.launch_remote(watchdog=True)
        asked_at = time.monotonic()
        remote.watchdog.fault_injected(asked_at)
        try:
            reply = remote.qmp('migrate', uri=SPAWNING_MIGRATION)
        except QMPError as err:
            reply = err
        self.record(violation_reply=str(reply)[:200])
        if SPAWN_REFUSED in str(reply):
            self.assertEqual(remote.qmp('query-status')['status'], 'running')
            self.assertEqual(remote.watchdog.events(), [])
            self.record(violation_end=f'refused ({SPAWN_REFUSED}), remote running')
            return
        event = remote.watchdog.wait_for('dead', DETECT_TIMEOUT_S)
        self.assertTrue(remote.process.wait_exit(DETECT_TIMEOUT_S))
        self.assertEqual(remote.process.exitcode, -signal.SIGSYS)
        self.assertTrue(vm.qemu.is_running())
        self.assertEqual(vm.qemu.qmp('query-status')['status'], 'running')
        self.check_proxy_after_death(vm)
        self.record(violation_end=remote.process.state_description(),
                    detect_violation_ms=ms(event.latency_s, 2))

    def check_proxy_after_death(self, vm):
        """The next message to the dead remote fails as it does after a
        SIGKILL (test_reset.py), and the proxy survives it."""
        vm.qemu.qmp('system_reset')
        self.assertEqual(vm.qemu.qmp('query-status')['status'], 'running')
        self.assertIn('Unable to write to socket', vm.qemu.log_tail(50))

    def test_remote_start_time(self):
        """Figures only: a topology's start to the first QMP answers of its
        remote and proxy, confined and not (median of 5, interleaved)."""
        self.require('user')
        times = {'confined': [], 'unconfined': []}
        for run in range(START_RUNS):
            for label, confined in (('confined', self.confinement), ('unconfined', None)):
                vm = self.new_vm(confinement=confined)
                vm.add_lsi('lsi1', self.scratch_disk(16, f'{label}-{run}.raw'))
                started = time.monotonic()
                vm.launch()
                times[label].append(time.monotonic() - started)
                vm.shutdown()
        self.record(**{f'topology_start_{label}_ms': {'median': ms(statistics.median(runs), 2),
                                                      'max': ms(max(runs), 2), 'n': len(runs)}
                       for label, runs in times.items()})

    def test_elevateprivileges_deny_with_the_user_switch(self):
        """The whole sandbox of issue 14 (elevateprivileges=deny too) and
        QEMU's own user switch: the remote should start and run as the
        user.  QEMU installs the filter first and calls setgid later, so it
        dies of SIGSYS (a known issue); the harness leaves
        elevateprivileges out whenever QEMU switches user."""
        confined = self.require('sandbox')
        self.require('user')
        whole = confinement.Confinement(sandbox=True, user=None).sandbox_option()
        switch = confinement.Confinement(sandbox=False, user=confined.user).args(
            self.remote_caps)
        vm = self.new_vm(confinement=None)
        vm.add_lsi('lsi1', self.scratch_disk(16), args=['-sandbox', whole] + switch)
        self.record(sandbox_tried=whole, user_switch=' '.join(switch))
        with self.known_issue_guard('sandbox-elevateprivileges-deny-kills-runas'):
            vm.launch()
        status = proc_status(vm.remote('lsi1').pid)
        self.assertEqual(status['Uid'].split()[1], str(confined.uid_gid()[0]))


class ConfinedRemoteOverVfioUser(ConfinedRemote):
    """The same with the remote serving the LSI over vfio-user.

    :avocado: recursive
    :avocado: tags=confine,security,vfio-user
    """

    placement = topology.VFIO_USER

    def check_proxy_after_death(self, vm):
        """A reset with the server dead is a known abort of the client
        (vfio-user-client-aborts-on-reset-with-dead-server): the client's
        monitor answering is what is checked here."""
        self.assertEqual(vm.qemu.qmp('query-status')['status'], 'running')
