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
import time
from typing import Iterator, Optional, Sequence

import avocado
from avocado.core.exceptions import TestSkipError

from .base import deadlines, known_issues, lifeline, params
from .guest import diagnosis
from .base.errors import QMPError
from .images.image import GuestImage, resolve_image
from .agent.client import Agent
from .agent.session import AgentSession
from .guest.session import GuestSession, boot_drive
from .guest.ssh import CommandTimeout
from .mpqemu.topology import ControlVM, MultiprocessVM
from .qemu import accel as qemu_accel
from .qemu import binary as qemu_binary
from .qemu import vcpus

MIB = 1024 * 1024


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
    # Added to the timeout when qemu_src names a build that is not cached
    # yet: the first test to ask builds it (the others wait on its lock).
    BUILD_TIMEOUT_S = 1200

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        spec = params.get_optional('qemu_src', lambda name: self.params.get(name, default=None))
        if spec and self.timeout:
            from .qemu import build as qemu_build   # pylint: disable=import-outside-toplevel
            if qemu_build.cached_result(spec) is None:
                self.timeout = float(self.timeout) + self.BUILD_TIMEOUT_S

    def qemu_under_test(self) -> str:
        """The binary to test: built from ``qemu_src`` (cached) when given,
        else ``qemu_bin``."""
        spec = params.get_optional('qemu_src', self._lookup)
        if not spec:
            return params.get('qemu_bin', self._lookup)
        from .qemu import build as qemu_build       # pylint: disable=import-outside-toplevel
        result = qemu_build.build(spec, log=self.log.info)
        self.record(qemu_src=spec, qemu_build_key=result.key, qemu_build_cached=result.cached,
                    qemu_build_request_s=result.request_s)
        return result.binary

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

    def launch_guard_issues(self) -> Sequence[str]:
        """Known issues checked at every multi-process topology launch."""
        return [i.id for i in known_issues.load() if i.data.get('guard') == 'launch']

    def setUp(self):
        deadlines.start_test(float(self.timeout) if self.timeout else None)
        # Before anything is started: nothing may outlive the job.
        self._lifeline = lifeline.tie_to_job(os.path.join(self.outputdir, 'lifeline.log'))
        self._vms = []
        self._sessions = []
        self.figures = {}
        self._lookup = lookup = lambda name: self.params.get(name, default=None)  # noqa: E731
        self.caps = qemu_binary.probe(self.qemu_under_test())
        self.caps.require_multiprocess()
        self.accel = qemu_accel.select_accel(self.caps, params.get_accel(lookup), self.guest)
        self.machine = params.get('machine', lookup)
        self.memory_mb = params.get_int('memory_mb', lookup)
        self.log.info('QEMU %s at %s, accel %s (%s)', '.'.join(map(str, self.caps.version)),
                      self.caps.path, self.accel.name, self.accel.reason)
        self.record(qemu=self.caps.version_string, qemu_bin=self.caps.path,
                    accel=self.accel.name, accel_reason=self.accel.reason)

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

    def new_vm(self, memory_mb: Optional[int] = None, control: bool = False,
               **kwargs) -> MultiprocessVM:
        """A topology, not yet launched, logging into the output dir; with
        ``control``, the LSI is emulated inside the guest's QEMU instead."""
        vm_class = ControlVM if control else MultiprocessVM
        kwargs.setdefault('accel', self.accel.name)
        kwargs.setdefault('cpu', self.accel.cpu)
        kwargs.setdefault('machine', self.machine)
        vm = vm_class(self.caps, self.outputdir, memory_mb=memory_mb or self.memory_mb,
                      **kwargs)
        self._vms.append(vm)
        self._guard_launch(vm)
        return vm

    def _guard_launch(self, vm: MultiprocessVM) -> None:
        """Make ``vm.launch()`` report a known launch failure (e.g. 10.0's
        proxy crash without KVM) as the known issue it is."""
        if not vm.multiprocess:
            return
        launch, issue_ids = vm.launch, self.launch_guard_issues()

        def guarded_launch(*args, **kwargs):
            with self.known_issue_guard(*issue_ids):
                return launch(*args, **kwargs)
        vm.launch = guarded_launch

    def launch_vm(self, drives: Sequence[str] = (), **kwargs) -> MultiprocessVM:
        """Launch a proxy with one remote LSI per drive (``lsi1``, ``lsi2``
        …) and record how long the topology took to come up."""
        vm = self.new_vm(**kwargs)
        for index, drive in enumerate(drives or [None], start=1):
            vm.add_lsi_remote(f'lsi{index}', drive)
        start = time.monotonic()
        vm.launch()
        self.record(topology_up_ms=round((time.monotonic() - start) * 1000, 1))
        return vm

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

    def launch_guest(self, image: Optional[str] = None, *, control: bool = False,
                     data_disk: Optional[str] = None, remote_args: Sequence[str] = (),
                     **vm_kwargs):
        """Boot a guest whose LSI (``lsi1``) is in a remote process (or, with
        ``control``, inside the guest's QEMU) and log in over SSH.

        A disk image boots from the LSI itself (a private copy); a
        ``-kernel`` image gets ``data_disk`` (if any) as the LSI's disk.
        sym53c8xx is loaded only under KVM, the one accelerator with which
        the proxy delivers the LSI's interrupts.  Returns (vm, session).
        """
        guest = self.guest_image(image)
        load_sym53c8xx = self.accel.name == 'kvm'
        drive, fmt = boot_drive(guest, self.workdir, load_sym53c8xx)
        vm = self.new_vm(control=control, **vm_kwargs)
        vm.add_lsi_remote('lsi1', drive or data_disk, fmt=fmt, args=remote_args)
        session = GuestSession(guest, self.outputdir, load_sym53c8xx=load_sym53c8xx)
        session.diagnose = lambda err: str(diagnosis.boot_failure(vm, session, err))
        self._sessions.append(session)
        vm.add_proxy_args(*session.qemu_args())
        vm.launch()
        session.wait_ready(vm.proxy)
        self.record(**session.figures())
        return vm, session

    def launch_agent(self, *, control: bool = False, drive: Optional[str] = None,
                     **vm_kwargs):
        """Boot the agent (harness/agent) in a VM whose LSI (``lsi1``, with
        ``drive`` as its disk) is in a remote process or, with ``control``,
        inside the guest's QEMU.  Returns (vm, session, agent)."""
        vm = self.new_vm(control=control, **vm_kwargs)
        vm.add_lsi_remote('lsi1', drive)
        session = AgentSession(self.outputdir)
        session.diagnose = lambda err: str(diagnosis.boot_failure(vm, session, err))
        self._sessions.append(session)
        agent: Agent = session.boot(vm)
        self.record(agent_ready_s=round(session.ready_s, 3),
                    agent_tsc_mhz=round(agent.tsc_hz / 1e6, 1))
        return vm, session, agent

    @contextlib.contextmanager
    def guest_must_answer(self, vm: MultiprocessVM, session: GuestSession) -> Iterator[None]:
        """Around guest commands that must keep working while a device
        hangs.  One that times out ends the test with where each vCPU was
        (harness/qemu/vcpus.py): a CANCEL when the guest kernel waits in a
        cross-CPU call for the vCPU blocked on the device (inherent to a
        device that blocks a vCPU, shown on purpose by test_faults.py's
        GuestFaults.test_guest_kernel_needing_the_blocked_vcpu_stalls), a
        failure otherwise (QEMU itself wedged, or a guest we cannot read)."""
        try:
            yield
        except CommandTimeout as err:
            symbols = vcpus.KernelSymbols(session.symbols) if session.symbols else None
            try:
                states = vcpus.snapshot(vm.proxy, symbols)
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
