"""Guest images: recipes in tests/images/ built into cached artifacts, and
user-supplied images wrapped in the same ``GuestImage`` description.

A recipe is a directory ``tests/images/<name>/`` with a ``recipe.toml`` and
its guest-side sources.  Its outputs live in ``build/images/<name>-<key>/``
with a ``manifest.json``; the key hashes the recipe's files, this builder's
code, the Debian package versions apt resolves today and the versions of the
host tools whose output lands in the image.  An unchanged recipe is never
rebuilt; a changed one gets a new directory and the old one is removed.

The command line (``make images``) is harness/tools/images.py.
"""

import dataclasses
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import time
from typing import Dict, List, Optional

from ..base import locking, paths
from ..base.errors import HarnessError
from ..base.hosttools import run_tool
from ..base.units import MIB
from . import bootdisk, debs, guesttools, initramfs, pvhboot
from .elf import ElfFile

try:
    import tomllib
except ImportError:        # Python < 3.11
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

log = logging.getLogger(__name__)

GUEST_DIR = os.path.dirname(os.path.abspath(__file__))
RECIPES_DIR = os.path.join(paths.REPO_DIR, 'tests', 'images')
BUILDER_SOURCES = ('image.py', 'debs.py', 'elf.py', 'cpio.py', 'initramfs.py', 'guesttools.py',
                   'bootdisk.py', 'pvhboot.py', 'freestanding.py')
MANIFEST_NAME = 'manifest.json'
MANIFEST_FORMAT = 1
KEY_HEX_CHARS = 16
BUILD_LOCK_TIMEOUT_S = 600
TOOL_TIMEOUT_S = 60
# Host packages whose programs write bytes into a recipe kind's outputs:
# their versions are part of the cache key.
HOST_PACKAGES = {
    'initramfs': ('kmod', 'openssh-client', 'gcc', 'libc6-dev', 'binutils', 'lz4'),
    'syslinux-disk': ('mtools', 'syslinux'),
}
# Appended by the harness only where the accelerator delivers the LSI's
# INTx to the guest (KVM); see tests/images/tiny/recipe.toml.
SYM53C8XX_FLAG = 'mpqemu.sym53c8xx=1'
# With it, the scan's INQUIRY times out after 5.5 s instead of 20.5 s
# (scsi_mod's inq_timeout, applied by mpqemu-modules as modprobe would):
# an LSI that does not answer one INQUIRY in 5 s is broken for the suite,
# and a known issue that stalls every command shows 15 s sooner.
SYM53C8XX_ARGS = (SYM53C8XX_FLAG, 'scsi_mod.inq_timeout=5')
SYSLINUX_TEMPLATE_NAME = 'syslinux.cfg.in'
# [kernel] entry: how the kernel is entered.  "bzimage": Debian's vmlinuz
# as shipped (its decompressor runs first); "pvh": the same kernel repacked
# for the PVH loader (harness/images/pvhboot.py), still a bzImage to every
# boot loader.
KERNEL_ENTRIES = ('bzimage', 'pvh')
DISK_FORMATS = {'.qcow2': 'qcow2', '.img': 'raw', '.raw': 'raw'}


class ImageError(HarnessError):
    """A guest image could not be built, found or described."""


@dataclasses.dataclass(frozen=True)
class DataArea:
    """A region of a disk image outside any filesystem, free for IO tests."""
    offset_bytes: int
    size_bytes: int


