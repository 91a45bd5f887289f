"""The PVH loader (tests/images/pvh-loader) and the repacker
(harness/images/pvhboot.py): its LZ4 decoder built for the host and fed
the lz4 tool's frames, good and damaged; the repacker's refusals; and a
repacked kernel whose payload lies about a segment, booted under TCG, must
stop with the loader's message rather than run a half-unpacked kernel."""

import os
import random
import struct
import subprocess

import pytest

from harness.guest import console
from harness.images import image, pvhboot
from harness.qemu.process import QEMUProcess

DRIVER = r'''
#include <stdio.h>
#include <stdlib.h>
#include "loader.h"

/* decode FRAME OUT_BYTES: the decoded bytes on stdout, or the decoder's
 * message on stderr and exit 3. */
int main(int argc, char **argv)
{
    FILE *f = fopen(argv[1], "rb");
    static u8 frame[64 << 20], out[64 << 20];
    size_t n = fread(frame, 1, sizeof(frame), f);
    u32 want = strtoul(argv[2], 0, 0);
    const char *err = lz4_legacy_decode(frame, n, out, want);

    if (err) {
        fprintf(stderr, "%s\n", err);
        return 3;
    }
    fwrite(out, 1, want, stdout);
    return 0;
}
'''
CONSOLE_TIMEOUT_S = 30


@pytest.fixture(scope='module')
def decoder(tmp_path_factory):
    work = tmp_path_factory.mktemp('lz4')
    (work / 'driver.c').write_text(DRIVER)
    exe = work / 'lz4-decode'
    subprocess.run(['gcc', '-O2', '-Wall', '-Werror', '-I', pvhboot.LOADER_DIR,
                    str(work / 'driver.c'), os.path.join(pvhboot.LOADER_DIR, 'lz4.c'),
                    '-o', str(exe)], check=True, capture_output=True, timeout=60)

    def decode(frame: bytes, out_bytes: int):
        path = work / 'frame.lz4'
        path.write_bytes(frame)
        proc = subprocess.run([str(exe), str(path), str(out_bytes)], capture_output=True,
                              timeout=60)
        return proc.returncode, proc.stdout, proc.stderr.decode().strip()
    return decode


def _frame(data: bytes, tmp_path) -> bytes:
    return pvhboot._lz4_frame(data, str(tmp_path), 0)


def _samples():
    rng = random.Random(15)
    text = b''.join(b'line %d of a kernel segment\n' % (i % 977) for i in range(200000))
    return {
        'incompressible': rng.randbytes(300000),
        # Over one 8 MiB legacy block: the frame holds several.
        'zeros-over-two-blocks': bytes(17 << 20),
        # Matches at offsets 1-3 overlap their own output byte by byte.
        'short-offsets': b''.join(bytes([i % 7]) * 5 + b'ab' * 9 + b'xyz' * 11
                                  for i in range(20000)),
        'text': text,
        'tiny': b'abc',
    }


@pytest.mark.parametrize('name', sorted(_samples()))
def test_decoder_matches_the_lz4_tool(decoder, tmp_path, name):
    data = _samples()[name]
    rc, out, err = decoder(_frame(data, tmp_path), len(data))
    assert (rc, err) == (0, '')
    assert out == data


