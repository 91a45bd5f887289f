import pytest

from harness.base import params
from harness.base.errors import ParameterError


def test_avocado_value_beats_environment(monkeypatch):
    monkeypatch.setenv('ACCEL', 'kvm')
    assert params.get('accel', lambda name: 'tcg') == 'tcg'
    assert params.get('accel', lambda name: None) == 'kvm'


def test_default_when_unset(monkeypatch):
    monkeypatch.delenv('QEMU_BIN', raising=False)
    assert params.get('qemu_bin') == 'qemu-system-x86_64'


def test_unknown_accelerator_is_named(monkeypatch):
    monkeypatch.setenv('ACCEL', 'hvf')
    with pytest.raises(ParameterError, match=r"accel='hvf'.*auto, kvm, tcg"):
        params.get_accel()


def test_unknown_parameter_is_named():
    with pytest.raises(ParameterError, match="unknown parameter 'qemu_binary'"):
        params.get('qemu_binary')


@pytest.mark.parametrize('raw', ['lots', '0'])
def test_bad_memory_size(monkeypatch, raw):
    monkeypatch.setenv('MEMORY_MB', raw)
    with pytest.raises(ParameterError, match='memory_mb'):
        params.get_int('memory_mb')


def test_unknown_confinement_mode_is_named(monkeypatch):
    monkeypatch.setenv('CONFINE_REMOTES', 'maybe')
    with pytest.raises(ParameterError, match=r"confine_remotes='maybe'.*auto, on, off"):
        params.get_confine()
