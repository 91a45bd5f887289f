"""A hostile remote against the guest-facing QEMU.

Multi-process QEMU moves a device into its own process so that a device
emulator its guest has taken over cannot take over the QEMU that holds the
guest.  Here the harness plays that emulator (harness/mpqemu/hostile; the fuzz run in
harness/agent/hostile_fuzz.py): no
remote QEMU runs, the proxy's ``x-pci-proxy-dev`` talks to a
:class:`HostileRemote` that answers correctly from a small PCI function
model (pci-testdev's identity, an I/O and an MMIO BAR) -- so that the agent
guest enumerates it, places its BARs and drives it -- or, case by case, not.

The agent's accesses are real vCPU accesses of the proxy, so every reply
is consumed where the proxy trusts it.  What the proxy must do with an
illegal reply: survive, give the vCPU back, refuse it (all-ones for a
read, an error in its log), close fds it did not ask for, and stay in
step.  Where QEMU does not, the assert stays and the known issue
(tests/known_issues) explains the CANCEL or WARN.  The fuzz run
(``hostile_cases`` cases, 10,000 by default; ``make fuzz
FUZZ_TRANSPORT=hostile-remote`` for the long one) and its corpus
(tests/fuzz/corpus-hostile-remote) close the file.
"""

import dataclasses
import json
import os
import time
from typing import Sequence

from harness.agent.mailbox import Command, Op, Status
from harness.base import deadlines, known_issues, params, procfs
from harness.base.figures import spread
from harness.devices import pci
from harness.fuzz import campaign, corpus
from harness.base.units import MIB
from harness.base.waiting import wait_until
from harness.mpqemu import hotplug, topology
from harness.agent import hostile_fuzz as fuzz
from harness.agent.hostile_fuzz import Access, Campaign, Target
from harness.mpqemu.hostile import model as hostile_model
from harness.mpqemu.hostile.model import Bar, FunctionModel, IO_BAR, MMIO_BAR
from harness.mpqemu.hostile.remote import HostileRemote
from harness.mpqemu.hostile.replies import Reply
from harness.mpqemu.protocol import Cmd
from harness.testing import AGENT, MultiprocessTest

CORPUS_DIR = os.path.join(corpus.CORPUS_ROOT, 'corpus-hostile-remote')
# 10,000 cases take ~200 s under PVM KVM on 2 cores (re-plugs, re-boots
# and the hang cases' 0.5 s included); the budget per case only bounds a slow
# host or a long `make fuzz FUZZ_TRANSPORT=hostile-remote` run.
FUZZ_CASE_BUDGET_S = 0.09
FUZZ_MIN_TIME_LIMIT_S = 300
STORM_EDGES = 100_000
ALL_ONES = {1: 0xff, 2: 0xffff, 4: 0xffffffff}


class HostileRemoteTest(MultiprocessTest):
    """Shared steps: a machine whose proxy device is answered by the
    harness, with the agent as its guest.  No tests of its own."""

    guest = 'agent'
    timeout = deadlines.test_timeout(agent_boots=2, waits_s=60)
    harness_speaks = 'mpqemu-upstream'
    fuzzing = None              # a campaign, for the classes whose setUp makes one

    def boot_target(self, peer: HostileRemote = None, **vm_kwargs) -> Target:
        """A new machine (``new_vm()``'s parameters), its proxy device
        answered by ``peer`` (a correct hostile remote unless given), the
        agent booted."""
        peer = peer or HostileRemote(workdir=self.workdir)
        vm = self.new_vm(placement=topology.PROXY, **vm_kwargs)
        vm.add_peer(fuzz.DEVID, peer, addr=hex(fuzz.SLOT))
        self.launch(vm, guest=AGENT)
        return Target(vm, vm.guest.agent, peer)

    def campaign(self) -> Campaign:
        return Campaign(self.boot_target, self.outputdir, self.caps, log=self.log.info)

    def case(self, access: Access, reply: Reply, index: int = 0) -> fuzz.Case:
        return fuzz.Case(0, index, access, reply, 0x600dcafe)

    def assert_copes(self, outcomes, known: Sequence[str] = ()) -> None:
        """Every (case, result) of ``outcomes`` came out right.  A finding
        a known issue explains (matched as the fuzz run matches them) ends
        the test as CANCEL with the entry's text once every case has run;
        an unexplained one fails it.  ``known``: the issues the test is
        expected to meet -- one that did not reproduce is flagged (WARN)."""
        issues, met = known_issues.load(), []
        for case, result in outcomes:
            if not result.is_finding:
                continue
            issue = known_issues.lookup(issues, result.match_keys(case), self.caps.version)
            self.assertIsNotNone(issue, f'{case.notes()}: {result.outcome} {result.flags}, '
                                        f'guest {result.guest}, follow-ups {result.followups}, '
                                        f'log {result.log[-300:]!r}: no known issue explains it')
            met.append((issue, case, result))
        for issue_id in known:
            if not any(issue.id == issue_id for issue, _, _ in met):
                issue = known_issues.by_id(issue_id, issues)
                self.record(known_issue_not_reproduced=issue.id)
                self.log.warning(known_issues.fixed_note(issue, self.caps.version))
        if met:
            issue, case, result = met[0]
            self.record(known_issue=issue.id, findings=[
                {'case': c.notes(), 'outcome': r.outcome, 'known_issue': i.id}
                for i, c, r in met])
            self.cancel(f'{known_issues.explain(issue, self.caps.version)} '
                        f'[{len(met)} of {len(outcomes)} cases; first: {case.notes()}]')