@dataclasses.dataclass(frozen=True)
class GuestImage:
    """Everything the harness needs to boot a guest and log into it.

    Exactly one boot path is usual: ``kernel`` (+ ``initrd``, ``append``) for
    a -kernel boot, or ``disk`` for a firmware boot.  ``ready_marker`` is a
    console line the guest prints once SSH is up; None means "no marker,
    wait for SSH" (e.g. a cloud image).
    """
    name: str
    kernel: Optional[str] = None
    initrd: Optional[str] = None
    disk: Optional[str] = None
    disk_format: str = 'raw'
    append: str = ''
    ssh_user: str = 'root'
    ssh_key: Optional[str] = None
    ssh_password: Optional[str] = None
    # OpenSSH public key line of the guest's host key, when known: lets the
    # client verify it instead of trusting whatever answers.
    ssh_host_key: Optional[str] = None
    ready_marker: Optional[str] = None
    failure_marker: Optional[str] = None
    data_area: Optional[DataArea] = None
    manifest: Optional[str] = None

    def boot_append(self, load_sym53c8xx: bool = False, extra: str = '') -> str:
        """Kernel command line for this boot.  ``load_sym53c8xx`` only where
        the accelerator delivers the LSI's interrupts (KVM)."""
        words = [self.append, *(SYM53C8XX_ARGS if load_sym53c8xx else ()), extra]
        return ' '.join(w for w in words if w)


# ---------------------------------------------------------------- recipes

def images_dir() -> str:
    return os.path.join(paths.build_dir(), 'images')


def recipe_names() -> List[str]:
    return sorted(d for d in os.listdir(RECIPES_DIR)
                  if os.path.isfile(os.path.join(RECIPES_DIR, d, 'recipe.toml')))


def load_recipe(name: str) -> dict:
    path = os.path.join(RECIPES_DIR, name, 'recipe.toml')
    if not os.path.isfile(path):
        raise ImageError(f"no image recipe {name!r} (no {path}); recipes: "
                         f"{', '.join(recipe_names())}")
    if tomllib is None:
        raise ImageError("reading image recipes needs Python >= 3.11 (tomllib) or the "
                         "tomli package: pip install tomli")
    with open(path, 'rb') as f:
        recipe = tomllib.load(f)
    recipe['name'] = name
    recipe['dir'] = os.path.dirname(path)
    if recipe.get('kind') not in HOST_PACKAGES:
        raise ImageError(f"{path}: kind must be one of {', '.join(HOST_PACKAGES)}")
    if 'kernel' in recipe:
        entry = recipe['kernel'].setdefault('entry', KERNEL_ENTRIES[0])
        if entry not in KERNEL_ENTRIES:
            raise ImageError(f"{path}: [kernel] entry = {entry!r}; it must be one of "
                             f"{', '.join(KERNEL_ENTRIES)}")
    return recipe


def _hash_tree(h, top: str) -> None:
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            # The mode matters: the executable bit becomes the guest file's.
            h.update(f'{os.path.relpath(path, top)} {os.stat(path).st_mode & 0o111}\n'
                     .encode())
            with open(path, 'rb') as f:
                h.update(f.read())


def host_package_versions(packages) -> Dict[str, str]:
    try:
        proc = subprocess.run(['dpkg-query', '-W', '-f', '${Package} ${Version}\n',
                               *packages], capture_output=True, text=True,
                              timeout=TOOL_TIMEOUT_S)
    except FileNotFoundError:
        raise ImageError("dpkg-query not found: the image builder needs a Debian host "
                         "(or pass a user image: image=/path/to/disk)") from None
    versions = dict(line.split(' ', 1) for line in proc.stdout.splitlines()
                    if ' ' in line and line.split(' ', 1)[1])
    missing = [p for p in packages if p not in versions]
    if missing:
        raise ImageError(f"host packages missing for the image builder: "
                         f"apt-get install {' '.join(missing)}")
    return versions


def _package_request(recipe: dict) -> dict:
    return {'meta': {recipe['kernel']['meta_package']: recipe['kernel']['package_prefix']},
            'roots': sorted(recipe['userland']['packages'])}


