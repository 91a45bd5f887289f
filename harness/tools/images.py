"""Build the guest images and the agent, cached (what ``make images`` and
``make functional`` run).

    python -m harness.tools.images build [all|tiny|lsi-boot|agent ...]
    python -m harness.tools.images list

``all`` (the default) is every recipe in tests/images/ (harness/images/image.py)
and the agent tier's bare-metal guest (harness/images/agent.py).  Each one
built, or found in its cache in well under a second, prints a line: its
name and where it lies; the builder logs each build as it starts and ends.
The recipes are planned together, so an image and its base come from one
package resolution.
"""

import argparse
import logging
import os
import sys
import time
from typing import Sequence

from ..base.errors import HarnessError
from ..images import agent, image

AGENT = 'agent'


def build(names: Sequence[str]) -> int:
    """Build the recipes and/or the agent ``names`` lists, in order."""
    if 'all' in names:
        names = [*image.recipe_names(), AGENT]
    recipes = [name for name in names if name != AGENT]
    if recipes:
        started = time.monotonic()
        print(f"images {', '.join(recipes)}: planning (apt look-ups, cached)", flush=True)
        for name, guest in image.build_recipes(recipes).items():
            print(f'{name}: {os.path.dirname(guest.manifest)}', flush=True)
        print(f'images: {time.monotonic() - started:.2f} s', flush=True)
    if AGENT in names:
        started = time.monotonic()
        try:
            where = agent.agent_elf()
        except agent.AgentBuildError as err:
            print(f'agent build failed: {err}', file=sys.stderr)
            return 1
        print(f'{AGENT}: {where} ({time.monotonic() - started:.2f} s)')
    return 0


def list_builds() -> None:
    """Each recipe and the agent with where its current build lies."""
    for name in image.recipe_names():
        plan = image.Plan(name)
        state = 'built' if os.path.isdir(plan.out_dir) else 'not built'
        print(f'{name}: {plan.out_dir} ({state})')
    elf = agent.elf_path()
    print(f"{AGENT}: {elf} ({'built' if os.path.exists(elf) else 'not built'})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m harness.tools.images',
                                     description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    build_cmd = sub.add_parser('build', help='build recipes and the agent (cached builds are kept)')
    build_cmd.add_argument('names', nargs='*', default=['all'],
                           help=f"recipe names, '{AGENT}', or 'all' (default: every recipe "
                                f"and the agent)")
    sub.add_parser('list', help='list recipes and the agent with their current builds')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        if args.command == 'list':
            list_builds()
            return 0
        return build(args.names)
    except HarnessError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