class CorrectHostileRemote(HostileRemoteTest):
    """The harness's remote, behaving, is a device the guest can use.

    :avocado: enable
    :avocado: tags=security,hostile,agent
    """

    def test_guest_enumerates_and_drives_the_device(self):
        target = self.boot_target()
        agent, peer = target.agent, target.peer
        bdf = agent.find_device(hostile_model.VENDOR_ID, hostile_model.DEVICE_ID)
        # The proxy's start-up probe sized every BAR slot 0..6 (6 at 0x28).
        sized = [e.args[0] for e in peer.requests(Cmd.PCI_CFGWRITE)
                 if e.args[1:] == (0xffffffff, 4)]
        self.assertEqual(sized[:7], [pci.BASE_ADDRESS_0 + 4 * i for i in range(7)])
        self.assertGreater(peer.sysmem_messages, 0, 'no SYNC_SYSMEM: guest RAM unshared')
        io = agent.cfg_read(bdf, pci.BASE_ADDRESS_0, 4)
        mmio = agent.cfg_read(bdf, pci.BASE_ADDRESS_0 + 4, 4)
        self.assertEqual(io & pci.BAR_SPACE_IO, pci.BAR_SPACE_IO)
        self.assertNotEqual(io & ~0x3, 0, 'the agent left the I/O BAR unassigned')
        self.assertNotEqual(mmio & ~0xf, 0, 'the agent left the MMIO BAR unassigned')
        self.assertEqual(peer.model.bars[IO_BAR].address, io & ~0x3)
        for size, value in ((1, 0xa5), (2, 0xbeef), (4, 0x600dcafe)):
            for base, write, read in ((io & ~0x3, Op.IO_WRITE, Op.IO_READ),
                                      (mmio & ~0xf, Op.MEM_WRITE, Op.MEM_READ)):
                agent.one(write, addr=base + 0x10, size=size, value=value)
                self.assertEqual(agent.one(read, addr=base + 0x10, size=size).value, value)
        self.assertEqual(agent.cfg_read(bdf, pci.CLASS_DEVICE, 2), hostile_model.CLASS_OTHERS)
        self.assertIsNone(peer.error)
        if self.accel.name == 'kvm':
            self.assertIsNotNone(peer.irqfd, 'no SET_IRQFD under KVM')
        samples = [Command(Op.CFG_READ, arg=bdf, addr=0, size=4) for _ in range(200)]
        agent.run(samples)
        self.record(hostile_requests=len(peer.transcript),
                    config_read_in_guest_us=spread(
                        [agent.tsc_to_s(c.tsc_end - c.tsc_start) for c in samples], 1e6))


