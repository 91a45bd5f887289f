"""The proxy transport of the fuzzer (harness/fuzz): the mpqemu protocol
to a remote's ``x-remote-object``, through a fake proxy on its socket.

  families  the message families
  remotes   starting remotes (a spare always starting), their setup,
            restore and follow-up

:data:`TRANSPORT` is what harness.fuzz.campaign.Fuzzer takes.  A remote
keeps the fds of messages that take none (fam_fds_on_request says so), so
fds are not tracked here until that is registered as a known issue.
"""

import os

from ...fuzz.corpus import CORPUS_ROOT
from ...fuzz.transport import Transport
from ..remote import PROXY
from .families import FAMILIES
from .remotes import RemotePool

TRANSPORT = Transport(PROXY, os.path.join(CORPUS_ROOT, 'corpus'), FAMILIES, RemotePool,
                      tracks_fds=False)
