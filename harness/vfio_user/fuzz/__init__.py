"""The vfio-user transport of the fuzzer (harness/fuzz): messages to a
remote's ``x-vfio-user-server``, with the harness as its client.

  families  the message families
  remotes   served remotes: connecting, set-up, restore, follow-up

:data:`TRANSPORT` is what harness.fuzz.campaign.Fuzzer takes.
"""

import os

from ...fuzz.corpus import CORPUS_ROOT
from ...fuzz.transport import Transport
from ...mpqemu.remote import VFIO_USER
from .families import FAMILIES
from .remotes import VfuRemotePool

TRANSPORT = Transport(VFIO_USER, os.path.join(CORPUS_ROOT, 'corpus-vfio-user'), FAMILIES,
                      VfuRemotePool, tracks_fds=True)
