"""Fan-out closing: a big cohort's diffs aggregated by groups in parallel, then combined.

Above ``server_config.fanout_threshold`` reported diffs (streaming rules only: a
group's weighted average and its total weight are all a combine needs), the closing
splits the reported diffs into groups of at most that many, one ``Group`` document
each. Each group is aggregated by its own invocation (the group trigger, or the tick
for a group nobody took up) into a partial: the group's weighted average in float64
with its total weight, stored in Cloud Storage. When every group is done, the
closing combines the partials, ``sum(W_g * avg_g) / sum(W_g)``, which is the
single-pass weighted average up to float64 rounding.

A group is aggregated exactly once as a cycle is: under a lease taken by one attempt,
its partial written under that attempt's name and published only by the conditional
write that completes the group.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import numpy as np

from firegrid.domain.aggregation import AggregationFailed, Floats, Step, Tensors
from firegrid.domain.config import ServerConfig


class GroupStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"


@dataclass(frozen=True, kw_only=True)
class Group:
    """One group of a fanned-out closing: ``processes/{p}/cycles/{seq}/groups/{index}``."""

    process_id: str
    seq: int
    index: int
    workers: tuple[str, ...]
    """The reported assignments it aggregates (worker ids)."""
    weights: tuple[float, ...]
    """Their FedAvg weights, computed once over the whole cycle (``fedavg_weights``)."""
    created_at: datetime
    status: GroupStatus = GroupStatus.PENDING
    lease_until: datetime | None = None
    lease_holder: str | None = None
    attempts: int = 0
    partial_object: str | None = None
    """Where its partial (weighted average, float64) is stored, once done."""
    weight: float = 0.0
    """The total weight of its usable diffs."""
    num_diffs: int = 0
    skipped: Mapping[str, str] = field(default_factory=dict)
    """Worker id -> why its diff was left out."""

    def take_lease(self, now: datetime, until: datetime, holder: str) -> Group | None:
        if self.status is not GroupStatus.PENDING:
            return None
        if self.lease_until is not None and self.lease_until > now:
            return None
        return replace(self, lease_until=until, lease_holder=holder, attempts=self.attempts + 1)

    def renew_lease(self, holder: str, until: datetime) -> Group | None:
        if not self.holds_lease(holder):
            return None
        return replace(self, lease_until=until)

    def release_lease(self, holder: str) -> Group | None:
        if not self.holds_lease(holder):
            return None
        return replace(self, lease_until=None, lease_holder=None)

    def holds_lease(self, holder: str) -> bool:
        return self.status is GroupStatus.PENDING and self.lease_holder == holder

    def complete(
        self, holder: str, partial_object: str | None, step: Step | None, skipped: Mapping[str, str]
    ) -> Group | None:
        """``pending -> done`` by the lease holder; ``step`` None: no usable diff in it."""
        if not self.holds_lease(holder):
            return None
        return replace(
            self,
            status=GroupStatus.DONE,
            lease_until=None,
            lease_holder=None,
            partial_object=partial_object,
            weight=step.total_weight if step else 0.0,
            num_diffs=step.num_diffs if step else 0,
            skipped=dict(skipped),
        )

    def needs_redrive(self, now: datetime, grace: timedelta) -> bool:
        """Pending, and its aggregator's lease ran out or none took it within ``grace``."""
        if self.status is not GroupStatus.PENDING:
            return False
        if self.lease_until is not None:
            return self.lease_until <= now
        return self.created_at + grace <= now


def fans_out(num_reported: int, config: ServerConfig) -> bool:
    return (
        config.aggregation.streams
        and num_reported > config.fanout_threshold
        and not config.is_async  # a buffer is aggregated in one invocation
    )


def partition(
    process_id: str,
    seq: int,
    reported: Sequence[tuple[str, float]],
    size: int,
    now: datetime,
) -> list[Group]:
    """The groups of a closing: (worker id, weight) pairs in worker-id order, ``size``
    at most per group. The same reported set always gives the same groups, so a
    re-driven closing finds the groups it created."""
    ordered = sorted(reported)
    return [
        Group(
            process_id=process_id,
            seq=seq,
            index=index,
            workers=tuple(worker for worker, _ in ordered[start : start + size]),
            weights=tuple(weight for _, weight in ordered[start : start + size]),
            created_at=now,
        )
        for index, start in enumerate(range(0, len(ordered), size))
    ]


def combine(template: Tensors, partials: Iterable[tuple[Group, Mapping[str, Any]]]) -> Step:
    """The cycle's step from its groups' partials: ``sum(W_g * avg_g) / sum(W_g)``,
    folded one partial at a time (memory: the float64 sum and one partial)."""
    total = {name: np.zeros(tensor.shape, dtype=np.float64) for name, tensor in template.items()}
    weight, count = 0.0, 0
    for group, partial in partials:
        if set(partial) != set(total):
            raise AggregationFailed(f"the partial of group {group.index} does not fit the model")
        for name, acc in total.items():
            values: Floats = np.asarray(partial[name], dtype=np.float64)
            if values.shape != acc.shape:
                raise AggregationFailed(f"the partial of group {group.index} has a wrong shape")
            acc += group.weight * values
        weight += group.weight
        count += group.num_diffs
    if count == 0 or weight <= 0:
        raise AggregationFailed("no diffs to aggregate")
    return Step(
        delta={k: v / weight for k, v in total.items()}, num_diffs=count, total_weight=weight
    )
