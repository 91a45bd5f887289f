"""One package resolution per run, and half-written cache entries
(harness/images/image.py): a derived image (lsi-boot) and its base (tiny)
must describe the same resolved packages, and a build killed midway leaves
nothing a later lookup would use.

apt's answer is fixed here (as in test_images.py's key test) so that the
tests need neither the Debian mirror nor a kernel download: the base build
is a small directory with a manifest, the derived disk is built for real
(mtools, syslinux) from it.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from harness.images import debs, image

KERNEL_57 = ('linux-image-6.1.0-57-amd64', '6.1.158-1')
KERNEL_50 = ('linux-image-6.1.0-50-amd64', '6.1.135-1')
KILL_WAIT_S = 60


def _resolution(kernel):
    return {'meta': {'linux-image-amd64': kernel[0]},
            'packages': {'busybox-static': '1:1.35.0-4+b3', kernel[0]: kernel[1]}}


@pytest.fixture
def recipes(tmp_path, monkeypatch):
    """The real recipes in a private build directory, apt answering 6.1.0-57."""
    copy = tmp_path / 'recipes'
    shutil.copytree(image.RECIPES_DIR, copy)
    monkeypatch.setattr(image, 'RECIPES_DIR', str(copy))
    monkeypatch.setenv('MPQEMU_BUILD_DIR', str(tmp_path / 'build'))
    monkeypatch.setattr(debs, 'resolve_cached', lambda request, cache_dir: _resolution(KERNEL_57))
    return copy


def _write_build(plan, kernel, outputs, **fields):
    """A finished build of ``plan`` as build_recipe() leaves one: its
    outputs and a manifest with their hashes, in plan.out_dir."""
    os.makedirs(plan.out_dir)
    for name, data in outputs.items():
        with open(os.path.join(plan.out_dir, name), 'wb') as f:
            f.write(data)
    manifest = {
        'format': image.MANIFEST_FORMAT, 'recipe': plan.name, 'key': plan.key,
        'kind': plan.recipe['kind'], 'packages': _resolution(kernel)['packages'],
        'kernel': {'package': kernel[0], 'version': kernel[1].split('-')[0]},
        'modules': {'boot': ['e1000.ko']},
        'boot': {'kernel': 'vmlinuz', 'initrd': 'initrd.img', 'append': 'console=ttyS0',
                 'ready_marker': 'MPQEMU-GUEST-READY', 'failure_marker': 'MPQEMU-GUEST-FAILED'},
        'ssh': {'user': 'root', 'key': 'id_ed25519', 'host_key': 'ssh-ed25519 AAAA'},
        'outputs': {name: {'sha256': image._sha256(os.path.join(plan.out_dir, name)),
                           'bytes': len(data)} for name, data in outputs.items()},
        **fields}
    with open(os.path.join(plan.out_dir, image.MANIFEST_NAME), 'w') as f:
        json.dump(manifest, f)
    return manifest


def _write_base(plan, kernel=KERNEL_57):
    return _write_build(plan, kernel, {'vmlinuz': b'kernel ' * 100, 'initrd.img': b'initrd',
                                       'id_ed25519': b'private', 'id_ed25519.pub': b'public'})


def test_a_derived_image_is_built_on_its_base_and_records_its_resolution(recipes):
    plan = image.Plan('lsi-boot')
    _write_base(plan.base)
    guest = image.build_recipe('lsi-boot')          # the disk for real, the base as found
    manifest = image.read_manifest(os.path.dirname(guest.manifest))
    base = image.read_manifest(plan.base.out_dir)
    assert manifest['base'] == {'recipe': 'tiny', 'key': plan.base.key,
                                'kernel': base['kernel']}
    assert manifest['packages'] == base['packages'] and manifest['kernel'] == base['kernel']
    assert image.resolution_mismatch(manifest, base) is None
    assert image.build_recipe('lsi-boot').manifest == guest.manifest     # cached


def test_a_derived_image_from_another_resolution_is_an_error_naming_both(recipes):
    """The bug of issue 15: lsi-boot with 6.1.0-50 beside tiny with 6.1.0-57."""
    plan = image.Plan('lsi-boot')
    _write_base(plan.base, KERNEL_57)
    _write_build(plan, KERNEL_50, {'disk.img': b'\0' * 4096},
                 base={'recipe': 'tiny', 'key': plan.base.key})
    with pytest.raises(image.ImageError) as err:
        image.build_recipe('lsi-boot')
    message = str(err.value)
    for part in ('lsi-boot', 'tiny', plan.key, plan.base.key, KERNEL_50[0], KERNEL_57[0],
                 f'{KERNEL_50[1]} in lsi-boot', f'{KERNEL_57[1]} in tiny'):
        assert part in message, part


def test_a_derived_image_recorded_on_another_base_key_is_an_error(recipes):
    plan = image.Plan('lsi-boot')
    _write_base(plan.base)
    _write_build(plan, KERNEL_57, {'disk.img': b'\0' * 4096},
                 base={'recipe': 'tiny', 'key': '0123456789abcdef'})
    with pytest.raises(image.ImageError, match=f'built on tiny key 0123456789abcdef.*'
                                               f'tiny \\(key {plan.base.key}\\)'):
        image.build_recipe('lsi-boot')


def test_a_truncated_output_is_never_used(recipes):
    """What a full disk leaves: the manifest's size and hash no longer match."""
    plan = image.Plan('tiny')
    _write_base(plan)
    assert image._cached(plan) is not None
    with open(os.path.join(plan.out_dir, 'vmlinuz'), 'r+b') as f:
        f.truncate(10)
    assert image._cached(plan) is None


