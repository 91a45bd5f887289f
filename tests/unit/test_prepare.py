"""What a job's tests need is prepared before its first test
(harness/tools/prepare.py, run by the suite's Avocado plugin): which QEMUs
a job's parameters name, and a real Avocado job whose preparation fails,
which must end before any test with the reason."""

import json

from harness.tools import prepare

from avocado_job import AvocadoJob


def test_parameters_name_the_qemus_to_prepare(monkeypatch):
    for name in ('QEMU_SRC', 'QEMU_DEB', 'VFIO_USER_CLIENT', 'VFIO_USER_SERVER'):
        monkeypatch.delenv(name, raising=False)
    assert prepare.subjects({'qemu_src': 'debian:bookworm', 'accel': 'tcg'},
                            False) == ['src:debian:bookworm']
    assert prepare.subjects({}, False) == []
    assert prepare.subjects({'qemu_deb': 'trixie', 'vfio_user_client': '/q'}, True) == \
        ['deb:trixie', '/q', 'src:debian:trixie+vfio-user-server']
    # qemu_bin as a subject: prepared unless it is a binary or ready already.
    assert prepare.subjects({'qemu_bin': 'src:/no/such/tree'}, False) == ['src:/no/such/tree']
    assert prepare.subjects({'qemu_bin': '/usr/bin/qemu-system-x86_64'}, False) == []


def test_a_job_whose_preparation_fails_ends_before_its_first_test(tmp_path):
    missing = tmp_path / 'no-such-qemu-tree'
    job = AvocadoJob(tmp_path, 'early_stop.py', ['Fails.test_fails'],
                     '-p', f'qemu_src={missing}', env={'EARLY_STOP_DIR': str(tmp_path)})
    job.end()
    assert job.proc.returncode != 0
    out = job.output()
    assert 'JobError: preparing the tests:' in out and str(missing) in out, out
    assert job.results()['tests'] == [], out


def test_each_variant_of_a_varianter_job_is_prepared(tmp_path):
    """Variants instead of -p (Avocado's JSON variants, as any varianter
    gives them): the variant's QEMU is what the preparation looks for,
    and here fails on, before any test."""
    missing = tmp_path / 'no-such-qemu-tree'
    variants = tmp_path / 'variants.json'
    variants.write_text(json.dumps([
        {'paths': ['/'], 'variant_id': f'{accel}',
         'variant': [['/', [['/', 'qemu_src', str(missing)], ['/', 'accel', accel]]]]}
        for accel in ('tcg', 'kvm')]))
    job = AvocadoJob(tmp_path, 'early_stop.py', ['Fails.test_fails'],
                     '--json-variants-load', str(variants),
                     env={'EARLY_STOP_DIR': str(tmp_path)})
    job.end()
    out = job.output()
    assert job.proc.returncode != 0
    assert 'JobError: preparing the tests:' in out and str(missing) in out, out
    assert job.results()['tests'] == [], out
