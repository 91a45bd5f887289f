"""Boot-time benchmark: firmware to console marker and to SSH.

    python -m harness.tools.bootbench --runs 5 --out build/bench

boots the ``lsi-boot`` image (SeaBIOS → syslinux → Linux, the disk served
by the LSI) ``--runs`` times with the LSI in a remote process and as many
times with it inside the guest's QEMU (the control), one boot at a time,
and reports median and spread of launch → ready marker and launch → SSH
as ``boot.json`` and ``boot.md``.  Figures, not asserts.
"""

import argparse
import os
import sys
import tempfile
import time
from typing import Sequence

from ..base import params
from ..base.figures import spread, write_report
from ..images.image import resolve_image
from ..guest.diskio import PATH_DRIVER, path_for
from ..guest.session import GuestSession, boot_drive
from ..mpqemu import topology
from ..qemu import accel as qemu_accel
from ..qemu import binary as qemu_binary

DEFAULT_RUNS = 5


def boot_once(caps, accel: str, image, workdir: str, control: bool) -> dict:
    log_dir = tempfile.mkdtemp(prefix='boot-', dir=workdir)
    placement = topology.IN_PROCESS if control else topology.PROXY
    load_sym53c8xx = path_for(accel, placement) == PATH_DRIVER
    drive, fmt = boot_drive(image, log_dir, load_sym53c8xx=load_sym53c8xx)
    vm = topology.Machine(caps, log_dir, placement=placement, accel=accel)
    vm.add_lsi('lsi1', drive, fmt=fmt)
    session = GuestSession(image, log_dir, load_sym53c8xx=load_sym53c8xx)
    try:
        session.boot(vm)
        return session.figures()
    finally:
        session.close()
        vm.shutdown()


def run(caps, accel: str, runs: int, workdir: str) -> dict:
    image = resolve_image('lsi-boot')
    report = {'qemu': caps.version_string, 'accel': accel, 'image': image.name,
              'runs': runs, 'figures': {}}
    for label, control in (('remote', False), ('in-process', True)):
        samples = [boot_once(caps, accel, image, workdir, control) for _ in range(runs)]
        for key in ('boot_to_marker_s', 'boot_to_ssh_s'):
            report['figures'][f'{label}_{key}'] = spread([s[key] for s in samples], digits=2)
    return report


def markdown(report: dict) -> str:
    lines = [f"Boot of {report['image']} ({report['qemu']}, {report['accel']}, "
             f"{report['runs']} runs each), seconds", '',
             '| figure | median | min | p10 | p90 | max |', '|---|---:|---:|---:|---:|---:|']
    for name, s in report['figures'].items():
        lines.append(f"| {name} | {s['median']} | {s['min']} | {s['p10']} | {s['p90']} "
                     f"| {s['max']} |")
    return '\n'.join(lines) + '\n'


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog='python -m harness.tools.bootbench',
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('--runs', type=int, default=DEFAULT_RUNS)
    parser.add_argument('--out', default=os.path.join('build', 'bench'))
    args = parser.parse_args(argv)
    caps = qemu_binary.probe(params.get('qemu_bin'))
    caps.require_multiprocess()
    accel = qemu_accel.select_accel(caps, params.get_accel()).name
    with tempfile.TemporaryDirectory(prefix='bootbench-') as workdir:
        started = time.monotonic()
        report = run(caps, accel, args.runs, workdir)
        report['wall_s'] = round(time.monotonic() - started, 1)
    write_report(args.out, 'boot', report, markdown(report))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
