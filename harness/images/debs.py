"""Debian packages as build inputs: resolve versions with apt-cache, fetch
them with ``apt-get download`` and unpack them with ``dpkg-deb -x``.

Nothing is installed on the host and nothing needs root, except that apt's
package lists must exist (``apt-get update``, done once as root).

apt-cache takes about a second per call on hosts without apt's binary
cache, so a resolution is remembered under the deb cache, keyed by the
state of apt's lists: versions only change when those lists do.
"""

import glob
import hashlib
import json
import os
import re
from typing import Dict, Iterable, List

from ..base.errors import HarnessError
from ..base.hosttools import run_tool

APT_STATE_DIRS = ('/var/lib/apt/lists', '/etc/apt')
APT_TIMEOUT_S = 300
EXTRACT_TIMEOUT_S = 120


class PackageError(HarnessError):
    """A package could not be resolved, downloaded or unpacked."""


def _run(argv: List[str], what: str, cwd: str = None,
         timeout_s: float = APT_TIMEOUT_S) -> str:
    try:
        return run_tool(argv, 'this builder needs a Debian host with apt and dpkg',
                        PackageError, timeout_s, cwd=cwd, what=what)
    except PackageError as err:
        raise PackageError(f"{err}\nIf a package or version is missing, run 'apt-get "
                           f"update' as root and retry; if this timed out, check the "
                           f"network path to the Debian mirror.") from None


def apt_state_fingerprint() -> str:
    """A hash that changes whenever ``apt-get update`` or apt's configuration
    (sources, pins) could change which versions apt-cache reports."""
    h = hashlib.sha256()
    for top in APT_STATE_DIRS:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if d not in ('partial', 'auxfiles'))
            for name in sorted(filenames):
                if name == 'lock':
                    continue
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                h.update(f'{path} {st.st_size} {st.st_mtime_ns}\n'.encode())
    return h.hexdigest()


def _first_alternatives(depends: str) -> List[str]:
    """Package names from a Depends field, first alternative of each clause,
    without version constraints or architecture qualifiers."""
    names = []
    for clause in filter(None, (c.strip() for c in depends.split(','))):
        first = clause.split('|')[0].strip()
        names.append(re.split(r'[\s(:]', first, maxsplit=1)[0])
    return names


def apt_show(packages: Iterable[str]) -> Dict[str, dict]:
    """Candidate version and dependencies of each package (one apt-cache call)."""
    packages = sorted(set(packages))
    out = _run(['apt-cache', 'show', '--no-all-versions', *packages],
               f"apt-cache show {' '.join(packages)}")
    found = {}
    for stanza in out.split('\n\n'):
        fields = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace() and ':' in line:
                key, value = line.split(':', 1)
                fields[key] = value.strip()
        if 'Package' in fields:
            found[fields['Package']] = {
                'version': fields['Version'],
                'depends': _first_alternatives(fields.get('Pre-Depends', '') + ',' +
                                               fields.get('Depends', '')),
            }
    missing = set(packages) - set(found)
    if missing:
        raise PackageError(f"apt-cache knows no package {', '.join(sorted(missing))}: "
                           f"run 'apt-get update' as root, or fix the recipe")
    return found


def resolve_meta(meta_package: str, prefix: str) -> str:
    """The package a meta-package such as linux-image-amd64 points at today."""
    deps = apt_show([meta_package])[meta_package]['depends']
    matches = [d for d in deps if d.startswith(prefix)]
    if not matches:
        raise PackageError(f"{meta_package} depends on no {prefix}* package "
                           f"(depends: {deps}); the recipe's meta-package is wrong")
    return matches[0]


def resolve_closure(roots: Iterable[str]) -> Dict[str, str]:
    """name -> candidate version for ``roots`` and everything they
    (Pre-)Depend on, recursively."""
    versions: Dict[str, str] = {}
    todo = set(roots)
    while todo:
        info = apt_show(todo)
        versions.update({name: i['version'] for name, i in info.items()})
        todo = {d for i in info.values() for d in i['depends']} - set(versions)
    return versions


def resolve_cached(request: dict, cache_dir: str) -> dict:
    """``request`` = {'meta': {meta_package: prefix}, 'roots': [...]}; returns
    {'meta': {meta: package}, 'packages': {name: version}}, reusing an earlier
    answer while apt's lists are unchanged."""
    key = hashlib.sha256(json.dumps(request, sort_keys=True).encode() +
                         apt_state_fingerprint().encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f'resolved-{key}.json')
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    meta = {m: resolve_meta(m, prefix) for m, prefix in request['meta'].items()}
    packages = resolve_closure(request['roots']) if request['roots'] else {}
    # A meta-package's target is wanted as itself, not with its Depends
    # (the kernel's pull in initramfs-tools and friends).
    if meta:
        packages.update({name: info['version']
                         for name, info in apt_show(meta.values()).items()})
    answer = {'meta': meta, 'packages': dict(sorted(packages.items()))}
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f'{path}.{os.getpid()}'
    with open(tmp, 'w') as f:
        json.dump(answer, f, indent=1)
    os.replace(tmp, path)
    return answer


def _deb_glob(name: str, version: str) -> str:
    # apt-get download escapes the epoch colon as %3a in the file name.
    return f"{name}_{version.replace(':', '%3a')}_*.deb"


def download(packages: Dict[str, str], deb_dir: str) -> Dict[str, str]:
    """Fetch each name=version into ``deb_dir`` (once); return name -> .deb path."""
    os.makedirs(deb_dir, exist_ok=True)

    def find(name, version):
        hits = glob.glob(os.path.join(deb_dir, _deb_glob(name, version)))
        return hits[0] if hits else None

    missing = [f'{n}={v}' for n, v in packages.items() if not find(n, v)]
    if missing:
        _run(['apt-get', 'download', *missing], f"apt-get download {' '.join(missing)}",
             cwd=deb_dir)
    paths = {}
    for name, version in packages.items():
        path = find(name, version)
        if not path:
            raise PackageError(f"apt-get download reported success but no "
                               f"{_deb_glob(name, version)} is in {deb_dir}")
        paths[name] = path
    return paths


def extract(deb_path: str, dest: str) -> None:
    """Unpack a .deb's files (not its maintainer scripts) under ``dest``."""
    os.makedirs(dest, exist_ok=True)
    _run(['dpkg-deb', '-x', deb_path, dest], f"dpkg-deb -x {deb_path}",
         timeout_s=EXTRACT_TIMEOUT_S)