class IllegalReplies(HostileRemoteTest):
    """One family of illegal replies per test, against one access each.

    :avocado: enable
    :avocado: tags=security,hostile,agent
    """

    READ = Access('mem', False, 4, 0x20)
    CONFIG_READ = Access('cfg', False, 2, pci.DEVICE_ID)

    def setUp(self):
        super().setUp()
        self.fuzzing = self.campaign()

    def tearDown(self):
        if self.fuzzing is not None:
            self.fuzzing.close()
        super().tearDown()

    def run_replies(self, *replies: Reply, accesses: Sequence[Access] = (READ, CONFIG_READ)):
        """Each reply against each access: [(case, result)].  A correct
        outcome of an illegal reply means the read got all-ones, the proxy
        logged why, and the follow-ups read what they must."""
        outcomes = []
        for reply in replies:
            for access in accesses:
                case = self.case(access, reply, index=len(outcomes))
                result = self.fuzzing.run_case(case)
                self.log.info('%s -> %s %s guest=%s fds%+d log=%r', case.notes(),
                              result.outcome, result.flags, result.guest, result.fd_delta,
                              result.log[-300:])
                outcomes.append((case, result))
        return outcomes

    def test_wrong_command_is_refused(self):
        self.assert_copes(self.run_replies(
            *(Reply('wrong-cmd', cmd=int(cmd), size=12)
              for cmd in (Cmd.PCI_CFGREAD, Cmd.SYNC_SYSMEM, Cmd.MAX, -1))))

    def test_oversized_header_is_refused(self):
        self.assert_copes(self.run_replies(
            *(Reply('oversize', size=size, data_len=0) for size in (193, 1 << 31, (1 << 64) - 1))))

    def test_too_many_fds_are_refused_and_closed(self):
        outcomes = self.run_replies(*(Reply('fds', fds=('eventfd',) * n) for n in (9, 16, 17, 64)))
        self.assertTrue(all(r.fd_delta <= 0 for _, r in outcomes))
        self.assert_copes(outcomes)

    def test_ret_of_the_wrong_size_is_refused(self):
        self.assert_copes(self.run_replies(*(Reply('ret-size', size=n) for n in (0, 4, 12, 192))),
                          known=['proxy-accepts-ret-of-any-size'])

    def test_fds_with_a_reply_are_closed(self):
        self.assert_copes(self.run_replies(
            *(Reply('fds', fds=kinds) for kinds in (('memfd:8192',), ('socket', 'dev-zero'),
                                                    ('regular-file',) * 7, ('eventfd',) * 8))),
            known=['proxy-leaks-fds-sent-with-replies'])

    def test_extra_replies_are_not_taken_by_the_next_access(self):
        self.assert_copes(self.run_replies(Reply('duplicate', copies=2),
                                           Reply('unsolicited', before=1)),
                          known=['proxy-takes-stale-reply'])

    def test_a_silent_remote_does_not_hold_the_vcpu(self):
        outcomes = self.run_replies(Reply('ends', end='silent'))
        self.assertEqual(self.fuzzing.killed, 0, 'a hang-up did not free the vCPU')
        self.assert_copes(outcomes, known=['proxy-waits-for-ever-for-a-reply'])

    def test_remote_gone_mid_reply_reads_all_ones(self):
        """EOF after a header, mid-header or before anything, or a
        remote that shuts its write side after a header: the access ends,
        all-ones, and the proxy lives on (re-plugged after each)."""
        outcomes = self.run_replies(Reply('ends', data_len=0, end='eof'),
                                    Reply('ends', data_len=5, end='truncate'),
                                    Reply('ends', data_len=0, end='truncate'),
                                    Reply('ends', data_len=0, end='shutdown'))
        for case, result in outcomes:
            self.assertEqual(result.guest, ALL_ONES[case.access.size], case.notes())
            self.assertFalse(result.flags, case.notes())
        self.assertEqual(self.fuzzing.replugs, len(outcomes))

    def test_late_and_fragmented_replies_are_taken(self):
        outcomes = self.run_replies(Reply('late', delay_s=0.3), Reply('late', delay_s=3.0),
                                    Reply('split', fragments=24, gap_s=0.005),
                                    Reply('lie', value=0x12345678))
        for case, result in outcomes:
            self.assertEqual(result.guest, result.expected, case.notes())
        self.assert_copes(outcomes)


