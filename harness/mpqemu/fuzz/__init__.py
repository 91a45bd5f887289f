"""The proxy transport of the fuzzer (harness/fuzz): the mpqemu protocol
to a remote's ``x-remote-object``, through a fake proxy on its socket.

  families  the message families, and generating case ``index`` of a seed
  remotes   starting remotes (a spare always starting), their setup,
            restore and follow-up

:data:`TRANSPORT` is what harness.fuzz.campaign.Fuzzer takes.
"""

import os
from typing import Sequence

from ...fuzz.cases import Case, Layout
from ...fuzz.corpus import CORPUS_ROOT
from ...qemu.binary import Capabilities
from ..remote import PROXY
from . import families
from .remotes import RemotePool


class ProxyTransport:
    name = PROXY
    corpus_dir = os.path.join(CORPUS_ROOT, 'corpus')
    # A remote keeps fds of messages that take none (fam_fds_on_request
    # says so); not tracked until that is registered as a known issue.
    tracks_fds = False

    def pool(self, caps: Capabilities, logdir: str) -> RemotePool:
        return RemotePool(caps, logdir)

    def generate(self, seed: int, index: int, layout: Layout) -> Case:
        return families.generate(seed, index, layout)

    def families(self) -> Sequence[str]:
        return families.names()


TRANSPORT = ProxyTransport()