class Plan:
    """What a build of one recipe would produce, and where (no side effects
    beyond apt look-ups, which are cached).  ``plans`` (name -> Plan) is
    shared by the plans of one run: a base is planned, and its packages
    resolved, once for itself and every image built on it."""

    def __init__(self, name: str, plans: Optional[Dict[str, 'Plan']] = None):
        plans = {} if plans is None else plans
        self.recipe = load_recipe(name)
        self.name = name
        base = self.recipe.get('base')
        self.base = (plans.get(base) or Plan(base, plans)) if base else None
        plans[name] = self
        self.host_packages = host_package_versions(HOST_PACKAGES[self.recipe['kind']])
        self.resolved = None
        if self.recipe['kind'] == 'initramfs':
            self.resolved = debs.resolve_cached(_package_request(self.recipe),
                                                os.path.join(images_dir(), 'debs'))
        h = hashlib.sha256()
        _hash_tree(h, self.recipe['dir'])
        # Guest tools compiled from tests/images/tools/ (outside the recipe).
        self.tools = guesttools.tool_specs(self.recipe, RECIPES_DIR)
        h.update(guesttools.key_material(self.tools))
        if self.recipe.get('kernel', {}).get('entry') == 'pvh':
            h.update(pvhboot.key_material())
        for source in BUILDER_SOURCES:
            with open(os.path.join(GUEST_DIR, source), 'rb') as f:
                h.update(f.read())
        h.update(json.dumps([self.resolved, self.host_packages,
                             self.base.key if self.base else None],
                            sort_keys=True).encode())
        self.key = h.hexdigest()[:KEY_HEX_CHARS]
        self.out_dir = os.path.join(images_dir(), f'{name}-{self.key}')


# ---------------------------------------------------------------- manifest

def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(MIB), b''):
            h.update(chunk)
    return h.hexdigest()


def _outputs_intact(out_dir: str, manifest: dict) -> Optional[str]:
    """None when every output matches its recorded sha256, else why not."""
    for name, rec in manifest['outputs'].items():
        path = os.path.join(out_dir, name)
        if not os.path.isfile(path):
            return f"{path} is missing"
        if os.path.getsize(path) != rec['bytes'] or _sha256(path) != rec['sha256']:
            return f"{path} changed since it was built (a test wrote to the cached copy?)"
    return None


def read_manifest(out_dir: str) -> dict:
    with open(os.path.join(out_dir, MANIFEST_NAME)) as f:
        return json.load(f)


def image_from_manifest(out_dir: str) -> GuestImage:
    manifest = read_manifest(out_dir)
    boot, ssh = manifest['boot'], manifest['ssh']

    def path(rel):
        return os.path.join(out_dir, rel) if rel else None

    area = manifest.get('data_area')
    return GuestImage(
        name=manifest['recipe'], kernel=path(boot.get('kernel')),
        initrd=path(boot.get('initrd')), disk=path(boot.get('disk')),
        disk_format=boot.get('disk_format', 'raw'), append=boot.get('append', ''),
        ssh_user=ssh['user'], ssh_key=path(ssh.get('key')),
        ssh_password=ssh.get('password'), ssh_host_key=ssh.get('host_key'),
        ready_marker=boot.get('ready_marker'), failure_marker=boot.get('failure_marker'),
        data_area=DataArea(area['offset_bytes'], area['size_bytes']) if area else None,
        manifest=os.path.join(out_dir, MANIFEST_NAME))


# ---------------------------------------------------------------- builders

def _staged_tool(stage: str, program: str) -> List[str]:
    """argv prefix that runs a dynamically linked program from the unpacked
    packages with their own loader and libraries, not the host's."""
    host_program = os.path.join(stage, initramfs.stage_realpath(stage, program))
    interp = ElfFile(host_program).interpreter
    loader = os.path.join(stage, initramfs.stage_realpath(stage, interp))
    libdirs = ':'.join(os.path.join(stage, d) for d in initramfs.LIBRARY_DIRS)
    return [loader, '--library-path', libdirs, host_program]


def _run_tool(argv: List[str], fix: str) -> str:
    return run_tool(argv, fix, ImageError)


