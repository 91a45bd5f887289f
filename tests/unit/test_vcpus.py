"""Where each vCPU is: guest RIP (named with a System.map) and host thread."""

import pytest

from harness.qemu import accel
from harness.qemu.process import QEMUProcess
from harness.qemu.vcpus import (KernelSymbols, VCPUState, describe, snapshot, stack_functions,
                                waiting_for_a_peer)

RESET_RIP = 0xfff0                       # RIP of the reset vector (CS base 0xffff0000)
# At the reset vector (real mode, SS base 0): a stack at 0x7000 holding
# 0x123456789abc (three 16-bit pushes, the zeros above 0x7000 on top), then
# jmp $: the BSP spins with that address on its stack.
STACKED = 0x123456789abc
FIRMWARE = bytes([0xbc, 0x00, 0x70,                   # mov sp, 0x7000
                  0x68, 0x34, 0x12,                   # push 0x1234
                  0x68, 0x78, 0x56,                   # push 0x5678
                  0x68, 0xbc, 0x9a,                   # push 0x9abc
                  0xeb, 0xfe])                        # jmp $
SPIN_RIP = RESET_RIP + len(FIRMWARE) - 2


@pytest.fixture
def spinning_vm(caps, tmp_path):
    """Two vCPUs under TCG: the BSP spins in our firmware, the AP waits
    for a SIPI that never comes (its thread sleeps)."""
    firmware = bytearray(accel.BIOS_SIZE)
    firmware[accel.RESET_VECTOR_OFFSET:accel.RESET_VECTOR_OFFSET + len(FIRMWARE)] = FIRMWARE
    bios = tmp_path / 'spin.bin'
    bios.write_bytes(firmware)
    qemu = QEMUProcess(caps.path, ['-machine', 'pc', '-accel', 'tcg', '-smp', '2',
                                   '-nodefaults', '-display', 'none', '-bios', str(bios)],
                       name='spin', log_dir=str(tmp_path))
    qemu.launch()
    yield qemu
    qemu.shutdown()


def write_map(path, lines):
    path.write_text(''.join(f'{line}\n' for line in lines))
    return KernelSymbols(str(path))


def test_symbols_name_text_addresses(tmp_path):
    symbols = write_map(tmp_path / 'System.map', [
        'ffffffff81000000 T _stext',
        'ffffffff81000100 t helper',
        'ffffffff81000200 D some_data',          # data: never a code location
        'ffffffff81000300 T smp_call_function_many_cond',
        'ffffffff81000400 T _etext'])
    assert symbols.name(0xffffffff81000000) == '_stext+0x0'
    assert symbols.name(0xffffffff81000180) == 'helper+0x80'
    assert symbols.name(0xffffffff81000250) == 'helper+0x150'
    assert symbols.name(0xffffffff81000342) == 'smp_call_function_many_cond+0x42'
    assert symbols.name(0xffffffff80000000) is None       # below the text
    assert symbols.name(0xffffffff81000500) is None       # past the last symbol


def test_snapshot_tells_a_spinning_vcpu_from_a_sleeping_one(spinning_vm, tmp_path):
    symbols = write_map(tmp_path / 'System.map', [
        f'{RESET_RIP:016x} T reset_vector', f'{RESET_RIP + 16:016x} T after_reset',
        f'{STACKED - 0xbc:016x} T caller', f'{STACKED + 0x100:016x} T _etext'])
    states = snapshot(spinning_vm, symbols)
    assert [s.index for s in states] == [0, 1]
    bsp, ap = states
    assert bsp.thread_id != ap.thread_id
    assert bsp.rip == SPIN_RIP
    assert bsp.symbol == f'reset_vector+{SPIN_RIP - RESET_RIP:#x}'
    assert bsp.busy > ap.busy                 # one spins, the other waits
    assert ap.host_state == 'S'
    assert not bsp.halted
    assert bsp.stack == ('caller',)           # read through the BSP's own SP
    text = describe(states)
    assert f'vCPU 0: guest RIP {SPIN_RIP:#x} (reset_vector+0xc), stack: caller;' in text
    assert f'thread {ap.thread_id} S' in text


def test_stack_functions_are_named_innermost_first_each_once(tmp_path):
    symbols = write_map(tmp_path / 'System.map', [
        'ffffffff81000000 T do_sync_core', 'ffffffff81000100 T on_each_cpu_cond_mask',
        'ffffffff81000200 T text_poke_bp_batch', 'ffffffff81000300 T _etext'])
    dump = ('ffffc90000013e00: 0xffffffff81000142 0x0000000000000000\n'
            'ffffc90000013e10: 0xffffffff81000200 0xffffffff81000017\n'      # a pointer, then a return
            'ffffc90000013e20: 0xffffffff81000150 0xffffffff81000210\n')     # seen already
    assert stack_functions(dump, symbols) == ('on_each_cpu_cond_mask', 'do_sync_core',
                                              'text_poke_bp_batch')


def test_a_vcpu_waiting_for_a_blocked_peer_is_recognised():
    spinning = VCPUState(0, 10, 'R', '', 0.9, 0xffffffff81170441,
                         'smp_call_function_many_cond+0xf1')
    blocked = VCPUState(1, 11, 'S', 'unix_stream_read_generic', 0.0, 0xffffffff815aff7b,
                        'pci_write_resource_io+0x8b')
    idle = VCPUState(1, 11, 'S', 'futex_wait_queue', 0.0, 0xffffffff81a592eb,
                     'native_safe_halt+0xb', halted=True)
    elsewhere = VCPUState(0, 10, 'R', '', 0.9, 0xffffffff81000100, 'copy_page+0x10')
    assert waiting_for_a_peer([spinning, blocked]) is spinning
    assert waiting_for_a_peer([spinning, idle]) is None          # the peer is just idle
    assert waiting_for_a_peer([elsewhere, blocked]) is None      # nobody waits for it
    assert waiting_for_a_peer([spinning]) is None
