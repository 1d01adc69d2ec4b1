"""Asynchronous training (FedBuff, Nguyen et al., AISTATS 2022): the buffer's rules.

In ``mode: "async"`` devices train from whichever checkpoint is the latest when they
join, and each report enters the open *buffer* (a cycle document: buffer ``b`` turns
checkpoint ``b`` into ``b + 1``) with its staleness: how many checkpoints were
published since the one it trained from. A report staler than ``max_staleness`` is
refused; the others are damped by ``1 / (1 + s) ** staleness_exponent``.

The places (``max_concurrency`` of them, for the whole process) and the assignments of
devices still training live in the *lobby*, cycle ``LOBBY``, which never closes: the
same slot documents and probing admission as a capped sync cycle. A join's ``epoch``
is the checkpoint it trains from, so the request key names that checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from firegrid.domain.aggregation import Step
from firegrid.domain.config import ServerConfig
from firegrid.domain.cycle import Cycle, CycleStatus
from firegrid.domain.errors import Conflict
from firegrid.domain.model import Assignment, Report

LOBBY = 0
"""The cycle number of an async process's lobby: its places and assignments in flight."""


def staleness(latest_checkpoint: int, trained_from: int) -> int:
    """Checkpoints published since the one a report trained from."""
    return max(0, latest_checkpoint - trained_from)


def damping(stale: int, exponent: float) -> float:
    """FedBuff's staleness weight ``1 / (1 + s) ** e`` (1 for a fresh report)."""
    return float((1.0 + stale) ** -exponent)


def check_staleness(stale: int, config: ServerConfig) -> None:
    """``Conflict`` (``too_stale``) for a report staler than ``max_staleness``."""
    limit = config.max_staleness
    if limit is not None and stale > limit:
        raise Conflict(
            f"This report trained from a checkpoint {stale} checkpoints old; "
            f"max_staleness is {limit}: ask for a new cycle and train again",
            "too_stale",
        )


def damped_weights(
    base: Sequence[float], stalenesses: Sequence[int], exponent: float
) -> list[float]:
    """Each report's factor in the buffer's sum: its base weight (samples, or 1 for
    ``mean``) times its damping."""
    return [b * damping(s, exponent) for b, s in zip(base, stalenesses, strict=True)]


def undamp(step: Step, base_total: float) -> None:
    """Rescale (in place) a rule's step, divided by the damped total, to the base total:
    ``sum(b_k d_k diff_k) / sum(b_k)``. Stale updates are damped, not renormalised away."""
    factor = step.total_weight / base_total
    for values in step.delta.values():
        values *= factor


def is_full(num_reported: int, config: ServerConfig) -> bool:
    return config.buffer_size is not None and num_reported >= config.buffer_size


def mean_staleness(entries: Iterable[Assignment]) -> float | None:
    values = [a.staleness for a in entries if a.staleness is not None]
    return sum(values) / len(values) if values else None


def place_deadline(place: Assignment, config: ServerConfig) -> datetime | None:
    """``cycle_length`` after the place's acceptance (None without a cycle length)."""
    if config.cycle_length is None:
        return None
    return place.assigned_at + timedelta(seconds=config.cycle_length)


def place_expired(place: Assignment, now: datetime, config: ServerConfig) -> bool:
    """A place not reported by its deadline is freed."""
    deadline = place_deadline(place, config)
    return deadline is not None and deadline <= now


class BufferClosed(Conflict):
    """The buffer filled before this report was recorded: it goes into the next one."""

    default_code = "cycle_closed"


@dataclass(frozen=True, kw_only=True)
class BufferedReport:
    """A report entering buffer ``seq`` with its staleness."""

    report: Report
    staleness: int

    def admit(
        self, buffer: Cycle | None, place: Assignment | None, entry: Assignment | None
    ) -> Assignment:
        """The buffer's entry for this report; ``Conflict`` says why it cannot be made."""
        if buffer is None or buffer.status is not CycleStatus.OPEN:
            raise BufferClosed("The buffer filled before this report arrived")
        if place is None or place.epoch != self.report.epoch:
            raise Conflict(
                "This place is no longer held: it was reported already, or freed at its deadline",
                "assignment_dropped",
            )
        if entry is not None:
            raise Conflict("This worker already reported into this buffer", "already_reported")
        return replace(
            place,
            seq=buffer.seq,
            slot=None,
            reported_at=self.report.at,
            num_samples=self.report.num_samples,
            diff_object=self.report.diff_object,
            staleness=self.staleness,
        )
