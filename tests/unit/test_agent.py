"""The agent tier's harness pieces: the mailbox layout against the agent's
own header, the cached build, and the client's error paths against a real
agent under TCG."""

import os
import subprocess

import pytest

from harness.images import agent as build, freestanding
from harness.agent import mailbox
from harness.agent.client import AgentCommandError, AgentError, AgentFault, AgentTimeout
from harness.agent.mailbox import Op, Status
from harness.agent.session import AgentSession
from harness.devices.lsi import registers as lsi_regs
from harness.mpqemu import topology
from harness.qemu import accel as qemu_accel


def test_mailbox_layout_matches_the_agents_header(tmp_path):
    """The Python codec and tests/images/agent/mailbox.h agree: checked by
    the compiler, from static asserts generated here."""
    asserts = [f'_Static_assert(offsetof(struct mailbox, {name}) == {offset}, "{name}");'
               for name, (offset, _) in mailbox.HEADER.items()]
    asserts += [f'_Static_assert(OP_{op.name} == {op.value}, "op {op.name}");' for op in Op]
    asserts += [f'_Static_assert(ST_{st.name} == {st.value}, "{st.name}");' for st in Status]
    asserts += [f'_Static_assert(sizeof(struct agent_cmd) == {mailbox.CMD_SIZE}, "cmd");',
                f'_Static_assert(MAILBOX_ADDR == {mailbox.MAILBOX_GPA}, "addr");',
                f'_Static_assert(MAILBOX_MAGIC == {mailbox.MAGIC}, "magic");',
                f'_Static_assert(MAILBOX_CMDS_OFFSET == {mailbox.CMDS_OFFSET}, "cmds");',
                f'_Static_assert(MAILBOX_MAX_CMDS == {mailbox.MAX_CMDS}, "max");',
                f'_Static_assert(sizeof(struct mailbox) <= {mailbox.CMDS_OFFSET}, "size");']
    source = tmp_path / 'layout.c'
    source.write_text('#include <stddef.h>\n#include "mailbox.h"\n' + '\n'.join(asserts) + '\n')
    subprocess.run(['gcc', *freestanding.CFLAGS, '-I', build.SOURCE_DIR, '-c', str(source),
                    '-o', str(tmp_path / 'layout.o')], check=True, capture_output=True,
                   timeout=60)


def test_build_is_cached_and_a_partial_entry_is_rebuilt():
    elf = build.agent_elf()
    assert build.agent_elf() == elf
    with open(elf, 'rb') as f:
        assert f.read(4) == b'\x7fELF'
    os.unlink(elf)                       # as a build killed before its rename would leave it
    assert build.agent_elf() == elf and os.path.exists(elf)


def test_agent_probe_boots_under_tcg(caps):
    assert qemu_accel.run_agent_probe(caps.path, 'tcg', caps.firmware_args) is None


def test_agent_guests_get_kvm_wherever_the_agent_boots_under_it(caps):
    problem = qemu_accel.kvm_problem(caps, 'agent')
    choice = qemu_accel.select_accel(caps, 'auto', 'agent')
    assert choice.name == ('kvm' if problem is None else 'tcg')
    if os.path.exists('/sys/module/kvm_pvm') and problem is None:
        assert choice.cpu is None            # -cpu host aborts under PVM
        assert 'PVM' in choice.reason


@pytest.fixture
def agent_vm(caps, tmp_path):
    vm = topology.Machine(caps, str(tmp_path), placement=topology.IN_PROCESS, accel='tcg')
    vm.add_lsi('lsi1')
    session = AgentSession(str(tmp_path))
    agent = session.boot(vm)
    yield vm, agent
    session.close()
    vm.shutdown()