class HostileProbe(HostileRemoteTest):
    """What the proxy makes of a remote's answers to its start-up probe of
    the BARs (hw/remote/proxy.c probe_pci_info), each on a device
    hot-plugged in place of the last: the BARs it registers (query-pci)
    against those the answers describe by the PCI specification, or a
    refusal of the device.  Deviations are findings; each must be a known
    issue (reported as a warning), never a silent pass.

    :avocado: enable
    :avocado: tags=security,hostile,agent
    """

    timeout = deadlines.test_timeout(agent_boots=4, waits_s=60)

    # (name, {slot index: answer after the all-ones write}, BARs a correct
    # proxy registers beside BAR 0 and 1: {index: (type, size, 64-bit)},
    # or None: it refuses the device).  Index 8 is 0x30, the ROM.
    CASES = [
        ('no-bar', {2: 0x0}, {}),
        ('io-bar-of-size-0', {2: 0x1}, {}),
        ('io-bar-of-4-bytes', {2: 0xfffffffd}, {2: ('io', 0x4, False)}),
        ('all-ones', {2: 0xffffffff}, {2: ('io', 0x4, False)}),
        ('64-bit-memory-bar', {2: 0xfffff004, 3: 0xffffffff}, {2: ('memory', 0x1000, True)}),
        ('cardbus-cis-pointer', {6: 0xfffff000}, {}),
        ('expansion-rom', {8: 0xffff0000}, {6: ('memory', 0x10000, False)}),
        ('bar-of-2-gib', {2: 0x80000000}, {2: ('memory', 0x80000000, False)}),
        ('non-power-of-two', {2: 0xfffffe10}, None),
    ]

    def test_probe_answers(self):
        target = self.boot_target()
        deviations, outcomes = [], {}
        for name, answers, expected in self.CASES:
            if not target.vm.qemu.is_running():
                target = self.boot_target()
            bars = hostile_model.default_bars()
            for index, answer in answers.items():
                bars[index] = Bar(0x10, io=False, probe_answer=answer)
            got, error = self.plug(target, FunctionModel(bars=bars))
            outcomes[name] = got if got is not None else error
            want = None if expected is None else {**self.BASE, **expected}
            crashed = error is not None and error.startswith('proxy exit')
            if got != want or crashed:
                deviations.append(self.deviation(name, answers, want, got, error, target))
        self.record(probe_outcomes=outcomes, probe_deviations=deviations)
        unexplained = [d for d in deviations if not d['known_issue']]
        self.assertFalse(unexplained, f'probe deviations no known issue explains: '
                                      f'{json.dumps(unexplained)}')
        self.known_issues_met('the probe answers', deviations)

    def test_bar_address_lies(self):
        """The guest reads a BAR's address from the remote, which may say
        anything: here that the I/O BAR sits on the ACPI PCI hot-plug ports
        (0xae00), where a driver trusting it would eject devices.  What the
        guest reads must be where the proxy decodes the BAR."""
        target = self.boot_target()
        agent, bar = target.agent, target.peer.model.bars[IO_BAR]
        bdf = agent.find_device(hostile_model.VENDOR_ID, hostile_model.DEVICE_ID)
        bar.address_answer = fuzz.PCIHP_EJECT_PORT & ~(bar.size - 1)
        seen = agent.cfg_read(bdf, pci.BASE_ADDRESS_0, 4) & ~0x3
        mapped = self.mapped(target)[IO_BAR]
        self.record(io_bar_seen=hex(seen), io_bar_mapped=hex(mapped))
        result = fuzz.Result(fuzz.OUTCOME_CORRECT if seen == mapped else 'accepted',
                             guest=seen, expected=mapped)
        case = self.case(Access('cfg', False, 4, pci.BASE_ADDRESS_0),
                         Reply('lie', value=bar.address_answer))
        case = dataclasses.replace(case, reply=dataclasses.replace(case.reply,
                                                                    family='bar-address-lie'))
        self.assert_copes([(case, result)], known=['proxy-forwards-bar-reads-to-the-remote'])

    def mapped(self, target: Target) -> dict:
        """{BAR: address} where the proxy decodes the device's BARs."""
        regions = self.regions(target)
        self.assertIsNotNone(regions, 'the hostile device is missing from query-pci')
        return {r['bar']: r['address'] for r in regions}

    @staticmethod
    def regions(target: Target):
        """The hostile device's BARs as the proxy registered them
        (query-pci), None if it has no device in the slot."""
        for bus in target.vm.qemu.qmp('query-pci'):
            for device in bus['devices']:
                if device['slot'] == fuzz.SLOT:
                    return device['regions']
        return None

    BASE = {IO_BAR: ('io', hostile_model.IO_BAR_SIZE, False),
            MMIO_BAR: ('memory', hostile_model.MMIO_BAR_SIZE, False)}

    def plug(self, target: Target, function: FunctionModel):
        """Eject the device, plug one answered from ``function``; returns
        its BARs as the proxy registered them, or (None, what happened)."""
        fuzz.eject(target)
        peer = HostileRemote(function, workdir=self.workdir)
        try:
            target.vm.plug_peer(fuzz.DEVID, peer)
        except Exception as err:        # pylint: disable=broad-except
            target.vm.qemu.wait_exit(2.0)
            if not target.vm.qemu.is_running():
                return None, f'proxy exit {target.vm.qemu.exitcode}'
            return None, f'refused: {err}'
        target.peer = peer
        regions = self.regions(target)
        if regions is None:
            return None, 'device missing from query-pci'
        return {r['bar']: (r['type'], r['size'], bool(r.get('mem_type_64')))
                for r in regions}, None

    def deviation(self, name, answers, want, got, error, target) -> dict:
        crashed = error is not None and error.startswith('proxy exit')
        result = {'outcome': 'crash' if crashed else 'accepted',
                  'signal': 'SIGABRT' if crashed and error.endswith('-6') else '',
                  'log': target.vm.qemu.log_tail(5) if crashed else '',
                  'notes': f'probe {name}', 'transport': fuzz.TRANSPORT}
        issue = known_issues.lookup(known_issues.load(), result, self.caps.version)
        return {'case': name, 'answers': {hex(k): hex(v) for k, v in answers.items()},
                'want': _regions(want), 'got': _regions(got) if got is not None else error,
                'outcome': result['outcome'], 'known_issue': issue.id if issue else None}


