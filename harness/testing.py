"""Avocado base class for the multi-process QEMU suite.

It resolves the parameters (``-p qemu_bin=…`` or ``$QEMU_BIN``, ``accel``,
``machine``, ``memory_mb``), probes the binary once, picks the accelerator,
launches topologies whose logs land in the test's output directory, and
stops every process in tearDown whatever the outcome.  If Avocado kills a
timed-out test instead, or the job stops early and leaves the test behind,
the processes die with it (harness/base/lifeline.py).
"""

import contextlib
import json
import os
import socket
import time
from typing import Iterator, Optional, Sequence, Union

import avocado
from avocado.core.exceptions import TestSkipError

from .base import deadlines, known_issues, lifeline, params
from .base.errors import HarnessError, QMPError
from .base.units import MIB, ms
from .images.image import GuestImage, resolve_image
from .agent.session import AgentSession
from .guest import diskio
from .guest.session import GuestSession, boot_drive
from .guest.ssh import CommandTimeout
from .mpqemu import confinement, topology
from .mpqemu.topology import Machine
from .qemu import accel as qemu_accel
from .qemu import binary as qemu_binary
from .qemu import subject
from .qemu import vcpus

# Why the tests in which the harness speaks 'mpqemu-upstream' do not run on seed:v8.
V8_WIRE_FORMAT = ("this test builds upstream's mpqemu messages itself (harness/mpqemu/"
                  "protocol.py's upstream dialect, QEMU >= 6.0); the fake proxy speaks the v8 "
                  "series' dialect too, but the fuzzer's cases and the hostile remote's "
                  "replies are upstream's bytes, so this test does not apply to the v8 series")
AGENT = 'agent'        # launch(guest=AGENT): the bare-metal agent (harness/agent)


