"""Fuzzing a real remote process through its proxy socket.

The fuzzer sends *cases* (a few protocol messages, most of them well
formed but odd, often ending in a malformed one) to real remote device
processes, each through a fake proxy on its socket, and classifies what
each remote did: answered, exited, stalled as expected, or -- the
findings -- crashed by a signal or hung.  Every case is generated from
``(seed, index)`` alone, so any case can be rebuilt and replayed; every
finding is replayed alone, shrunk, and saved as a JSON reproducer, and
known upstream bugs (``tests/known_issues``) are recognised as such.

  cases     what a case is (steps, fds by kind, the harness's layout), as
            JSON-round-trippable data
  families  the message families, and generating case ``index`` of a seed
  remotes   starting remotes (a spare always starting), their setup and
            restore between cases
  runner    running one case and classifying its outcome
  campaign  a run: cases in order, the summary, findings replayed,
            minimized and saved
  corpus    reproducer files, and replaying tests/fuzz/corpus

The command line is ``python -m harness.tools.fuzz`` (``make fuzz``);
tests/functional/test_fuzz.py is the CI run and the corpus replay.
"""
