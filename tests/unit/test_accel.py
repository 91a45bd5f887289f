"""Accelerator selection: usable means a probe VM really ran guest code."""

import os

import pytest

from harness.base.errors import AccelError
from harness.qemu import accel as qemu_accel


def test_probe_vm_runs_its_firmware_under_tcg(caps):
    assert qemu_accel.run_probe_vm(caps.path, 'tcg', caps.firmware_args) is None


def test_probe_vm_notices_firmware_that_does_not_run(caps, monkeypatch):
    # The same VM without the debug-exit device cannot report success: the
    # probe must time out or fail, not claim the accelerator works.
    monkeypatch.setattr(qemu_accel, 'PROBE_VM_TIMEOUT_S', 2.0)
    monkeypatch.setattr(qemu_accel, 'PROBE_VM_EXIT_STATUS', 0x99)
    problem = qemu_accel.run_probe_vm(caps.path, 'tcg', caps.firmware_args)
    assert problem and 'probe VM' in problem


def test_tcg_on_request(caps):
    assert qemu_accel.select_accel(caps, 'tcg').name == 'tcg'


def test_auto_uses_kvm_exactly_when_kvm_is_usable(caps):
    problem = qemu_accel.kvm_problem(caps)
    choice = qemu_accel.select_accel(caps, 'auto')
    if problem is None:
        assert choice.name == 'kvm'
    else:
        assert choice.name == 'tcg'
        assert problem in choice.reason


@pytest.mark.skipif(not os.path.exists('/sys/module/kvm_pvm'), reason='host KVM is not PVM')
def test_pvm_flavour_of_kvm_is_recognised(caps):
    assert 'PVM' in qemu_accel.kvm_problem(caps)
    with pytest.raises(AccelError, match='accel=kvm requested but KVM cannot run a linux '
                                         'guest here: .*PVM'):
        qemu_accel.select_accel(caps, 'kvm')


def test_kvm_probe_vm_agrees_with_host_checks(caps):
    # Where the host checks find no problem, the probe VM must really run
    # under KVM; where they do, KVM must not be offered.
    if qemu_accel.host_kvm_problem() is None:
        assert qemu_accel.run_probe_vm(caps.path, 'kvm', caps.firmware_args) is None
    else:
        assert qemu_accel.select_accel(caps, 'auto').name == 'tcg'


def test_unknown_accelerator_is_named(caps):
    with pytest.raises(AccelError, match="unknown accelerator 'whpx'"):
        qemu_accel.select_accel(caps, 'whpx')
