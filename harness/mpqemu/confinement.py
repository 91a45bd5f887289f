"""Confined remotes: a seccomp sandbox and an unprivileged user.

A remote emulates a device for a guest that may attack it; once it is
compromised, confinement limits what it can do on the host.  Two parts,
each taken where the remote's QEMU has it (harness/qemu/binary.py probes
both):

the sandbox
    ``-sandbox on,obsolete=deny,spawn=deny,resourcecontrol=deny`` (QEMU
    built with seccomp): a filter installed while QEMU parses its options
    (system/vl.c ``parse_sandbox``), with no_new_privs set by libseccomp;
    a denied system call kills the process with SIGSYS.
the user
    ``-runas USER`` (QEMU 7.2) or ``-run-with user=USER`` (9.1 and later):
    QEMU drops to ``USER`` in ``os_setup_post()`` (os-posix.c
    ``change_process_uid``), after every device, drive and
    ``x-vfio-user-server`` socket of the command line is set up, just
    before the main loop.  So the remote opens its disk and creates its
    socket as root, and anything it opens later (a ``blockdev-add``, a
    compromised device's ``open``) it opens as ``USER``, without
    capabilities.

``elevateprivileges=deny`` belongs to the sandbox only when QEMU does not
change user: the filter forbids setgid/setuid, which
``change_process_uid`` calls after the filter is in place, so the
remote dies at start-up of SIGSYS (tests/known_issues/
sandbox-elevateprivileges-deny-kills-runas.json).  Once QEMU has
dropped to an unprivileged user with no capabilities, set*id cannot raise
its privileges anyway.

The user is a system user that this module creates when run as root
(:func:`ensure_user`); anyone else gets the command to run.
"""

import dataclasses
import os
import pwd
import subprocess
from typing import List, Optional

from ..base.errors import HarnessError, ParameterError, QEMUBinaryError
from ..base.params import CONFINE_CHOICES
from ..qemu.binary import Capabilities

REMOTE_USER = 'mpqemu-remote'
SANDBOX_DENY = ('obsolete', 'spawn', 'resourcecontrol')
ELEVATE_PRIVILEGES_DENY = 'elevateprivileges=deny'
USERADD = ('useradd', '--system', '--no-create-home', '--shell', '/usr/sbin/nologin')
USERADD_TIMEOUT_S = 30.0
# useradd(8): exit status 9 is "username or UID already in use", which a
# parallel test creating the same user makes.
USERADD_EXISTS = 9


def useradd_command(user: str = REMOTE_USER) -> str:
    return ' '.join(USERADD + (user,))


def ensure_user(user: str = REMOTE_USER) -> pwd.struct_passwd:
    """The account remotes run as, created (as a system user without a home
    or a login shell) when missing; idempotent, and safe against parallel
    tests creating it at once."""
    try:
        return pwd.getpwnam(user)
    except KeyError:
        pass
    if os.geteuid() != 0:
        raise HarnessError(f"confined remotes run as the user {user!r}, which does not "
                           f"exist: create it as root with '{useradd_command(user)}', or "
                           f"run with -p confine_remotes=off")
    try:
        proc = subprocess.run(USERADD + (user,), capture_output=True, text=True,
                              timeout=USERADD_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise HarnessError(f"'{useradd_command(user)}' failed: {err}") from None
    if proc.returncode not in (0, USERADD_EXISTS):
        raise HarnessError(f"'{useradd_command(user)}' failed (exit {proc.returncode}): "
                           f"{proc.stderr.strip()}")
    return pwd.getpwnam(user)


@dataclasses.dataclass(frozen=True)
class Confinement:
    """What a remote is started with: the sandbox (or not) and the user it
    drops to (or None)."""
    sandbox: bool
    user: Optional[str]
    reason: str = ''                   # why a part is missing, for the whiteboard

    def sandbox_option(self) -> str:
        deny = [f'{what}=deny' for what in SANDBOX_DENY]
        if self.user is None:
            deny.insert(1, ELEVATE_PRIVILEGES_DENY)
        return ','.join(['on'] + deny)

    def args(self, caps: Capabilities) -> List[str]:
        """QEMU arguments for a remote run by ``caps``."""
        args = ['-sandbox', self.sandbox_option()] if self.sandbox else []
        if self.user is not None:
            if caps.run_with_user:
                args += ['-run-with', f'user={self.user}']
            elif caps.runas:
                args += ['-runas', self.user]
            else:
                raise QEMUBinaryError(f"QEMU at {caps.path} ({caps.version_string}) has "
                                      f"neither -runas nor -run-with user=")
        return args

    def uid_gid(self):
        """(uid, gid) a confined remote should end up with."""
        entry = pwd.getpwnam(self.user) if self.user else pwd.getpwuid(os.geteuid())
        return entry.pw_uid, entry.pw_gid

    def describe(self) -> dict:
        """For the whiteboard."""
        return {'confine_sandbox': self.sandbox_option() if self.sandbox else None,
                'confine_user': self.user, 'confine_reason': self.reason or None}


def resolve(mode: str, caps: Capabilities, user: str = REMOTE_USER) -> Optional[Confinement]:
    """The confinement of remotes run by ``caps`` for ``confine_remotes``
    = ``mode``: None for ``off``; for ``on`` both parts or an error naming
    what is missing; for ``auto`` what this QEMU and this host allow."""
    if mode not in CONFINE_CHOICES:
        raise ParameterError(f"confine_remotes={mode!r}: use one of {CONFINE_CHOICES}")
    if mode == 'off':
        return None
    missing = []
    if not caps.sandbox:
        missing.append(f"QEMU at {caps.path} ({caps.version_string}) has no -sandbox: "
                       f"build it with --enable-seccomp (apt-get install libseccomp-dev; "
                       f"qemu_src=SPEC+seccomp, e.g. vfio_user_server="
                       f"src:debian:trixie+vfio-user-server+seccomp)")
    can_switch = caps.runas or caps.run_with_user
    if not can_switch:
        missing.append(f"QEMU at {caps.path} ({caps.version_string}) has neither -runas "
                       f"nor -run-with user=")
    elif os.geteuid() != 0:
        missing.append(f"only root can start a remote that drops to the user {user!r}")
        can_switch = False
    if mode == 'on' and missing:
        raise ParameterError(f"confine_remotes=on: {'; '.join(missing)}")
    if not caps.sandbox and not can_switch:
        return None
    if can_switch:
        ensure_user(user)
    return Confinement(sandbox=caps.sandbox, user=user if can_switch else None,
                       reason='; '.join(missing))

