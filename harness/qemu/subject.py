"""Which QEMU binary a parameter names, prepared if need be.

A subject is ``deb:SUITE`` (Debian's package from that suite, run from a
cached root: harness/qemu/debroot.py), ``src:QEMU_SRC`` (built from source,
cached: harness/qemu/build.py, features as ``+name``) or a binary's path or
name on $PATH.
"""

from typing import Callable, Optional

from ..base import params
from ..base.errors import ParameterError
from . import build, debroot

DEB, SRC = 'deb:', 'src:'


def binary(spec: str, log: Callable[[str], None] = print) -> str:
    """The executable for ``spec``: a root made or a build run on first
    use (minutes), found in the cache afterwards."""
    if spec.startswith(DEB):
        return debroot.prepare(spec[len(DEB):], log)
    if spec.startswith(SRC):
        return build.build(spec[len(SRC):], log=log).binary
    return spec


def ready(spec: str) -> bool:
    """True if ``binary(spec)`` will not build or download anything."""
    if spec.startswith(DEB):
        return debroot.prepared(spec[len(DEB):]) is not None
    if spec.startswith(SRC):
        return build.cached_result(spec[len(SRC):]) is not None
    return True


def under_test(lookup: Optional[Callable[[str], Optional[str]]] = None) -> str:
    """The subject the parameters name as the QEMU under test: qemu_src
    (``src:``), qemu_deb (``deb:``), else qemu_bin (a binary, or itself a
    subject).  ParameterError if both qemu_src and qemu_deb are given."""
    src = params.get_optional('qemu_src', lookup)
    deb = params.get_optional('qemu_deb', lookup)
    if src and deb:
        raise ParameterError(f"qemu_src={src} and qemu_deb={deb}: give one QEMU to test")
    if src:
        return SRC + src
    if deb:
        return DEB + deb
    return params.get('qemu_bin', lookup)
