"""Building a case from message families, from ``(seed, index)`` alone.

A family is a function that adds its steps (and fds) to the case being
built through a :class:`Builder`.  :class:`Families` picks a transport's
families the same way for every transport: sometimes an out-of-order
start on a fresh remote, then a few families a healthy remote survives,
sometimes one that should end it.  ``random.Random`` is seeded with the
transport's name, the seed and the index, so any case can be rebuilt.
"""

import random
from typing import Callable, List, Optional, Sequence, Tuple

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


class Families:
    """A transport's families: those a healthy remote survives and those
    that should end it, with their weights, and the one that starts a
    case on a fresh remote (out of order), if any."""

    def __init__(self, prefix: str, survivable: Sequence[Tuple[Family, int]],
                 ending: Sequence[Tuple[Family, int]], out_of_order: Optional[Family] = None):
        self.prefix = prefix
        self.survivable = list(survivable)
        self.ending = list(ending)
        self.out_of_order = out_of_order

    def names(self) -> List[str]:
        extra = [self.out_of_order] if self.out_of_order else []
        return [family_name(f) for f in [f for f, _ in self.survivable + self.ending] + extra]

    def generate(self, seed: int, index: int, layout: Layout) -> Case:
        """Case ``index`` of run ``seed``: depends on nothing else."""
        rng = random.Random(f'{self.prefix}/{seed}/{index}')
        case = Case(seed, index)
        b = Builder(case, rng, layout)
        families = []
        if self.out_of_order and rng.random() < OUT_OF_ORDER_PROBABILITY:
            families.append(self.out_of_order)
        parts = rng.randint(1, MAX_SURVIVABLE_PARTS)
        families += rng.choices([f for f, _ in self.survivable],
                                [w for _, w in self.survivable], k=parts)
        if rng.random() < ENDING_PROBABILITY:
            families += rng.choices([f for f, _ in self.ending], [w for _, w in self.ending])
        for family in families:
            family(b)
            case.families.append(family_name(family))
        return case