def _make_keys(stage: str, out_dir: str, work: str) -> Dict[str, str]:
    """Client key pair (OpenSSH format, what paramiko loads) as an output;
    the guest's dropbear host key, made with the packaged dropbearkey."""
    client_key = os.path.join(out_dir, 'id_ed25519')
    _run_tool(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'mpqemu-harness',
               '-f', client_key], 'apt-get install openssh-client')
    if not os.path.lexists(os.path.join(stage, 'usr/bin/dropbearkey')):
        raise ImageError("the recipe's packages have no /usr/bin/dropbearkey: "
                         "add dropbear-bin to [userland] packages")
    host_key = os.path.join(work, 'dropbear_ed25519_host_key')
    dropbearkey = _staged_tool(stage, '/usr/bin/dropbearkey')
    _run_tool(dropbearkey + ['-t', 'ed25519', '-f', host_key], 'fix the staged dropbear-bin')
    public = _run_tool(dropbearkey + ['-y', '-f', host_key], 'fix the staged dropbear-bin')
    host_public = next((line.strip() for line in public.splitlines()
                        if line.startswith('ssh-ed25519 ')), None)
    if not host_public:
        raise ImageError(f"dropbearkey -y printed no ssh-ed25519 line: {public!r}")
    return {'client_key': client_key, 'host_key': host_key,
            'host_public': ' '.join(host_public.split()[:2])}


def _settings_file(guest: dict) -> bytes:
    """/etc/mpqemu/settings, sourced by rcS."""
    values = {'HOSTNAME': guest['hostname'], 'GUEST_IP': guest['ip'],
              'GATEWAY': guest['gateway'], 'READY_MARKER': guest['ready_marker'],
              'FAILURE_MARKER': guest['failure_marker']}
    return ''.join(f'{k}={shlex.quote(v)}\n' for k, v in values.items()).encode()


def _build_initramfs(plan: Plan, out_dir: str, work: str) -> dict:
    recipe = plan.recipe
    kernel_pkg = plan.resolved['meta'][recipe['kernel']['meta_package']]
    log.info("%s: %d Debian packages (kernel %s), downloaded once into %s", plan.name,
             len(plan.resolved['packages']), kernel_pkg, os.path.join(images_dir(), 'debs'))
    deb_paths = debs.download(plan.resolved['packages'], os.path.join(images_dir(), 'debs'))
    stage = os.path.join(work, 'stage')
    kernel_root = os.path.join(work, 'kernel')
    for name, deb in sorted(deb_paths.items()):
        debs.extract(deb, kernel_root if name == kernel_pkg else stage)
    kernel_version = initramfs.kernel_version_of(kernel_root)
    kernel = {'package': kernel_pkg, 'version': kernel_version,
              'entry': recipe['kernel']['entry']}
    vmlinuz = os.path.join(kernel_root, 'boot', f'vmlinuz-{kernel_version}')
    if kernel['entry'] == 'pvh':
        kernel['pvh'] = pvhboot.repack(vmlinuz, os.path.join(out_dir, 'vmlinuz'), work)
        log.info("%s: kernel repacked for the PVH loader: %d -> %d bytes", plan.name,
                 kernel['pvh']['bzimage_bytes'], kernel['pvh']['bytes'])
    else:
        shutil.copyfile(vmlinuz, os.path.join(out_dir, 'vmlinuz'))

    tree = initramfs.Tree()
    initramfs.add_base_layout(tree)
    tree.add_overlay(os.path.join(recipe['dir'], 'rootfs'))
    tools = guesttools.build_tools(plan.tools, work)
    for install, tool in tools.items():
        tree.add_host_file(install, tool.pop('host_path'), 0o755)
    programs = []
    for binary in recipe['userland']['binaries']:
        programs += initramfs.add_program(tree, stage, binary)
    if '/bin/busybox' in recipe['userland']['binaries']:
        initramfs.add_busybox_applets(tree, os.path.join(stage, 'bin', 'busybox'))
    modules = initramfs.add_module_groups(tree, kernel_root, kernel_version,
                                          recipe['modules'])
    guest = recipe['guest']
    tree.add_file('etc/mpqemu/settings', _settings_file(guest))
    keys = _make_keys(stage, out_dir, work)
    tree.add_dir('etc/dropbear', 0o700)
    tree.add_host_file('etc/dropbear/dropbear_ed25519_host_key', keys['host_key'], 0o600)
    # dropbear refuses keys in a home or .ssh writable by others.
    tree.add_dir('root', 0o700)
    tree.add_dir('root/.ssh', 0o700)
    tree.add_host_file('root/.ssh/authorized_keys', keys['client_key'] + '.pub', 0o600)
    tree.write_cpio_gz(os.path.join(out_dir, 'initrd.img'))

    return {
        'packages': plan.resolved['packages'],
        'kernel': kernel,
        'modules': modules,
        'programs': sorted(programs),
        'tools': tools,
        'boot': {'kernel': 'vmlinuz', 'initrd': 'initrd.img',
                 'append': recipe['kernel']['append'],
                 'ready_marker': guest['ready_marker'],
                 'failure_marker': guest['failure_marker']},
        'ssh': {'user': guest['ssh_user'], 'key': 'id_ed25519',
                'host_key': keys['host_public']},
    }