def test_refused_command_and_absent_device_are_named(agent_vm):
    _, agent = agent_vm
    bdf = agent.find_device(lsi_regs.VENDOR_ID, lsi_regs.DEVICE_ID)
    with pytest.raises(AgentCommandError, match=r'command #0 \(IO_READ port 0x0080/3\): BAD_SIZE'):
        agent.one(Op.IO_READ, addr=0x80, size=3)
    with pytest.raises(AgentCommandError, match=r'\(op 99\): BAD_OP'):
        agent.one(99)
    with pytest.raises(AgentError, match='no PCI device 1234:5678'):
        agent.find_device(0x1234, 0x5678)
    assert agent.cfg_read(bdf, 0, 2) == lsi_regs.VENDOR_ID


def test_a_stuck_guest_is_a_timeout_naming_the_command(agent_vm):
    vm, agent = agent_vm
    vm.faults.hang()
    try:
        with pytest.raises(AgentTimeout, match=r"did not finish command #0 of 1 \(TSC\) "
                                               r"within 0.5 s: the guest's timer stopped"):
            agent.run([mailbox.Command(Op.TSC)], timeout_s=0.5)
    finally:
        vm.faults.resume()
    assert agent.finish_late()[0].status == Status.OK
    assert agent.one(Op.TSC).tsc_start > 0


def test_a_cpu_exception_is_a_fault_naming_the_step(agent_vm):
    vm, agent = agent_vm
    with pytest.raises(AgentFault, match=r'CPU exception 6 \(#UD\) at eip 0x[0-9a-f]+ '
                                         r'\(error code 0x0\) running command #1 of 2 \(TRAP\)'):
        agent.run([mailbox.Command(Op.NOP), mailbox.Command(Op.TRAP)])
    assert vm.qemu.wait(5) == mailbox.FAULT_EXIT_STATUS


@pytest.mark.parametrize('firmware', sorted(build.FIRMWARES))
def test_the_lsi_is_placed_enabled_and_routed_under_either_firmware(caps, tmp_path, firmware):
    """qboot leaves the BARs to the agent (tests/images/agent/pci.c) and
    writes a wrong interrupt line; SeaBIOS does both right: either way the
    agent starts with the LSI decoding where its BARs say, bus master on,
    and the line the PIIX routes its INTA# to."""
    vm = topology.Machine(caps, str(tmp_path), placement=topology.IN_PROCESS, accel='tcg')
    vm.add_lsi('lsi1')
    session = AgentSession(str(tmp_path), boot_firmware=firmware)
    try:
        agent = session.boot(vm)
        bdf = agent.find_device(lsi_regs.VENDOR_ID, lsi_regs.DEVICE_ID)
        io = agent.cfg_read(bdf, 0x10, 4)
        mmio, ram = agent.cfg_read(bdf, 0x14, 4), agent.cfg_read(bdf, 0x18, 4)
        assert io & 1 and 0xc000 <= io & ~3 < 0x10000 and io & 0xff == 1
        for bar, size in ((mmio, 0x1000), (ram, 0x2000)):
            assert 0xe0000000 <= bar < 0xfec00000 and bar % size == 0, hex(bar)
        assert agent.cfg_read(bdf, 0x04, 2) & 0x7 == 0x7           # I/O, memory, master
        # The LSI in slot 2 raises INTA#, which the PIIX routes to PIRQB.
        pirqb = agent.cfg_read(1 << 3, 0x61, 1)
        assert agent.cfg_read(bdf, 0x3c, 1) == pirqb
        # Its registers answer there: SCRATCHA through both register BARs.
        agent.one(Op.IO_WRITE, addr=(io & ~3) + lsi_regs.SCRATCHA, size=4, value=0x5eed1e55)
        assert agent.one(Op.MEM_READ, addr=mmio + lsi_regs.SCRATCHA, size=4).value == 0x5eed1e55
        placed = [line for line in session.firmware.text().splitlines()
                  if line.startswith('agent: pci')]
        if firmware == 'qboot':
            assert f'agent: pci 00:{bdf >> 3:02x}.0 bar 0 io {io & ~3:#010x} size 0x00000100' \
                in placed
            assert any('INTx routed to IRQ' in line for line in placed)
        else:
            assert placed == []              # SeaBIOS left the agent nothing to do
    finally:
        session.close()
        vm.shutdown()