class MultiprocessTest(avocado.Test):
    """Owns the QEMU processes of one test.

    Figures recorded with ``record()`` end up as JSON in the whiteboard.
    """

    # One boot and a few guest commands; classes that wait longer say so
    # through deadlines.test_timeout(), never with a bare number.
    timeout = deadlines.test_timeout(boots=1, waits_s=2 * deadlines.COMMAND_S)
    # The guest the test boots decides which accelerator can run it
    # (harness/qemu/accel.py): 'linux' (a paging OS) or 'agent'.
    guest = 'linux'
    # Where the devices of this test's machines are emulated
    # (harness/mpqemu/topology.py): in a remote over the proxy, in a remote
    # over vfio-user (the vfio_user_client and _server QEMUs), or inside
    # the guest's QEMU for the in-process controls.
    placement = topology.PROXY
    # The wire protocol the harness itself speaks to the QEMU under test,
    # when it plays the proxy or the remote: 'mpqemu' (the fake proxy, in
    # the QEMU's own dialect: harness/mpqemu/protocol.py), 'mpqemu-upstream'
    # (the fuzzer, the hostile remote: upstream's bytes, so not on the v8
    # series), 'vfio-user'.
    harness_speaks: Optional[str] = None
    # How Linux guests do disk IO (harness/guest/diskio.py): None takes the
    # path this placement and accelerator can run (diskio.path_for);
    # diskio.PATH_DRIVER loads sym53c8xx whatever they are.
    diskio_path: Optional[str] = None
    # The firmware agent guests boot from (harness/images/agent.py): None
    # leaves it to the agent_firmware parameter; a class about one
    # firmware names it.
    agent_firmware: Optional[str] = None
    # Added to the timeout when a QEMU to test is not prepared yet (a
    # source build, a Debian root): the first test to ask prepares it (the
    # others wait on its lock).  The suite's Avocado plugin prepares them
    # before a job's first test (harness/tools/prepare.py); this is for a
    # job that runs without it.
    BUILD_TIMEOUT_S = 1200

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        lookup = lambda name: self.params.get(name, default=None)  # noqa: E731
        if self.timeout and not all(subject.ready(s) for s in self.subjects(lookup)):
            self.timeout = float(self.timeout) + self.BUILD_TIMEOUT_S

    def subjects(self, lookup) -> Sequence[str]:
        """The QEMUs this test runs (harness/qemu/subject.py): the one
        under test, or over vfio-user the client and the server."""
        if self.placement == topology.VFIO_USER:
            if params.get_optional('vfio_user_skip', lookup):
                return []
            return [params.get('vfio_user_client', lookup),
                    params.get('vfio_user_server', lookup)]
        return [subject.under_test(lookup)]

    def probe_subject(self, spec: str, role: str) -> qemu_binary.Capabilities:
        started = time.monotonic()
        caps = qemu_binary.probe(subject.binary(spec, log=self.log.info))
        self.record(**{f'{role}_subject': spec, f'{role}_prepare_s':
                       round(time.monotonic() - started, 3)})
        return caps

    @contextlib.contextmanager
    def known_issue_guard(self, *issue_ids: str) -> Iterator[None]:
        """Run a block that a known upstream bug (tests/known_issues/ID.json)
        may break.  If the block fails the way the entry describes, on a
        QEMU version and accelerator the entry covers, the test ends as
        CANCEL with the entry's text (a known issue: visible, not red); if
        it passes where the entry says it should not, the test is flagged
        (WARN) "fixed upstream?".  Other failures propagate unchanged."""
        issues = [known_issues.by_id(i) for i in issue_ids]
        context = {'accel': getattr(self, 'accel_in_use', None) or self.accel.name}
        expected = [i for i in issues if known_issues.applies(i, self.caps.version, **context)
                    and known_issues.covers(i, str(self.name))]
        try:
            yield
        except (avocado.TestCancel, TestSkipError):
            raise
        except Exception as err:      # pylint: disable=broad-except
            result = known_issues.error_result(err)
            for issue in expected:
                if issue.matches(result):
                    self.record(known_issue=issue.id, known_issue_error=result['error'][:500])
                    self.log.info('failure explained by known issue %s: %s', issue.id,
                                  result['error'])
                    self.cancel(known_issues.explain(issue, self.caps.version))
            raise
        for issue in expected:
            note = known_issues.fixed_note(issue, self.caps.version)
            self.record(known_issue_not_reproduced=issue.id)
            self.log.warning(note)

    def known_issues_met(self, what: str, findings: Sequence[dict]) -> None:
        """Findings that are not failures (the fuzzer's crashes, each an
        entry with its ``known_issue`` id and evidence) explained by known
        issues: each is logged as a warning with its evidence (the test
        ends WARN, never a silent PASS) and listed in the whiteboard.
        A block that fails is a known_issue_guard()'s job."""
        for finding in findings:
            issue = known_issues.by_id(finding['known_issue'])
            self.log.warning('known issue %s (%s) met by %s: %s', issue.id, issue.title, what,
                             json.dumps(finding))
        met = set(self.figures.get('known_issues_met', [])) | {f['known_issue'] for f in findings}
        self.record(known_issues_met=sorted(met))

    def corpus_replayed(self, replayed: int, met: Sequence[dict],
                        changed: Sequence[dict]) -> None:
        """Report a fuzzer's corpus replayed: the reproducers that no longer
        end as recorded (``{'reproducer', 'expected', 'got'}``) are flagged,
        since their known issue may be fixed; the known issues met are
        reported as known_issues_met() does."""
        self.record(corpus_replayed=replayed, corpus_changed=list(changed))
        for entry in changed:
            self.log.warning('reproducer %s no longer ends as recorded (%s, now %s): '
                             'fixed upstream? update tests/known_issues', entry['reproducer'],
                             entry['expected'], entry['got'])
        self.known_issues_met('the corpus', met)

    def launch_guard_issues(self, vm: Machine) -> Sequence[str]:
        """Known issues checked at every launch of a machine with proxied
        devices (x-pci-proxy-dev)."""
        if not any(d.placement == topology.PROXY for d in vm.devices.values()):
            return []
        return [i.id for i in known_issues.load() if i.data.get('guard') == 'launch']

    def setUp(self):
        deadlines.start_test(float(self.timeout) if self.timeout else None)
        # Before anything is started: nothing may outlive the job.
        self._lifeline = lifeline.tie_to_job(os.path.join(self.outputdir, 'lifeline.log'))
        self._vms = []
        self.vm: Optional[Machine] = None        # the machine launched last
        self._sessions = []
        self.figures = {}
        self.record(host=socket.gethostname())     # several in a fleet run (harness/fleet/)
        self._lookup = lookup = lambda name: self.params.get(name, default=None)  # noqa: E731
        skip = params.get_optional('vfio_user_skip', lookup)
        if self.placement == topology.VFIO_USER and skip:
            self.cancel(f'vfio-user tests do not run here: {skip}')
        probed = [self.probe_subject(spec, role)
                  for spec, role in zip(self.subjects(lookup), ('qemu', 'remote_qemu'))]
        self.caps = probed[0]
        # The QEMU remotes run: the one under test, except over vfio-user.
        self.remote_caps = probed[-1]
        self.caps.require_multiprocess()
        if self.harness_speaks == 'mpqemu-upstream' and self.caps.multiprocess.flavour == 'v8':
            self.cancel(V8_WIRE_FORMAT)
        self.accel = qemu_accel.select_accel(self.caps, params.get_accel(lookup), self.guest)
        self.machine = params.get('machine', lookup)
        self.memory_mb = params.get_int('memory_mb', lookup)
        self.log.info('QEMU %s at %s, accel %s (%s)', '.'.join(map(str, self.caps.version)),
                      self.caps.path, self.accel.name, self.accel.reason)
        self.diskio_path = self.diskio_path or diskio.path_for(self.accel.name, self.placement)
        self.record(qemu=self.caps.version_string, qemu_bin=self.caps.path,
                    accel=self.accel.name, accel_reason=self.accel.reason)
        # How every remote of this test's machines is confined (None: not).
        mode = params.get_confine(lookup)
        self.confinement = confinement.resolve(mode, self.remote_caps)
        self.record(confine_remotes=mode, confined=self.confinement is not None,
                    **(self.confinement.describe() if self.confinement else {}))

    def tearDown(self):
        for session in self._sessions:
            session.close()
        for vm in reversed(self._vms):
            vm.shutdown()

    def record(self, **figures) -> None:
        """Add figures (latencies, throughput, versions) to the whiteboard."""
        self.figures.update(figures)
        self.whiteboard = json.dumps(self.figures, indent=2, sort_keys=True)

    def scratch_disk(self, size_mb: int, name: str = 'disk.raw') -> str:
        """A sparse raw disk image in the test's work directory."""
        path = os.path.join(self.workdir, name)
        with open(path, 'wb') as f:
            f.truncate(size_mb * MIB)
        return path

    def new_vm(self, *, placement: Optional[str] = None, memory_mb: Optional[int] = None,
               **kwargs) -> Machine:
        """A machine, not yet launched, logging into the output dir, with
        this test's QEMU, accelerator, machine type and memory unless told
        otherwise; its devices are placed as the class says (``placement``)
        unless ``placement`` is given.  Add devices, then ``launch()`` it."""
        kwargs.setdefault('accel', self.accel.name)
        kwargs.setdefault('cpu', self.accel.cpu)
        kwargs.setdefault('machine', self.machine)
        kwargs.setdefault('remote_caps', self.remote_caps)
        kwargs.setdefault('confinement', self.confinement)
        vm = Machine(self.caps, self.outputdir, placement=placement or self.placement,
                     memory_mb=memory_mb or self.memory_mb, **kwargs)
        self._vms.append(vm)
        return vm

    def launch(self, vm: Optional[Machine] = None, *,
               guest: Union[None, str, GuestImage] = None,
               disks: Sequence[Optional[str]] = (), remote_args: Sequence[str] = (),
               **machine) -> Machine:
        """Launch a machine, boot its guest and make it ``self.vm``.

        ``vm`` is one from ``new_vm()`` that the test has furnished itself;
        without it a new one (``machine`` are ``new_vm()``'s parameters)
        gets an LSI per disk of ``disks`` (``lsi1``, ``lsi2`` …, one
        without a disk if there are none), with ``remote_args`` for the
        process that emulates each.  ``guest`` is None (firmware only), a
        Linux image (a ``guest_image()`` or its spec: SSH is up on return)
        or ``AGENT`` (the bare-metal agent: ``vm.guest.agent``).  A Linux
        disk image boots from ``lsi1`` (a private copy) and the disks
        follow it, so it needs a machine made here, not a furnished one.  ``vm.guest`` is the guest's session.  A launch
        that fails as a known issue of this QEMU says so (CANCEL)."""
        if vm is None:
            vm = self.new_vm(**machine)
            drives = [(disk, 'raw') for disk in disks]
            session = self._guest_session(guest, drives)
            for index, (drive, fmt) in enumerate(drives or [(None, 'raw')], start=1):
                vm.add_lsi(f'lsi{index}', drive, fmt=fmt, args=remote_args)
        elif machine or disks or remote_args:
            raise HarnessError("launch(vm) takes a furnished machine: give its devices "
                               "and parameters to new_vm() and add_lsi()")
        else:
            boot = []
            session = self._guest_session(guest, boot)
            if boot:
                raise HarnessError(f"{guest} boots from a disk on lsi1: launch it with "
                                   f"launch(guest=..., disks=...), not into a furnished machine")
        self.vm = vm
        start = time.monotonic()
        with self.known_issue_guard(*self.launch_guard_issues(vm)):
            if session is None:
                vm.launch()
                self.record(topology_up_ms=ms(time.monotonic() - start))
            elif isinstance(session, AgentSession):
                agent = session.boot(vm)
                self.record(agent_ready_s=round(session.ready_s, 3),
                            agent_tsc_mhz=round(agent.tsc_hz / 1e6, 1))
            else:
                session.boot(vm)
                self.record(**session.figures())
        return vm

    def _guest_session(self, guest: Optional[str], drives: list):
        """The session for ``guest``, registered for teardown; a Linux disk
        image's private boot copy goes first in ``drives``."""
        if guest is None:
            return None
        if guest == AGENT:
            firmware = self.agent_firmware or params.get_agent_firmware(self._lookup)
            self.record(agent_firmware=firmware)
            session = AgentSession(self.outputdir, boot_firmware=firmware)
        else:
            image = guest if isinstance(guest, GuestImage) else self.guest_image(guest)
            load_sym53c8xx = self.diskio_path == diskio.PATH_DRIVER
            drive, fmt = boot_drive(image, self.workdir, load_sym53c8xx)
            if drive:
                drives.insert(0, (drive, fmt))
            session = GuestSession(image, self.outputdir, load_sym53c8xx=load_sym53c8xx)
        self._sessions.append(session)
        return session

    def guest_image(self, spec: Optional[str] = None) -> GuestImage:
        """The image named by ``spec`` or by the ``image`` parameter (a
        recipe is built on first use), with any credentials the
        parameters give."""
        lookup = self._lookup
        start = time.monotonic()
        image = resolve_image(spec or params.get('image', lookup),
                              ssh_user=params.get_optional('image_user', lookup),
                              ssh_key=params.get_optional('image_key', lookup),
                              ssh_password=params.get_optional('image_password', lookup))
        self.record(image=image.name, image_resolve_s=round(time.monotonic() - start, 3))
        return image

    @contextlib.contextmanager
    def guest_must_answer(self, vm: Machine, session: GuestSession) -> Iterator[None]:
        """Around guest commands that must keep working while a device
        hangs.  One that times out ends the test with where each vCPU was
        (harness/qemu/vcpus.py): a CANCEL when the guest kernel waits in a
        cross-CPU call for the vCPU blocked on the device (inherent to a
        device that blocks a vCPU, shown on purpose by test_faults.py's
        GuestHangs.test_guest_kernel_needing_the_blocked_vcpu_stalls), a
        failure otherwise (QEMU itself wedged, or a guest we cannot read)."""
        try:
            yield
        except CommandTimeout as err:
            symbols = vcpus.KernelSymbols(session.symbols) if session.symbols else None
            try:
                states = vcpus.snapshot(vm.qemu, symbols)
            except QMPError as qmp_err:
                self.fail(f"{err}; the guest stopped answering and the proxy's QMP does "
                          f"not answer either ({qmp_err})")
            where = vcpus.describe(states)
            self.log.error('guest stopped answering: %s', where)
            self.record(guest_stall=where)
            waiting = vcpus.waiting_for_a_peer(states)
            if waiting:
                self.cancel(f'the guest kernel needed the vCPU blocked on the device '
                            f'(vCPU {waiting.index} in {waiting.symbol}), so the rest of '
                            f'the guest stalled: inherent, not checked this run ({where})')
            self.fail(f'{err}; the guest stopped answering: {where}')