def _build_syslinux_disk(plan: Plan, out_dir: str, work: str) -> dict:
    # The base of this plan, not a new plan of it: a second apt look-up
    # could resolve other versions (apt's lists updated meanwhile) than the
    # ones this image's key was made from.
    base_dir = os.path.dirname(_build(plan.base).manifest)
    base = read_manifest(base_dir)
    if base['key'] != plan.base.key:
        raise ImageError(f"{plan.base.name}: the build at {base_dir} has key {base['key']}, "
                         f"not {plan.base.key}, the one {plan.name} is being built on")
    disk_conf = plan.recipe['disk']
    # Kept with the disk: prepare_boot_disk() renders it again per run.
    shutil.copyfile(os.path.join(plan.recipe['dir'], disk_conf['syslinux_cfg']),
                    os.path.join(out_dir, SYSLINUX_TEMPLATE_NAME))
    with open(os.path.join(out_dir, SYSLINUX_TEMPLATE_NAME)) as f:
        template = f.read()
    disk = os.path.join(out_dir, 'disk.img')
    area = bootdisk.build(
        disk, disk_conf['fat_size_mib'], disk_conf['data_area_mib'],
        disk_conf['volume_label'],
        {'vmlinuz': os.path.join(base_dir, base['boot']['kernel']),
         'initrd.img': os.path.join(base_dir, base['boot']['initrd'])},
        bootdisk.render_syslinux_cfg(template, base['boot']['append']))
    for name in ('id_ed25519', 'id_ed25519.pub'):
        shutil.copyfile(os.path.join(base_dir, name), os.path.join(out_dir, name))
    os.chmod(os.path.join(out_dir, 'id_ed25519'), 0o600)
    area['sector_pattern'] = ("each 512-byte sector = 32 x ASCII 'mpqemu %08x\\n' "
                              "of its absolute LBA (data_area_sector(lba))")
    boot = dict(base['boot'], disk='disk.img', disk_format='raw')
    del boot['kernel'], boot['initrd']
    return {
        'base': {'recipe': plan.base.name, 'key': plan.base.key, 'kernel': base['kernel']},
        'packages': base['packages'],
        'kernel': base['kernel'],
        'modules': base['modules'],
        'boot': boot,
        'ssh': base['ssh'],
        'data_area': area,
        'syslinux_cfg_template': SYSLINUX_TEMPLATE_NAME,
    }


BUILDERS = {'initramfs': _build_initramfs, 'syslinux-disk': _build_syslinux_disk}


# ---------------------------------------------------------------- cache