def _regions(regions):
    if regions is None:
        return 'refused'
    return {str(k): f'{t} {s:#x}' + (' 64-bit' if b else '') for k, (t, s, b) in
            sorted(regions.items())}


class HostileInterrupts(HostileRemoteTest):
    """The remote owns the irqfd and the resample fd it was given
    (SET_IRQFD, KVM only): a storm on the one and closing the other must
    not hurt the proxy or the guest beyond the device's own line.

    :avocado: enable
    :avocado: tags=security,hostile,agent
    """

    def setUp(self):
        super().setUp()
        if self.accel.name != 'kvm':
            self.cancel(f'INTx of a proxied device needs KVM irqfds (accelerator is '
                        f'{self.accel.name}; known issue proxy-intx-needs-kvm)')
        self.target = self.boot_target()
        agent = self.target.agent
        self.bdf = agent.find_device(hostile_model.VENDOR_ID, hostile_model.DEVICE_ID)
        self.line = agent.cfg_read(self.bdf, pci.INTERRUPT_LINE, 1)
        self.assertIsNotNone(self.target.peer.irqfd, 'the proxy sent no SET_IRQFD')
        agent.one(Op.IRQ_ENABLE, arg=self.line)

    def interrupts(self, rounds: int) -> int:
        """How many of ``rounds`` wait/ack rounds saw an interrupt."""
        taken = 0
        for _ in range(rounds):
            command = self.target.agent.one(Op.IRQ_WAIT, arg=200)
            if command.status == Status.OK:
                taken += 1
            self.target.agent.one(Op.IRQ_ACK, arg=self.line)
        return taken

    def test_interrupt_storm(self):
        peer, agent, proxy = self.target.peer, self.target.agent, self.target.vm.qemu
        cpu_before = procfs.cpu_seconds(proxy.pid)
        started = time.monotonic()
        peer.raise_irq(STORM_EDGES)
        storm_s = time.monotonic() - started
        taken = self.interrupts(20)
        peer.raise_irq(1)
        self.assertGreater(self.interrupts(1), 0, 'the line is dead after the storm')
        reads = [Command(Op.CFG_READ, arg=self.bdf, addr=0, size=4) for _ in range(100)]
        agent.run(reads)
        self.assertTrue(all(c.value == fuzz.IDENTITY for c in reads))
        self.assertEqual(proxy.qmp('query-status')['status'], 'running')
        self.record(storm_edges=STORM_EDGES, storm_s=round(storm_s, 3), storm_taken=taken,
                    storm_proxy_cpu_s=round(procfs.cpu_seconds(proxy.pid) - cpu_before, 3),
                    other_irqs=agent.header('other_irqs'), spurious=agent.header('spurious'))
        self.assertEqual(agent.header('other_irqs'), 0, 'the storm reached other lines')

    def test_closed_resample_fd(self):
        peer, agent = self.target.peer, self.target.agent
        peer.close_resamplefd()
        for _ in range(3):
            peer.raise_irq(1)
            self.assertEqual(self.interrupts(1), 1, 'no interrupt after closing resamplefd')
        self.assertEqual(agent.cfg_read(self.bdf, 0, 4), fuzz.IDENTITY)
        self.assertTrue(self.target.vm.qemu.is_running())


