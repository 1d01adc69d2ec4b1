"""The cycle state machine's rules as pure functions of state and ``now``.

A cycle is ``open`` until it fills or its deadline passes, ``closing`` while
one instance aggregates it, then ``completed``. An expired cycle with too few
diffs is reset (or extended) in place: it stays ``open`` with a new deadline
and a bumped ``epoch`` that invalidates the request keys of dropped workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from firegrid.domain.config import ServerConfig


class CycleStatus(StrEnum):
    OPEN = "open"
    CLOSING = "closing"
    COMPLETED = "completed"


class ProcessStatus(StrEnum):
    HOSTING = "hosting"
    TRAINING = "training"
    COMPLETED = "completed"


@dataclass(frozen=True, kw_only=True)
class Cycle:
    process_id: str
    seq: int
    """1-based cycle number; cycle n trains checkpoint n into checkpoint n+1."""
    status: CycleStatus
    epoch: int
    """Bumped at every reset; part of each request key."""
    opened_at: datetime
    deadline: datetime | None
    start_key: str
    """Key devices echo as ``cycle_start_request_key`` when invited."""
    closing_lease_until: datetime | None = None
    """While set and in the future, one instance is aggregating this cycle."""

    @property
    def checkpoint(self) -> int:
        """The checkpoint this cycle trains from."""
        return self.seq


def deadline_for(opened_at: datetime, config: ServerConfig) -> datetime | None:
    if config.cycle_length is None:
        return None
    return opened_at + timedelta(seconds=config.cycle_length)


def has_enough(num_diffs: int, config: ServerConfig) -> bool:
    return num_diffs >= (config.min_diffs or 1)


def hit_max_diffs(num_diffs: int, config: ServerConfig) -> bool:
    return config.max_diffs is not None and num_diffs >= config.max_diffs


def is_expired(cycle: Cycle, now: datetime) -> bool:
    return cycle.deadline is not None and now >= cycle.deadline


def is_ready(cycle: Cycle, num_diffs: int, config: ServerConfig, now: datetime) -> bool:
    """PyGrid's rule: ``has_enough and (hit_max_diffs or hit_deadline)``.

    PyGrid's third case, "no limits", cannot occur here: a config without
    ``cycle_length`` must set ``max_diffs`` (see ServerConfig).
    """
    return has_enough(num_diffs, config) and (
        hit_max_diffs(num_diffs, config) or is_expired(cycle, now)
    )


def seconds_until(moment: datetime | None, now: datetime, fallback: int) -> int:
    """Whole seconds a rejected device should wait: at least 1, never negative."""
    if moment is None:
        return fallback
    return max(1, math.ceil((moment - now).total_seconds()))


def is_last_cycle(seq: int, config: ServerConfig) -> bool:
    return config.num_cycles > 0 and seq >= config.num_cycles
