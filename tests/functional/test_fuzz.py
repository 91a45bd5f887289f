"""Malformed and out-of-order protocol messages against a real remote.

The remote may refuse a message or exit cleanly; it must not die by a
signal, stop answering or keep fds it was given, and the harness must
never hang.  Crashes and hangs that are known upstream bugs
(tests/known_issues) are reported as warnings with their evidence in the
whiteboard, not hidden; unknown ones fail the test with the reproducer's
path.  ``ProtocolFuzz`` speaks the mpqemu protocol to x-remote-object
(harness/mpqemu/fuzz), ``VfioUserFuzz`` vfio-user to x-vfio-user-server
(harness/vfio_user/fuzz); harness/fuzz/ is how outcomes are classified;
`make fuzz` (FUZZ_TRANSPORT=vfio-user) runs the long version.
"""

import json
import os

from harness.base import deadlines, known_issues, params
from harness.fuzz import campaign, corpus
from harness.mpqemu import topology
from harness.mpqemu.fuzz import TRANSPORT as PROXY_TRANSPORT
from harness.testing import MultiprocessTest
from harness.vfio_user.fuzz import TRANSPORT as VFIO_USER_TRANSPORT

# 10,000 messages take ~20-40 s on 2 cores over the proxy, ~70 s over
# vfio-user; the limit only bounds a slow host.
TIME_LIMIT_S = 150


class ProtocolFuzz(MultiprocessTest):
    """The mpqemu protocol, through a fake proxy, to x-remote-object.

    :avocado: enable
    :avocado: tags=fuzz
    """

    transport = PROXY_TRANSPORT
    harness_speaks = 'mpqemu-upstream'
    timeout = deadlines.test_timeout(waits_s=TIME_LIMIT_S + deadlines.COMMAND_S)
    fuzzer = None               # until setUp has made it

    def setUp(self):
        super().setUp()
        lookup = lambda name: self.params.get(name, default=None)  # noqa: E731
        self.seed = params.get_int('fuzz_seed', lookup, minimum=0)
        self.messages = params.get_int('fuzz_messages', lookup)
        self.issues = known_issues.load()
        self.fuzzer = campaign.Fuzzer(self.transport, self.remote_caps, self.outputdir,
                                      self.seed, self.issues, log=self.log.info)

    def tearDown(self):
        if self.fuzzer is not None:
            self.fuzzer.close()
        super().tearDown()

    def test_random_messages(self):
        """Seeded random cases: no unknown crash or hang, no harness hang.

        :avocado: tags=thorough
        """
        summary = self.fuzzer.run(self.messages, time_limit_s=TIME_LIMIT_S)
        with open(os.path.join(self.outputdir, 'fuzz-summary.json'), 'w',
                  encoding='utf-8') as f:
            json.dump(summary.to_json(), f, indent=1)
        self.log.info('%s', campaign.format_summary(summary))
        self.record(fuzz_seed=self.seed, fuzz_messages=summary.messages,
                    fuzz_cases=summary.cases, fuzz_messages_per_s=round(summary.messages_per_s),
                    fuzz_elapsed_s=round(summary.elapsed_s, 1), fuzz_outcomes=summary.outcomes,
                    fuzz_remotes_started=summary.remotes_started,
                    fuzz_slowest_case_s=round(summary.slowest_case_s, 2),
                    fuzz_findings=summary.findings, fuzz_families=summary.families,
                    fuzz_transport=summary.transport)

        self.assertEqual(summary.harness_hangs, 0, 'a fuzz case overran its deadline: '
                         'a harness bug (see the job log)')
        self.assertGreaterEqual(summary.messages, self.messages,
                                f'only {summary.messages} messages within {TIME_LIMIT_S} s')
        unknown = summary.unknown_findings
        self.assertFalse(unknown, 'remote crashed or hung, not a known issue; reproducers in '
                         f'{os.path.join(self.outputdir, "findings")}: {json.dumps(unknown)}')
        self.known_issues_met(f'seed {self.seed}',
                          [f for f in summary.findings if f['known_issue']])

    def test_corpus_still_reproduces(self):
        """Checked-in reproducers (the transport's directory under
        tests/fuzz) replayed as regression cases: each must end as
        recorded; one that no longer does is flagged, since its known
        issue may be fixed."""
        paths = corpus.corpus_files(self.transport.corpus_dir)
        self.assertTrue(paths, f'no reproducers in {self.transport.corpus_dir}')
        met, changed = [], []
        for outcome in corpus.replay_corpus(self.fuzzer, paths):
            name = os.path.basename(outcome.path)
            got = f'{outcome.got.outcome}:{outcome.got.signal}'
            self.assertLess(outcome.got.elapsed_s, campaign.CASE_DEADLINE_S,
                            f'{name}: the harness took {outcome.got.elapsed_s:.1f} s')
            if not outcome.same:
                changed.append({'reproducer': name, 'expected': outcome.expected, 'got': got})
            elif outcome.got.is_finding:
                self.assertIsNotNone(outcome.known_issue,
                                     f'{name} ends in {got} but matches no known issue')
                met.append({'known_issue': outcome.known_issue, 'reproducer': name,
                            'outcome': got, 'log': outcome.got.log.strip()[-300:]})
        self.corpus_replayed(len(paths), met, changed)


class VfioUserFuzz(ProtocolFuzz):
    """vfio-user, with the harness as the client, to x-vfio-user-server
    (vfio_user_server: a 10.0 build with --enable-vfio-user-server).

    :avocado: recursive
    :avocado: tags=fuzz,vfio-user
    """

    transport = VFIO_USER_TRANSPORT
    placement = topology.VFIO_USER
    harness_speaks = 'vfio-user'
