"""Confined remotes: what each mode resolves to, and a real confined remote."""

import dataclasses
import os

import pytest

from harness.base.errors import ParameterError
from harness.mpqemu import confinement
from harness.mpqemu.topology import Machine

ROOT = os.geteuid() == 0


def with_features(caps, **features):
    return dataclasses.replace(caps, **features)


def test_off_confines_nothing(caps):
    assert confinement.resolve('off', caps) is None


def test_unknown_mode_is_refused(caps):
    with pytest.raises(ParameterError, match="confine_remotes='maybe': use one of"):
        confinement.resolve('maybe', caps)


def test_on_names_what_the_qemu_lacks(caps):
    bare = with_features(caps, sandbox=False, runas=False, run_with_user=False)
    with pytest.raises(ParameterError, match='--enable-seccomp.*neither -runas nor -run-with'):
        confinement.resolve('on', bare)
    assert confinement.resolve('auto', bare) is None


def test_sandbox_keeps_elevateprivileges_only_without_a_user_switch():
    alone = confinement.Confinement(sandbox=True, user=None)
    assert alone.sandbox_option() == \
        'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny'
    switching = confinement.Confinement(sandbox=True, user='someone')
    assert switching.sandbox_option() == 'on,obsolete=deny,spawn=deny,resourcecontrol=deny'


def test_user_switch_is_spelled_as_the_qemu_spells_it(caps):
    confined = confinement.Confinement(sandbox=False, user='someone')
    old = with_features(caps, runas=True, run_with_user=False)
    new = with_features(caps, runas=False, run_with_user=True)
    assert confined.args(old) == ['-runas', 'someone']
    assert confined.args(new) == ['-run-with', 'user=someone']


@pytest.mark.skipif(ROOT, reason='checks the message a user other than root gets')
def test_a_missing_user_names_the_command_to_create_it():
    with pytest.raises(Exception, match='useradd --system --no-create-home'):
        confinement.ensure_user('mpqemu-no-such-user')


@pytest.mark.skipif(not ROOT, reason='only root starts remotes that drop to another user')
def test_confined_remote_runs_sandboxed_as_the_user(caps, disk, tmp_path):
    confined = confinement.resolve('auto', caps)
    if confined is None or not confined.sandbox or not confined.user:
        pytest.skip(f'{caps.path} cannot be confined: {confined and confined.reason}')
    confinement.ensure_user()
    with Machine(caps, str(tmp_path / 'logs'), confinement=confined) as vm:
        vm.add_lsi('lsi1', disk)
        vm.launch()
        with open(f'/proc/{vm.remote("lsi1").pid}/status', encoding='utf-8') as f:
            status = dict(line.rstrip('\n').split(':\t', 1) for line in f if ':\t' in line)
        assert status['Seccomp'] == '2'
        assert status['NoNewPrivs'] == '1'
        assert status['CapEff'] == '0' * 16
        assert status['Uid'].split() == [str(confined.uid_gid()[0])] * 4
        assert vm.qemu.qmp('query-status')['status'] == 'running'


@pytest.mark.skipif(not ROOT, reason='only root creates the user')
def test_ensure_user_is_idempotent():
    first = confinement.ensure_user()
    assert confinement.ensure_user() == first
    assert first.pw_shell == '/usr/sbin/nologin'
