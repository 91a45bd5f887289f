"""A hostile remote: the harness takes the remote's end of a proxy's socket.

Multi-process QEMU exists so that a device emulator its guest has
compromised cannot take over the QEMU that holds the guest.  Here the
harness *is* that emulator: no remote QEMU runs, and the guest-facing
QEMU's ``x-pci-proxy-dev`` talks to :class:`~.remote.HostileRemote`, which
answers with the mpqemu codec (harness/mpqemu/protocol.py) -- correctly,
from a small PCI function model, or, when armed, with one of the replies
of :mod:`.replies` that hw/remote/proxy.c and mpqemu-link.c must survive.

  model    a PCI function's configuration space and BAR contents, answered
           as a real remote would
  replies  the misbehaviours, as data: what goes on the wire instead of the
           correct reply, and what the guest must read if the proxy copes
  remote   the serving thread: requests in, replies (hostile or not) out

The proxy fuzz run that drives it from the agent guest (seeded cases,
classification, findings and their corpus) is harness/agent/hostile_fuzz.py.

tests/functional/test_hostile_remote.py holds the scenarios and the CI run.
"""
