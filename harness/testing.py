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
from .mpqemu.topology import MultiprocessVM
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
        self.figures = {}
        lookup = lambda name: self.params.get(name, default=None)  # noqa: E731
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

    def new_vm(self, memory_mb: Optional[int] = None, **kwargs) -> MultiprocessVM:
        """A topology, not yet launched, logging into the output dir."""
        vm = MultiprocessVM(self.caps, self.outputdir, accel=self.accel.name,
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