def _build_lock(name: str):
    """One builder per recipe at a time, across processes (parallel test
    runners may all ask for the same image on first use)."""
    return locking.exclusive(os.path.join(images_dir(), f'.{name}.lock'),
                             BUILD_LOCK_TIMEOUT_S, ImageError, f'a build of image {name!r}')


def resolution_mismatch(manifest: dict, base_manifest: dict) -> Optional[str]:
    """None when a derived image's manifest was built on the base build
    ``base_manifest`` describes, from the same resolved package versions;
    else both images, both keys and the versions that differ."""
    ours, theirs = manifest['packages'], base_manifest['packages']
    differ = sorted(n for n in set(ours) | set(theirs) if ours.get(n) != theirs.get(n))
    if manifest['base']['key'] == base_manifest['key'] and not differ and \
            manifest['kernel'] == base_manifest['kernel']:
        return None
    name, base_name = manifest['recipe'], base_manifest['recipe']
    versions = '; '.join(f"{n}: {ours.get(n, 'absent')} in {name}, "
                         f"{theirs.get(n, 'absent')} in {base_name}" for n in differ[:6])
    return (f"image {name} (key {manifest['key']}) was built on {base_name} key "
            f"{manifest['base']['key']} with {manifest['kernel']['package']} "
            f"{manifest['kernel']['version']}, but {base_name} (key {base_manifest['key']}) "
            f"has {base_manifest['kernel']['package']} {base_manifest['kernel']['version']}"
            + (f" ({versions}{', ...' if len(differ) > 6 else ''})" if differ else ''))


def _cached(plan: Plan) -> Optional[GuestImage]:
    if not os.path.isfile(os.path.join(plan.out_dir, MANIFEST_NAME)):
        return None
    manifest = read_manifest(plan.out_dir)
    problem = _outputs_intact(plan.out_dir, manifest)
    if problem:
        log.warning("%s: rebuilding: %s", plan.name, problem)
        return None
    base_dir = plan.base.out_dir if plan.base else None
    if base_dir and os.path.isfile(os.path.join(base_dir, MANIFEST_NAME)):
        mismatch = resolution_mismatch(manifest, read_manifest(base_dir))
        if mismatch:
            raise ImageError(f"{mismatch}: one run must use one package resolution; "
                             f"remove {plan.out_dir} and {base_dir} and run make images")
    return image_from_manifest(plan.out_dir)


def _prune_other_builds(plan: Plan) -> None:
    pattern = re.compile(rf'{re.escape(plan.name)}-[0-9a-f]{{{KEY_HEX_CHARS}}}$')
    for entry in os.listdir(images_dir()):
        path = os.path.join(images_dir(), entry)
        if pattern.match(entry) and path != plan.out_dir:
            log.info("%s: removing outdated build %s", plan.name, path)
            shutil.rmtree(path, ignore_errors=True)


def build_recipe(name: str) -> GuestImage:
    """The recipe's image, built unless an intact build with the same key
    exists."""
    return _build(Plan(name))


def build_recipes(names: List[str]) -> Dict[str, GuestImage]:
    """Each recipe's image, from one plan of them all: an image and its base
    share one package resolution even if apt's lists change meanwhile."""
    plans: Dict[str, Plan] = {}
    for name in names:
        if name not in plans:
            Plan(name, plans)
    return {name: _build(plans[name]) for name in names}