class HostileReset(HostileRemoteTest):
    """Replies to messages that want none or that are plain lies: RETs
    after SYNC_SYSMEM and SET_IRQFD, and DEVICE_RESET answered with data,
    the wrong command or twice, each across a system_reset of the agent.

    :avocado: enable
    :avocado: tags=security,hostile,agent
    """

    timeout = deadlines.test_timeout(agent_boots=5, waits_s=60)

    def reset(self, target: Target, reply: Reply) -> int:
        """system_reset with ``reply`` armed for DEVICE_RESET; returns the
        identity dword the rebooted agent reads."""
        before = len(target.peer.requests(Cmd.DEVICE_RESET))
        target.peer.arm(reply)
        session = target.vm.guest
        since = session.firmware.mark()
        target.agent.forget_boot()
        target.vm.qemu.qmp('system_reset')
        agent = session.wait_ready(target.vm.qemu, target.vm.memory_mb, since=since)
        target.agent = agent
        # (QEMU resets the proxy device twice per system_reset.)
        resets = target.peer.requests(Cmd.DEVICE_RESET)[before:]
        self.assertIn(reply, [e.reply for e in resets], 'no DEVICE_RESET got the reply')
        return agent.cfg_read(agent.find_device(hostile_model.VENDOR_ID,
                                                hostile_model.DEVICE_ID), 0, 4)

    def test_device_reset_lies(self):
        """DEVICE_RESET answered with data, with the wrong command, or
        twice (the second RET lands on the next request, the second reset
        QEMU sends): the proxy lives and the rebooted agent finds the
        device as it was."""
        target = self.boot_target()
        outcomes = []
        for reply in (Reply('lie', size=8, value=0xdead),
                      Reply('wrong-cmd', cmd=Cmd.BAR_READ, size=24),
                      Reply('duplicate', copies=2)):
            identity = self.reset(target, reply)
            case = self.case(Access('reset', False, 0, 0), reply, index=len(outcomes))
            outcome = fuzz.OUTCOME_CORRECT if identity == fuzz.IDENTITY else 'desync'
            outcomes.append((case, fuzz.Result(outcome, guest=identity,
                                               expected=fuzz.IDENTITY)))
            self.assertTrue(target.vm.qemu.is_running(), reply.describe())
        self.record(reset_identities={c.reply.family: r.guest for c, r in outcomes})
        self.assert_copes(outcomes)

    def test_replies_nobody_asked_for(self):
        """A RET after each SYNC_SYSMEM, which wants no answer, must not
        become the answer of a later access.  A DIMM hot-plugged through
        QMP changes the memory map with no access after it (a guest's
        command register write would be answered right after and hide it):
        the proxy sends SYNC_SYSMEM, the remote answers, then the agent
        reads the identity dword."""
        target = self.boot_target(memory_slots=1, maxmem_mb=self.memory_mb + 128)
        peer, agent = target.peer, target.agent
        bdf = agent.find_device(hostile_model.VENDOR_ID, hostile_model.DEVICE_ID)
        synced = peer.sysmem_messages
        peer.answer_unasked = 0x5a5a5a5a
        hotplug.MemoryHotplug(target.vm.qemu, self.workdir).plug('dimm1', 128 * MIB, 'memfd')
        wait_until(lambda: peer.sysmem_messages > synced, 5.0, 'SYNC_SYSMEM after the plug')
        peer.answer_unasked = None
        answered = peer.sysmem_messages - synced
        reads = [agent.cfg_read(bdf, 0, 4) for _ in range(answered + 2)]
        wrong = [r for r in reads if r != fuzz.IDENTITY]
        case = self.case(Access('cfg', False, 4, 0), Reply('unsolicited', before=1))
        result = fuzz.Result('desync' if wrong else fuzz.OUTCOME_CORRECT, guest=reads[0],
                             expected=fuzz.IDENTITY, followups=tuple(reads))
        self.record(unasked_answered=answered, identity_reads=[hex(r) for r in reads])
        self.assertEqual(reads[-1], fuzz.IDENTITY, 'the link did not come back in step')
        self.assert_copes([(case, result)], known=['proxy-takes-stale-reply'])


