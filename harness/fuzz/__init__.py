"""Fuzzing a real remote device process through its socket.

The fuzzer sends *cases* (a few messages, most of them well formed but
odd, often ending in a malformed one) to real remote device processes and
classifies what each remote did: answered, exited, stalled as expected,
or -- the findings -- crashed by a signal, hung, or kept fds it was
given.  Every case is generated from ``(seed, index)`` alone, so any case
can be rebuilt and replayed; every finding is replayed alone, shrunk, and
saved as a JSON reproducer, and known upstream bugs
(``tests/known_issues``) are recognised as such.

This package is the machinery both wire protocols share; a *transport*
(:class:`~harness.fuzz.transport.Transport`) supplies what differs: the
message families, how remotes are started, set up, restored and asked
the follow-up.  Two exist: ``proxy`` (harness/mpqemu/fuzz: the mpqemu
protocol to ``x-remote-object``) and ``vfio-user``
(harness/vfio_user/fuzz: to ``x-vfio-user-server``).

  cases      what a case is (steps, fds by kind, the harness's layout), as
             JSON-round-trippable data
  generator  building a case from its families, seeded
  transport  what a transport provides
  runner     running one case and classifying its outcome
  campaign   a run: cases in order, the summary, findings replayed,
             minimized and saved
  corpus     reproducer files, and replaying a transport's corpus

The command line is ``python -m harness.tools.fuzz`` (``make fuzz``);
tests/functional/test_fuzz.py is the CI run and the corpus replay.
"""
