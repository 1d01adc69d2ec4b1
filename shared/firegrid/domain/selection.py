"""Choosing which workers to invite into a cycle (the fork's features 2, 4, 6, 11, 16).

Pure: the candidates, the cycle's state and the random generator come in.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from firegrid.domain.config import ServerConfig


@dataclass(frozen=True, kw_only=True)
class Candidate:
    worker_id: str
    last_invited_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class RoundState:
    """What a cycle's current epoch already has."""

    assigned: int
    """Workers holding a place in this epoch."""
    invited: int
    """Workers invited in this epoch."""
    invited_and_assigned: int
    """Invited workers of this epoch that took a place."""


def invitations_wanted(config: ServerConfig, state: RoundState, pool: int) -> int:
    """How many more workers to invite now (0: none).

    Mode 0 (synchronous) invites once per cycle epoch, before anyone joined;
    mode 1 (and async mode, whose places free up one by one) tops up while
    places are free, counting invitations still outstanding. ``over_selection``
    absorbs drop-outs. Below ``min_workers`` nobody is invited.
    """
    if pool < config.min_workers or pool == 0:
        return 0
    started = state.invited > 0 or state.assigned > 0
    if config.worker_participation_mode == 0 and started and not config.is_async:
        return 0
    goal = config.invitation_goal
    if goal is None:
        return pool
    free_places = goal - state.assigned
    if free_places <= 0:
        return 0
    outstanding = state.invited - state.invited_and_assigned
    return max(0, min(pool, math.ceil(free_places * config.over_selection) - outstanding))


def select(
    candidates: Sequence[Candidate], count: int, method: str, rng: random.Random
) -> list[str]:
    """``count`` distinct worker ids: a uniform sample without replacement (``random``)
    or the least recently invited first (``iterate``)."""
    count = min(count, len(candidates))
    if method == "iterate":
        oldest_first = sorted(
            candidates,
            key=lambda c: (
                c.last_invited_at is not None,
                c.last_invited_at or datetime.min,
                c.worker_id,
            ),
        )
        return [c.worker_id for c in oldest_first[:count]]
    ordered = sorted(c.worker_id for c in candidates)  # the same draw whatever the query order
    return rng.sample(ordered, count)


PROBES = 8
"""Random places a claimant tries before it asks the store how many are taken."""


@dataclass(frozen=True)
class Places:
    """The places ``0 .. cap-1`` of a capped cycle, and how a claimant finds a free one
    without listing the taken ones (admission costs the same whatever the cap).

    First ``probes``: a few distinct random places, so concurrent claimants spread out
    and, while the cycle is not nearly full, one of them is almost always free. When
    every probe was taken, ``free_place`` bisects the places by how many are taken in
    each range (a ``count()`` in the store): ``log2(cap)`` counts find a free place, and
    the first says exactly whether the cycle is full.
    """

    cap: int
    rng: random.Random

    def probes(self) -> list[int]:
        return self.rng.sample(range(self.cap), min(PROBES, self.cap))

    def free_place(self, taken_in: Callable[[int, int], int]) -> int | None:
        """A place that was free when counted (``taken_in(lo, hi)``: how many of
        ``lo .. hi-1`` are taken), or None if all are taken. Each step searches a random
        half first, so claimants racing for the last places do not all pick the same."""
        lo, hi = 0, self.cap
        if taken_in(lo, hi) >= hi - lo:
            return None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            halves = [(lo, mid), (mid, hi)]
            self.rng.shuffle(halves)
            first, second = halves
            lo, hi = first if taken_in(*first) < first[1] - first[0] else second
        return lo
