"""Building a case from message families, from ``(seed, index)`` alone.

A family is a function that adds its steps (and fds) to the case being
built through a :class:`Builder`.  :func:`generate` picks a transport's
families the same way for every transport: sometimes an out-of-order
start on a fresh remote, then a few families a healthy remote survives,
sometimes one that should end it.  ``random.Random`` is seeded with the
transport's name, the seed and the index, so any case can be rebuilt.
"""

import random
from typing import Callable, Optional, Sequence, Tuple

from .cases import Case, Layout, Step

UINT64_MAX = (1 << 64) - 1
ENDING_PROBABILITY = 0.2
OUT_OF_ORDER_PROBABILITY = 0.02
MAX_SURVIVABLE_PARTS = 8


class Builder:
    """Adds one family's steps and fds to the case being generated."""

    def __init__(self, case: Case, rng: random.Random, layout: Layout):
        self.case, self.rng, self.layout = case, rng, layout

    def fd(self, kind: str) -> int:
        self.case.fds.append(kind)
        return len(self.case.fds) - 1

    def step(self, data: bytes, note: str, fds: Sequence[int] = (), reply: bool = False,
             **kw) -> None:
        self.case.steps.append(Step(data, tuple(fds), note, reply, **kw))

    def touch(self, what: str) -> None:
        if what not in self.case.touches:
            self.case.touches.append(what)

    def u32(self) -> int:
        return self.rng.getrandbits(32)

    def u64(self) -> int:
        return self.rng.choice([0, 1, 0xff, 0xffff_ffff, UINT64_MAX, self.rng.getrandbits(64)])


Family = Callable[[Builder], None]


def family_name(family: Family) -> str:
    """``fam_bad_bar_size`` -> ``bad-bar-size``."""
    return family.__name__.removeprefix('fam_').replace('_', '-')


def generate(prefix: str, seed: int, index: int, layout: Layout,
             survivable: Sequence[Tuple[Family, int]], ending: Sequence[Tuple[Family, int]],
             out_of_order: Optional[Family]) -> Case:
    """Case ``index`` of run ``seed`` from weighted families."""
    rng = random.Random(f'{prefix}/{seed}/{index}')
    case = Case(seed, index)
    b = Builder(case, rng, layout)
    families = []
    if out_of_order and rng.random() < OUT_OF_ORDER_PROBABILITY:
        families.append(out_of_order)
    parts = rng.randint(1, MAX_SURVIVABLE_PARTS)
    families += rng.choices([f for f, _ in survivable], [w for _, w in survivable], k=parts)
    if rng.random() < ENDING_PROBABILITY:
        families += rng.choices([f for f, _ in ending], [w for _, w in ending])
    for family in families:
        family(b)
        case.families.append(family_name(family))
    return case
