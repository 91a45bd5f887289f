"""The vfio-user transport of the fuzzer (harness/fuzz): messages to a
remote's ``x-vfio-user-server``, with the harness as its client.

  families  the message families, and generating case ``index`` of a seed
  remotes   served remotes: connecting, set-up, restore, follow-up

:data:`TRANSPORT` is what harness.fuzz.campaign.Fuzzer takes.
"""

import os
from typing import Sequence

from ...fuzz.cases import Case, Layout
from ...fuzz.corpus import CORPUS_ROOT
from ...mpqemu.remote import VFIO_USER
from ...qemu.binary import Capabilities
from . import families
from .remotes import VfuRemotePool


class VfioUserTransport:
    name = VFIO_USER
    corpus_dir = os.path.join(CORPUS_ROOT, 'corpus-vfio-user')
    tracks_fds = True

    def pool(self, caps: Capabilities, logdir: str) -> VfuRemotePool:
        return VfuRemotePool(caps, logdir)

    def generate(self, seed: int, index: int, layout: Layout) -> Case:
        return families.generate(seed, index, layout)

    def families(self) -> Sequence[str]:
        return families.names()


TRANSPORT = VfioUserTransport()
