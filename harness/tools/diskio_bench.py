"""Disk IO inside booted guests: the same workloads through the remote LSI
and through the in-process one (what ``make bench`` runs last).

    python -m harness.tools.diskio_bench bench --out build/bench
"""

import argparse
import os
import sys
import time
from typing import List, Optional

from ..base import params
from ..base.errors import HarnessError
from ..base.figures import write_report
from ..base.units import MIB
from ..guest.diskio import PATH_DRIVER, DiskIOError, Workload, guest_disk_io, path_for
from ..guest.session import GuestSession
from ..images.image import resolve_image
from ..mpqemu import topology
from ..qemu import accel as qemu_accel
from ..qemu import binary as qemu_binary

BENCH_WORKLOADS = (
    Workload('verify', lba=0, blocks=16384, bs=4096, order='seq', seed=11),
    Workload('verify', lba=32768, blocks=16384, bs=65536, order='seq', seed=12),
    Workload('verify', lba=65536, blocks=16384, bs=65536, order='rand', seed=13),
    Workload('verify', lba=98304, blocks=16384, bs=524288, order='seq', seed=14),
)
BENCH_DISK_MIB = 64
BENCH_GUEST_CPUS = 2


def bench(out_dir: str, qemu_bin: Optional[str] = None, accel_request: str = 'auto',
          workloads=BENCH_WORKLOADS) -> dict:
    """The same workloads through the remote LSI and through the
    in-process (control) LSI, each in a freshly booted ``tiny`` guest."""
    caps = qemu_binary.probe(qemu_bin or params.get('qemu_bin'))
    caps.require_multiprocess()
    accel = qemu_accel.select_accel(caps, accel_request)
    image = resolve_image('tiny')
    report = {'qemu': '.'.join(map(str, caps.version)), 'accel': accel.name,
              'path': path_for(accel.name, topology.PROXY), 'workloads': {}, 'boot_s': {}}
    for kind, placement in (('remote', topology.PROXY), ('in_process', topology.IN_PROCESS)):
        log_dir = os.path.join(out_dir, f'diskio-{kind}')
        os.makedirs(log_dir, exist_ok=True)
        disk = os.path.join(log_dir, 'disk.raw')
        with open(disk, 'wb') as f:
            f.truncate(BENCH_DISK_MIB * MIB)
        path = path_for(accel.name, placement)
        load = path == PATH_DRIVER
        vm = topology.Machine(caps, log_dir, placement=placement, accel=accel.name,
                              smp=BENCH_GUEST_CPUS)
        vm.add_lsi('lsi1', disk)
        session = GuestSession(image, log_dir, load_sym53c8xx=load)
        try:
            started = time.monotonic()
            session.boot(vm)
            report['boot_s'][kind] = round(time.monotonic() - started, 1)
            dio = guest_disk_io(session.ssh, path)
            for w in workloads:
                result = dio.run(w)
                if not result.ok:
                    raise DiskIOError(f"{kind} {w.name()}: {result.status}: {result.error}")
                report['workloads'].setdefault(w.name(), {})[kind] = result.figures()
        finally:
            session.close()
            vm.shutdown()
            os.unlink(disk)
    return report



def bench_markdown(report: dict) -> str:
    lines = [f"# Disk IO in a guest: remote vs in-process LSI (QEMU {report['qemu']}, "
             f"accel {report['accel']}, {report['path']} path)", '',
             '| workload | phase | remote MB/s | in-process MB/s | remote p50 µs | '
             'in-process p50 µs |', '|---|---|---:|---:|---:|---:|']
    for name, kinds in report['workloads'].items():
        remote, local = kinds.get('remote', {}), kinds.get('in_process', {})
        for phase in remote:
            r, c = remote[phase], local.get(phase, {})
            lines.append(f"| {name} | {phase} | {r['mb_s']} | {c.get('mb_s', '-')} | "
                         f"{r['lat_p50_us']} | {c.get('lat_p50_us', '-')} |")
    return '\n'.join(lines) + '\n'


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m harness.tools.diskio_bench',
                                     description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    b = sub.add_parser('bench', help='remote vs in-process LSI, same workloads')
    b.add_argument('--out', default=os.path.join('build', 'bench'))
    b.add_argument('--qemu-bin', default=None)
    b.add_argument('--accel', default=None, help='auto (default), kvm or tcg')
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    try:
        report = bench(args.out, args.qemu_bin, args.accel or params.get_accel())
    except HarnessError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    write_report(args.out, 'diskio-bench', report, bench_markdown(report))
    return 0


if __name__ == '__main__':
    sys.exit(main())
