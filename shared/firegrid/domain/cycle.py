"""The cycle state machine's rules as pure functions of state and ``now``.

A cycle is ``open`` until it fills or its deadline passes, ``closing`` while
one instance aggregates it, then ``completed``. An expired cycle with too few
diffs is reset (or extended) in place: it stays ``open`` with a new deadline
and a bumped ``epoch`` that invalidates the request keys of dropped workers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from firegrid.domain import blobs
from firegrid.domain.config import ServerConfig


class CycleStatus(StrEnum):
    OPEN = "open"
    CLOSING = "closing"
    COMPLETED = "completed"
    FAILED = "failed"
    """Aggregation failed ``MAX_AGGREGATION_ATTEMPTS`` times; ``last_error`` says why."""


MAX_AGGREGATION_ATTEMPTS = 3
"""Aggregations of one cycle that may fail (for other reasons than unusable diffs)
before the cycle is marked ``failed``."""


class ProcessStatus(StrEnum):
    HOSTING = "hosting"
    TRAINING = "training"
    COMPLETED = "completed"
    DELETING = "deleting"
    """An operator is deleting it: it takes no more work, and its documents and objects go."""


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
    closing_lease_holder: str | None = None
    """The aggregation attempt holding the lease: every write of a closing is fenced by it,
    so an aggregator overtaken after its lease ran out changes nothing."""
    closing_at: datetime | None = None
    """When the cycle stopped taking reports."""
    aggregation_runs: int = 0
    """Aggregation leases taken: 1 for a cycle closed by one instance, more after re-drives."""
    failures: int = 0
    """Aggregations that failed (not counting those left for a fan-out's groups)."""
    resets: int = 0
    """Deadlines passed with too few diffs (reset or extended)."""
    summary: CycleSummary | None = None
    """What closing produced; set once the cycle is completed."""
    model_object: str | None = None
    """The checkpoint this cycle trains from; None: checkpoint ``seq``'s plain name (the
    hosted model, or a cycle stored before checkpoints were named by their attempt)."""
    skipped: Mapping[str, int] = field(default_factory=dict)
    """Reported diffs left out at closing because they could not be used, by reason."""
    last_error: str | None = None
    """Why the last aggregation failed (shown by ``admin/status``)."""
    drop_pending: bool = False
    """A reset into this epoch has not yet freed the unreported places of earlier epochs:
    the instance that reset it drops them next, and the tick does if that one died."""

    @property
    def checkpoint(self) -> int:
        """The checkpoint this cycle trains from."""
        return self.seq

    @property
    def model(self) -> str:
        """The object name of the checkpoint this cycle trains from."""
        return self.model_object or blobs.checkpoint_object(self.process_id, self.seq)

    @property
    def outcome(self) -> str:
        """How the cycle ended (``closed`` or ``failed``) or, until then, its status."""
        return "closed" if self.status is CycleStatus.COMPLETED else self.status.value

    def duration_s(self) -> float | None:
        """From opening to the completion that closed it (None until completed)."""
        if self.summary is None:
            return None
        return (self.summary.closed_at - self.opened_at).total_seconds()

    def expiries(self, config: ServerConfig) -> tuple[int, int]:
        """(resets, extensions): each deadline passed with too few diffs did what
        ``on_expiry`` says (the count is kept in ``resets`` either way)."""
        return (0, self.resets) if config.on_expiry == "extend" else (self.resets, 0)

    def seconds_left(self, now: datetime) -> float | None:
        """Until the deadline, never negative; None without one (the console's countdown)."""
        if self.deadline is None:
            return None
        return max(0.0, (self.deadline - now).total_seconds())

    def holds_lease(self, holder: str) -> bool:
        return self.status is CycleStatus.CLOSING and self.closing_lease_holder == holder

    # -- transitions: each returns the new cycle, or None when it does not apply --------

    def begin_closing(self, now: datetime) -> Cycle | None:
        """``open -> closing``: no report lands from now on."""
        if self.status is not CycleStatus.OPEN:
            return None
        return replace(self, status=CycleStatus.CLOSING, closing_at=now)

    def take_lease(self, now: datetime, until: datetime, holder: str) -> Cycle | None:
        """The aggregation lease of a closing cycle, unless another holder's is still valid."""
        if self.status is not CycleStatus.CLOSING:
            return None
        if self.closing_lease_until is not None and self.closing_lease_until > now:
            return None
        return replace(
            self,
            closing_lease_until=until,
            closing_lease_holder=holder,
            aggregation_runs=self.aggregation_runs + 1,
        )

    def renew_lease(self, holder: str, until: datetime) -> Cycle | None:
        """Extend ``holder``'s lease while its work goes on; None once it was overtaken."""
        if not self.holds_lease(holder):
            return None
        return replace(self, closing_lease_until=until)

    def needs_redrive(self, now: datetime, grace: timedelta) -> bool:
        """A closing cycle nobody is aggregating: its aggregator's lease ran out, or no
        aggregator took one ``grace`` after it closed (the trigger's event was lost)."""
        if self.status is not CycleStatus.CLOSING:
            return False
        if self.closing_lease_until is not None:
            return self.closing_lease_until <= now
        return self.closing_at is None or self.closing_at + grace <= now

    def record_failure(
        self, holder: str, error: str, *, max_attempts: int = MAX_AGGREGATION_ATTEMPTS
    ) -> Cycle | None:
        """``holder``'s aggregation failed: the lease is released for the next attempt, or,
        after ``max_attempts``, the cycle is ``failed`` (it stops being re-driven)."""
        if not self.holds_lease(holder):
            return None
        failures = self.failures + 1
        status = CycleStatus.FAILED if failures >= max_attempts else self.status
        return self._released(status=status, failures=failures, last_error=error)

    def release_lease(self, holder: str) -> Cycle | None:
        """``holder`` stopped for a passing reason: the next attempt may start at once."""
        if not self.holds_lease(holder):
            return None
        return self._released()

    def reopen(
        self,
        holder: str,
        deadline: datetime | None,
        skipped: Mapping[str, int],
        *,
        drop_unreported: bool,
    ) -> Cycle | None:
        """Too few usable diffs were left at ``holder``'s closing: the cycle takes reports
        again, as an expired one would (a new epoch when unreported places are dropped)."""
        if not self.holds_lease(holder):
            return None
        return self._released(
            status=CycleStatus.OPEN,
            deadline=deadline,
            epoch=self.epoch + 1 if drop_unreported else self.epoch,
            resets=self.resets + 1,
            closing_at=None,
            skipped=_merged(self.skipped, skipped),
            drop_pending=drop_unreported or self.drop_pending,
        )

    def complete(
        self, holder: str, summary: CycleSummary, skipped: Mapping[str, int] | None = None
    ) -> Cycle | None:
        """``closing -> completed``, once, by the lease holder; ``skipped`` counts the diffs
        it left out."""
        if not self.holds_lease(holder):
            return None
        return self._released(
            status=CycleStatus.COMPLETED,
            summary=summary,
            skipped=_merged(self.skipped, skipped or {}),
            last_error=None,
        )

    def _released(self, **changes: Any) -> Cycle:
        return replace(self, closing_lease_until=None, closing_lease_holder=None, **changes)

    def reset(
        self, seen: Cycle, deadline: datetime | None, *, drop_unreported: bool
    ) -> Cycle | None:
        """A new deadline for an expired open cycle, as ``seen`` by the caller (None if
        another caller reset it first). Dropping unreported workers starts a new epoch,
        which invalidates their request keys."""
        unchanged = (
            self.status is CycleStatus.OPEN
            and self.epoch == seen.epoch
            and self.deadline == seen.deadline
        )
        if not unchanged:
            return None
        epoch = self.epoch + 1 if drop_unreported else self.epoch
        return replace(
            self,
            deadline=deadline,
            epoch=epoch,
            resets=self.resets + 1,
            drop_pending=drop_unreported or self.drop_pending,
        )

    def places_dropped(self, epoch: int) -> Cycle | None:
        """The unreported places of the epochs before ``epoch`` were freed (None if that
        was recorded already, or a later reset is pending now)."""
        if not self.drop_pending or self.epoch != epoch:
            return None
        return replace(self, drop_pending=False)


@dataclass(frozen=True, kw_only=True)
class CycleSummary:
    """What closing a cycle produced."""

    num_diffs: int
    total_samples: int
    checkpoint_out: int
    closed_at: datetime
    checkpoint_object: str | None = None
    """Where checkpoint ``checkpoint_out`` is stored (None: its plain name, in summaries
    stored before checkpoints were named by their attempt)."""
    optimizer_state_object: str | None = None
    """Where the server optimizer's state after this closing is stored (None: no
    ``server_optimizer``)."""
    epsilon: float | None = None
    """``dp``: the privacy spent by every cycle up to this one, at ``dp.delta``."""
    privacy_spent: Mapping[str, int] | None = None
    """``dp``: the cycles up to this one by sampling rate (``privacy.Spent``)."""
    next_clip_norm: float | None = None
    """Adaptive clipping: the clip norm the next cycle's closing uses."""
    mean_staleness: float | None = None
    """Async: the mean staleness of the reports this buffer aggregated."""


def _merged(counts: Mapping[str, int], more: Mapping[str, int]) -> dict[str, int]:
    merged = dict(counts)
    for reason, count in more.items():
        merged[reason] = merged.get(reason, 0) + count
    return merged


def deadline_for(opened_at: datetime, config: ServerConfig) -> datetime | None:
    if config.cycle_length is None or config.is_async:  # async: places expire, not buffers
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
