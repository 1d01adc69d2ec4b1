"""Choosing which workers to invite into a cycle (the fork's features 2, 4, 6, 11, 16).

Pure: the candidates, the cycle's state and the random generator come in.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
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
    mode 1 tops up while places are free, counting invitations still
    outstanding. ``over_selection`` absorbs drop-outs. Below ``min_workers``
    nobody is invited.
    """
    if pool < config.min_workers or pool == 0:
        return 0
    started = state.invited > 0 or state.assigned > 0
    if config.worker_participation_mode == 0 and started:
        return 0
    goal = config.goal_count or config.max_workers
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


def free_slot(taken: set[int], max_workers: int, rng: random.Random) -> int | None:
    """A free place of a capped cycle, chosen at random so that concurrent claimants
    spread over the free places instead of racing for the first; None when all are taken."""
    free = [slot for slot in range(max_workers) if slot not in taken]
    return rng.choice(free) if free else None
