"""Avocado base class for the multi-process QEMU suite.

It resolves the parameters (``-p qemu_bin=…`` or ``$QEMU_BIN``, ``accel``,
``machine``, ``memory_mb``), probes the binary once, picks the accelerator,
launches topologies whose logs land in the test's output directory, and
stops every process in tearDown whatever the outcome.  If Avocado kills a
timed-out test instead, the processes die with it (PR_SET_PDEATHSIG, see
harness/qemu/lifeline.py).
"""

import json
import os
import time
from typing import Optional, Sequence

import avocado

from . import params
from .guest.image import GuestImage, resolve_image
from .guest.session import GuestSession, boot_drive
from .mpqemu.topology import ControlVM, MultiprocessVM
from .qemu import accel as qemu_accel
from .qemu import binary as qemu_binary

MIB = 1024 * 1024


class MultiprocessTest(avocado.Test):
    """Owns the QEMU processes of one test.

    Figures recorded with ``record()`` end up as JSON in the whiteboard.
    """

    timeout = 120

    def setUp(self):
        self._vms = []
        self._sessions = []
        self.figures = {}
        self._lookup = lookup = lambda name: self.params.get(name, default=None)  # noqa: E731
        self.caps = qemu_binary.probe(params.get('qemu_bin', lookup))
        self.caps.require_multiprocess()
        self.accel = qemu_accel.select_accel(self.caps, params.get_accel(lookup))
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
        vm = vm_class(self.caps, self.outputdir, accel=self.accel.name,
                      machine=self.machine, memory_mb=memory_mb or self.memory_mb,
                      **kwargs)
        self._vms.append(vm)
        return vm

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
        self._sessions.append(session)
        vm.add_proxy_args(*session.qemu_args())
        vm.launch()
        session.wait_ready(vm.proxy)
        self.record(**session.figures())
        return vm, session
