"""Guest-side programs built from source in tests/images/ and put into an
image: C files compiled on the host with ``gcc -static -O2`` (Debian's
libc6-dev has a static libc), so the guest needs no loader or libraries.

A recipe lists them as::

    [[tools]]
    source = "tools/lsi-dio.c"     # relative to tests/images/
    install = "/usr/bin/lsi-dio"

The image's cache key covers each source and the compiler's identity
(:func:`key_material`), so an edited tool or a new gcc rebuilds the image.
"""

import hashlib
import os
from typing import Dict, List

from ..base.errors import HarnessError
from ..base.hosttools import run_tool

COMPILER = 'gcc'
CFLAGS = ('-static', '-O2', '-Wall', '-s')
COMPILE_TIMEOUT_S = 120


class GuestToolError(HarnessError):
    """A guest tool could not be compiled."""


def tool_specs(recipe: dict, recipes_dir: str) -> List[Dict[str, str]]:
    """The recipe's ``[[tools]]`` with absolute source paths, checked."""
    specs = []
    for entry in recipe.get('tools', []):
        if set(entry) != {'source', 'install'} or not entry['install'].startswith('/'):
            raise GuestToolError(f"recipe {recipe['name']}: each [[tools]] entry needs "
                                 f"source = 'tools/x.c' and install = '/usr/bin/x', "
                                 f"not {entry}")
        path = os.path.normpath(os.path.join(recipes_dir, entry['source']))
        if not os.path.isfile(path):
            raise GuestToolError(f"recipe {recipe['name']}: tool source {path} does not exist")
        specs.append({'source': entry['source'], 'path': path, 'install': entry['install']})
    return specs


def compiler_identity() -> str:
    """First line of ``gcc --version`` (it names Debian's package revision)."""
    out = run_tool([COMPILER, '--version'], "the image's guest tools are compiled on the "
                   "host: apt-get install gcc libc6-dev", GuestToolError, COMPILE_TIMEOUT_S)
    return out.splitlines()[0] if out else ''


def key_material(specs: List[Dict[str, str]]) -> bytes:
    """What of the tools goes into the image's cache key."""
    if not specs:
        return b''
    h = hashlib.sha256()
    h.update(compiler_identity().encode())
    h.update(' '.join(CFLAGS).encode())
    for spec in specs:
        h.update(f"{spec['source']} {spec['install']}\n".encode())
        with open(spec['path'], 'rb') as f:
            h.update(f.read())
    return h.hexdigest().encode()


def compile_tool(spec: Dict[str, str], out_path: str) -> None:
    argv = [COMPILER, *CFLAGS, '-o', out_path, spec['path']]
    try:
        run_tool(argv, 'apt-get install gcc libc6-dev', GuestToolError, COMPILE_TIMEOUT_S)
    except GuestToolError as err:
        if 'cannot find -lc' in str(err):
            raise GuestToolError(f"{err}\n(static libc missing? apt-get install "
                                 f"libc6-dev)") from None
        raise


def build_tools(specs: List[Dict[str, str]], work: str) -> Dict[str, Dict[str, str]]:
    """Compile every tool into ``work``; returns install path ->
    {'host_path', 'source', 'source_sha256'}."""
    built = {}
    for spec in specs:
        out = os.path.join(work, 'tool-' + os.path.basename(spec['install']))
        compile_tool(spec, out)
        with open(spec['path'], 'rb') as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        built[spec['install']] = {'host_path': out, 'source': spec['source'],
                                  'source_sha256': digest}
    return built