def test_decoder_refuses_damaged_frames(decoder, tmp_path):
    data = _samples()['text']
    frame = _frame(data, tmp_path)
    cases = {
        'not an LZ4 legacy frame': (b'\0' + frame[1:], len(data)),
        'block overruns the frame': (frame[:len(frame) // 2], len(data)),
        'frame decodes to fewer bytes than the segment holds': (frame, len(data) + 4),
        'overrun': (frame, len(data) - 4),      # literals or match overrun the segment
    }
    for what, (bad, out_bytes) in cases.items():
        rc, _, err = decoder(bad, out_bytes)
        assert rc == 3, what
        assert what in err if what != 'overrun' else 'overrun' in err, (what, err)
    # A block whose first match points before the block's start.
    block = bytes([0x10, ord('a'), 0x05, 0x00]) + bytes([0x10, ord('b')])
    rc, _, err = decoder(struct.pack('<II', 0x184c2102, len(block)) + block, 100)
    assert (rc, err) == (3, "match offset before the block's output")


def test_repacker_refuses_what_is_not_a_bzimage(tmp_path):
    with pytest.raises(pvhboot.PvhBootError, match="not a bzImage"):
        pvhboot.kernel_elf(b'\x7fELF' + bytes(4096))
    fake = bytearray(4096)
    fake[0x1f1] = 1
    fake[0x202:0x206] = b'HdrS'
    struct.pack_into('<H', fake, 0x206, 0x20f)
    struct.pack_into('<II', fake, 0x248, 0, 16)
    fake[1024:1040] = b'BZh91AY&SY' + bytes(6)            # bzip2
    with pytest.raises(pvhboot.PvhBootError, match="neither XZ nor gzip"):
        pvhboot.kernel_elf(bytes(fake))
    struct.pack_into('<H', fake, 0x206, 0x209)
    with pytest.raises(pvhboot.PvhBootError, match="older than 0x20a"):
        pvhboot.kernel_elf(bytes(fake))


def test_trimmed_segment_keeps_its_size_in_memory():
    seg = pvhboot.trimmed(pvhboot.LoadSegment(0x1000000, 4096, b'abcde' + bytes(3000)))
    assert seg == (0x1000000, 4096, b'abcde\0\0\0')


@pytest.fixture(scope='module')
def tiny():
    return image.build_recipe('tiny')


def _segment_table(kernel: bytes):
    pm = (kernel[0x1f1] + 1) * 512
    image_size = struct.unpack_from('<I', kernel, pm + 8)[0]
    at = pm + image_size
    assert kernel[at:at + 8] == pvhboot.PAYLOAD_MAGIC
    entry, nr = struct.unpack_from('<II', kernel, at + 8)
    return at + 16, entry, [struct.unpack_from('<IIII', kernel, at + 16 + 16 * i)
                            for i in range(nr)]


def test_tiny_kernel_is_repacked_as_its_manifest_says(tiny):
    with open(tiny.kernel, 'rb') as f:
        kernel = f.read()
    manifest = image.read_manifest(os.path.dirname(tiny.manifest))['kernel']
    assert manifest['entry'] == 'pvh'
    _, entry, table = _segment_table(kernel)
    assert f'{entry:#x}' == manifest['pvh']['pvh_entry']
    assert [(f'{p:#x}', m, f, b) for p, m, f, b in table] == \
        [(s['paddr'], s['memsz'], s['filesz'], s['lz4_bytes'])
         for s in manifest['pvh']['segments']]
    assert kernel[0x234] == 0                               # not relocatable
    assert struct.unpack_from('<H', kernel, 0x236)[0] == 0   # no 64-bit/EFI entries
    pm_bytes = len(kernel) - (kernel[0x1f1] + 1) * 512
    assert struct.unpack_from('<I', kernel, 0x1f4)[0] == (pm_bytes + 15) // 16
    # Loaded at 1 MiB, the payload ends below the kernel's first segment,
    # so the loader unpacks without moving it.
    assert 0x100000 + pm_bytes <= min(p for p, _, _, _ in table)


@pytest.mark.slow
def test_loader_stops_on_a_segment_its_frame_cannot_fill(caps, tiny, tmp_path):
    with open(tiny.kernel, 'rb') as f:
        kernel = bytearray(f.read())
    at, _, table = _segment_table(bytes(kernel))
    paddr, memsz, filesz, frame_bytes = table[0]
    struct.pack_into('<IIII', kernel, at, paddr, memsz + 4096, filesz + 4096, frame_bytes)
    bad = tmp_path / 'vmlinuz'
    bad.write_bytes(bytes(kernel))
    log = console.Console(str(tmp_path / 'console.log'))
    qemu = QEMUProcess(caps.path, [*caps.firmware_args, '-accel', 'tcg', '-m', '256',
                                   '-nodefaults', '-display', 'none', *log.qemu_args(),
                                   '-kernel', str(bad), '-append', 'console=ttyS0'],
                       name='guest', log_dir=str(tmp_path))
    qemu.launch()
    try:
        line = log.wait_for(r'pvh-loader: .*halted', timeout_s=CONSOLE_TIMEOUT_S,
                            alive=qemu.is_running).text
        assert f'segment {paddr:#010x}' in line
        assert 'frame decodes to fewer bytes than the segment holds' in line
        assert 'halted' in line
        # ... and the kernel never ran.
        assert 'Linux version' not in log.text()
    finally:
        qemu.shutdown()