class HostileFuzz(HostileRemoteTest):
    """Seeded hostile replies to the agent's accesses of every kind and width.

    :avocado: enable
    :avocado: tags=security,hostile,agent,fuzz
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        lookup = lambda name: self.params.get(name, default=None)  # noqa: E731
        self.cases = params.get_int('hostile_cases', lookup)
        self.time_limit_s = max(FUZZ_MIN_TIME_LIMIT_S, self.cases * FUZZ_CASE_BUDGET_S)
        self.timeout = (float(self.timeout or 0)
                        + deadlines.test_timeout(agent_boots=4, waits_s=self.time_limit_s))

    def setUp(self):
        super().setUp()
        lookup = lambda name: self.params.get(name, default=None)  # noqa: E731
        self.seed = params.get_int('fuzz_seed', lookup, minimum=0)
        self.fuzzing = self.campaign()

    def tearDown(self):
        if self.fuzzing is not None:
            self.fuzzing.close()
        super().tearDown()

    def test_hostile_replies(self):
        """No unknown finding, every case bounded, the tally per family.

        :avocado: tags=thorough
        """
        summary = self.fuzzing.run(self.seed, self.cases, time_limit_s=self.time_limit_s)
        with open(os.path.join(self.outputdir, 'fuzz-summary.json'), 'w',
                  encoding='utf-8') as f:
            json.dump(summary.to_json(), f, indent=1)
        self.log.info('%s', campaign.format_summary(summary))
        self.record(fuzz_seed=self.seed, fuzz_cases=summary.cases,
                    fuzz_elapsed_s=round(summary.elapsed_s, 1), fuzz_outcomes=summary.outcomes,
                    fuzz_families=summary.families, fuzz_findings=summary.findings,
                    fuzz_replugs=self.fuzzing.replugs, fuzz_boots=self.fuzzing.boots,
                    fuzz_killed=self.fuzzing.killed,
                    fuzz_slowest_case_s=round(summary.slowest_case_s, 2))
        self.assertGreaterEqual(summary.cases, self.cases,
                                f'only {summary.cases} cases within {self.time_limit_s:.0f} s')
        self.assertLess(summary.slowest_case_s, campaign.CASE_DEADLINE_S,
                        'a case overran its deadline: a harness bug')
        self.assertGreater(summary.outcomes.get(fuzz.OUTCOME_CORRECT, 0), 0,
                           'not one case came out right: the hostile remote is broken')
        unknown = summary.unknown_findings
        self.assertFalse(unknown, 'findings no known issue explains; reproducers in '
                         f'{os.path.join(self.outputdir, "findings")}: {json.dumps(unknown)}')
        self.known_issues_met(f'seed {self.seed}', summary.findings)

    def test_corpus_still_reproduces(self):
        """The checked-in reproducers, replayed: each ends as recorded; one
        that no longer does is flagged (fixed upstream?)."""
        paths = corpus.corpus_files(CORPUS_DIR)
        self.assertTrue(paths, f'no reproducers in {CORPUS_DIR}')
        issues = known_issues.load()
        met, changed = [], []
        for path in paths:
            with open(path, encoding='utf-8') as f:
                data = json.load(f)
            case = fuzz.Case.from_json(data.get('minimized') or data['case'])
            result = self.fuzzing.replay(case)
            name = os.path.basename(path)
            if result.outcome != data['outcome']:
                changed.append({'reproducer': name, 'expected': data['outcome'],
                                'got': result.outcome})
                self.assertEqual(result.outcome, fuzz.OUTCOME_CORRECT,
                                 f'{name} now ends in {result.outcome} {result.flags}, '
                                 f'recorded {data["outcome"]}')
                continue
            issue = known_issues.lookup(issues, result.match_keys(case), self.caps.version)
            self.assertIsNotNone(issue, f'{name} ends in {result.outcome} but matches no '
                                        f'known issue')
            met.append({'known_issue': issue.id, 'reproducer': name,
                        'outcome': result.outcome, 'log': result.log.strip()[-300:]})
        self.corpus_replayed(len(paths), met, changed)

