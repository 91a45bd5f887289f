"""Fuzzing a real remote process through its socket.

    python -m harness.tools.fuzz --seed 1 --messages 200000 --out build/fuzz
    python -m harness.tools.fuzz --transport vfio-user --seed 1 --messages 200000

sends seeded random cases of malformed and out-of-order messages to real
remote processes (harness/fuzz/), over the mpqemu proxy protocol
(``proxy``, harness/mpqemu/fuzz) or to an x-vfio-user-server
(``vfio-user``, harness/vfio_user/fuzz), writes summary.json and
findings/*.json under --out, and exits non-zero on a finding that is not
a known issue, or on a harness hang.  --case and --replay replay single
cases or reproducers instead; --show prints a case.
"""

import argparse
import json
import os
import sys
from typing import Sequence

from ..base import params
from ..fuzz.campaign import Fuzzer, format_summary
from ..fuzz.corpus import replay_corpus
from ..mpqemu.fuzz import TRANSPORT as PROXY_TRANSPORT
from ..qemu import binary as qemu_binary
from ..qemu import subject
from ..vfio_user.fuzz import TRANSPORT as VFIO_USER_TRANSPORT

TRANSPORTS = {t.name: t for t in (PROXY_TRANSPORT, VFIO_USER_TRANSPORT)}


def qemu_for(transport: str, qemu_bin) -> str:
    """The remote's QEMU: --qemu-bin, else $QEMU_BIN for the proxy and the
    vfio_user_server parameter (a cached source build) for vfio-user."""
    if qemu_bin:
        return qemu_bin
    if transport == VFIO_USER_TRANSPORT.name:
        return subject.binary(params.get('vfio_user_server'), log=print)
    return params.get('qemu_bin')


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog='python -m harness.tools.fuzz',
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('--transport', choices=sorted(TRANSPORTS), default=PROXY_TRANSPORT.name)
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--messages', type=int, default=10000,
                        help='fuzz messages to send (the run ends at the case that passes it)')
    parser.add_argument('--out', default=os.path.join('build', 'fuzz'),
                        help='where summary.json and findings/*.json go')
    parser.add_argument('--qemu-bin', default=None,
                        help='QEMU of the remotes (default: $QEMU_BIN or qemu-system-x86_64; '
                             'for vfio-user $VFIO_USER_SERVER, a source build by default)')
    parser.add_argument('--time-limit', type=float, default=None, metavar='S',
                        help='stop after S seconds even if fewer messages were sent')
    parser.add_argument('--case', type=int, action='append', default=[], metavar='INDEX',
                        help='replay case INDEX of --seed alone (repeatable) instead of a run')
    parser.add_argument('--replay', action='append', default=[], metavar='FILE',
                        help='replay a finding or corpus JSON file (repeatable)')
    parser.add_argument('--show', type=int, metavar='INDEX',
                        help='print case INDEX of --seed as JSON and exit')
    args = parser.parse_args(list(argv) or None)
    transport = TRANSPORTS[args.transport]
    caps = qemu_binary.probe(qemu_for(args.transport, args.qemu_bin))
    caps.require_multiprocess()
    os.makedirs(args.out, exist_ok=True)
    with Fuzzer(transport, caps, args.out, args.seed) as fuzzer:
        if args.show is not None:
            print(json.dumps(fuzzer.case(args.show).to_json(), indent=1))
            return 0
        if args.case or args.replay:
            for index in args.case:
                result = fuzzer.replay(fuzzer.case(index))
                print(f'case {index}: {result.outcome} {result.signal} {result.detail} '
                      f'| {result.log.strip().splitlines()[-1:] }')
            for outcome in replay_corpus(fuzzer, args.replay):
                print(f'{outcome.path}: expected {outcome.expected}, got {outcome.got.outcome}:'
                      f'{outcome.got.signal} (known issue: {outcome.known_issue})')
            return 0
        summary = fuzzer.run(args.messages, args.time_limit)
    path = os.path.join(args.out, 'summary.json')
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(summary.to_json(), f, indent=1)
        f.write('\n')
    print(format_summary(summary))
    print(f'written: {path}' + (f', {os.path.join(args.out, "findings")}/'
                                if summary.findings else ''))
    return 1 if summary.unknown_findings or summary.harness_hangs else 0



if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