KILLED_BUILD = textwrap.dedent('''
    import sys, time
    from harness.images import bootdisk, debs, image
    image.RECIPES_DIR = sys.argv[1]
    debs.resolve_cached = lambda request, cache_dir: {resolution!r}
    real_build = bootdisk.build
    def build_then_hang(*args):
        area = real_build(*args)
        print('disk written', flush=True)
        time.sleep(600)             # killed here, before the manifest and the rename
        return area
    bootdisk.build = build_then_hang
    image.build_recipe('lsi-boot')
''')


def test_a_killed_build_leaves_nothing_used_and_the_next_one_rebuilds(recipes, tmp_path):
    plan = image.Plan('lsi-boot')
    _write_base(plan.base)
    script = KILLED_BUILD.format(resolution=_resolution(KERNEL_57))
    proc = subprocess.Popen([sys.executable, '-c', script, str(recipes)],
                            stdout=subprocess.PIPE, text=True, cwd=image.paths.REPO_DIR,
                            env=dict(os.environ))
    try:
        assert proc.stdout.readline() == 'disk written\n'
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(KILL_WAIT_S)
    images = os.listdir(image.images_dir())
    leftovers = [e for e in images if e.startswith('.work-lsi-boot-')]
    assert leftovers and not os.path.exists(plan.out_dir)
    assert image._cached(plan) is None
    guest = image.build_recipe('lsi-boot')
    assert os.path.dirname(guest.manifest) == plan.out_dir
    assert not [e for e in os.listdir(image.images_dir()) if e.startswith('.work-')]


def test_images_planned_together_share_one_resolution(recipes, monkeypatch):
    """apt's lists change between two look-ups (apt-get update by another
    process): images planned together still come from the first answer."""
    answers = []

    def resolve(request, cache_dir):
        answers.append(KERNEL_57 if not answers else KERNEL_50)
        return _resolution(answers[-1])
    monkeypatch.setattr(debs, 'resolve_cached', resolve)
    base = image.Plan('tiny')
    _write_base(base)
    answers.clear()
    guests = image.build_recipes(['tiny', 'lsi-boot'])
    assert answers == [KERNEL_57]
    assert os.path.dirname(guests['tiny'].manifest) == base.out_dir
    manifest = image.read_manifest(os.path.dirname(guests['lsi-boot'].manifest))
    assert manifest['base']['key'] == base.key and manifest['kernel']['package'] == KERNEL_57[0]
    # Planned alone, lsi-boot would have asked apt again and got the other kernel.
    assert image.Plan('lsi-boot').base.key != base.key