def _build(plan: Plan) -> GuestImage:
    name = plan.name
    image = _cached(plan)
    if image:
        return image
    with _build_lock(name):
        image = _cached(plan)          # built by another process meanwhile
        if image:
            return image
        started = time.monotonic()
        log.info("%s: building %s", name, plan.out_dir)
        # Under the lock, any other work directory of this recipe is left
        # over from a build that was killed.
        leftover = re.compile(rf'\.work-{re.escape(name)}-\d+$')
        for entry in os.listdir(images_dir()):
            if leftover.match(entry):
                shutil.rmtree(os.path.join(images_dir(), entry), ignore_errors=True)
        work = os.path.join(images_dir(), f'.work-{name}-{os.getpid()}')
        tmp_out = os.path.join(work, 'out')
        os.makedirs(tmp_out)
        try:
            details = BUILDERS[plan.recipe['kind']](plan, tmp_out, work)
            outputs = {entry: {'sha256': _sha256(os.path.join(tmp_out, entry)),
                               'bytes': os.path.getsize(os.path.join(tmp_out, entry))}
                       for entry in sorted(os.listdir(tmp_out))}
            manifest = {'format': MANIFEST_FORMAT, 'recipe': name, 'key': plan.key,
                        'kind': plan.recipe['kind'],
                        'description': plan.recipe.get('description', ''),
                        'built_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                        'build_seconds': round(time.monotonic() - started, 1),
                        'host_packages': plan.host_packages,
                        **details, 'outputs': outputs}
            with open(os.path.join(tmp_out, MANIFEST_NAME), 'w') as f:
                json.dump(manifest, f, indent=1, sort_keys=True)
            shutil.rmtree(plan.out_dir, ignore_errors=True)
            os.rename(tmp_out, plan.out_dir)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _prune_other_builds(plan)
        log.info("%s: built in %.1f s", name, time.monotonic() - started)
        return image_from_manifest(plan.out_dir)


# ---------------------------------------------------------------- public API

def resolve_image(spec: str, *, ssh_user: Optional[str] = None,
                  ssh_key: Optional[str] = None, ssh_password: Optional[str] = None,
                  ready_marker: Optional[str] = None,
                  append: Optional[str] = None) -> GuestImage:
    """``spec`` is a recipe name (built on first use), a directory with a
    manifest.json (a build from elsewhere), or a disk image file (qcow2 or
    raw, e.g. a cloud image).  The keyword arguments override or supply what
    the image itself does not say (a cloud image's login, typically)."""
    if spec in recipe_names():
        image = build_recipe(spec)
    elif os.path.isfile(os.path.join(spec, MANIFEST_NAME)):
        image = image_from_manifest(os.path.abspath(spec))
    elif os.path.isfile(spec):
        suffix = os.path.splitext(spec)[1].lower()
        image = GuestImage(name=os.path.basename(spec), disk=os.path.abspath(spec),
                           disk_format=DISK_FORMATS.get(suffix, 'raw'),
                           ssh_user=ssh_user or 'root')
        if not (ssh_key or ssh_password):
            raise ImageError(f"image {spec} is a user-supplied disk: give its SSH "
                             f"credentials (image_key=... or image_password=...)")
    else:
        raise ImageError(f"image {spec!r} is neither a recipe ({', '.join(recipe_names())}), "
                         f"a directory with {MANIFEST_NAME} nor an existing disk file")
    overrides = {'ssh_user': ssh_user, 'ssh_key': ssh_key, 'ssh_password': ssh_password,
                 'ready_marker': ready_marker, 'append': append}
    return dataclasses.replace(image, **{k: v for k, v in overrides.items()
                                         if v is not None})


def prepare_boot_disk(image: GuestImage, dest: str, load_sym53c8xx: bool = False,
                      extra_append: str = '') -> str:
    """A private, writable copy of a syslinux boot disk at ``dest`` whose
    kernel command line is ``image.boot_append(...)``; the cached image is
    never written.  Returns ``dest``."""
    if not image.disk or not image.manifest:
        raise ImageError(f"image {image.name} has no built boot disk to prepare")
    out_dir = os.path.dirname(image.manifest)
    template_name = read_manifest(out_dir).get('syslinux_cfg_template')
    if not template_name:
        raise ImageError(f"image {image.name} is not a syslinux disk")
    with open(os.path.join(out_dir, template_name)) as f:
        template = f.read()
    bootdisk.sparse_copy(image.disk, dest)
    bootdisk.write_syslinux_cfg(dest, bootdisk.render_syslinux_cfg(
        template, image.boot_append(load_sym53c8xx, extra_append)))
    return dest
