"""The records FireGrid keeps: process, worker, assignment (cycle is in cycle.py), and
the rules that change them. Each rule is a pure function or method: the services
decide with them, and the repository applies them atomically (a conditional write or
a transaction), so fakes and Firestore cannot disagree about a rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from firegrid.domain.config import ServerConfig
from firegrid.domain.cycle import Cycle, CycleStatus, ProcessStatus
from firegrid.domain.diffs import Schema
from firegrid.domain.errors import Conflict

HOSTING_STALE_AFTER = timedelta(minutes=10)
"""A process still ``hosting`` this long after its creation was left by an instance that
died half-way: no hosting runs longer (the admin function is stopped after 9 minutes), so
a new ``host-training`` of its name and version may take it over."""


@dataclass(frozen=True, kw_only=True)
class Process:
    """A hosted model being trained (PyGrid's FL process)."""

    id: str
    name: str
    version: str
    client_config: Mapping[str, Any]
    server_config: ServerConfig
    status: ProcessStatus
    current_cycle: int
    latest_checkpoint: int
    key_secret: str
    """Server-only secret that request keys are derived from."""
    schema: Schema
    """Names, dtypes and shapes of the model's tensors."""
    plans: Mapping[str, str] = field(default_factory=dict)
    """Plan name -> plan id."""
    plan_sizes: Mapping[str, int] = field(default_factory=dict)
    """Plan name -> bytes (to choose between inline and a signed URL)."""
    created_at: datetime

    def started(self) -> Process:
        """Hosted (checkpoint 1 and the plans stored): cycle 1 opens."""
        return replace(self, status=ProcessStatus.TRAINING)

    def after_cycle(self, checkpoint_out: int, next_cycle: int | None) -> Process | None:
        """A cycle completed into ``checkpoint_out``; training goes on in ``next_cycle``,
        or is over. None unless training: a process being deleted never moves on (its
        completion would recreate documents the deletion removes)."""
        if self.status is not ProcessStatus.TRAINING:
            return None
        if next_cycle is None:
            return replace(self, latest_checkpoint=checkpoint_out, status=ProcessStatus.COMPLETED)
        return replace(self, latest_checkpoint=checkpoint_out, current_cycle=next_cycle)

    @property
    def hosting_retry_at(self) -> datetime:
        """When a hosting still unfinished is taken to have died half-way."""
        return self.created_at + HOSTING_STALE_AFTER

    def hosting_abandoned(self, now: datetime) -> bool:
        """Left ``hosting`` by an instance that died: its name and version may be hosted anew."""
        return self.status is ProcessStatus.HOSTING and now >= self.hosting_retry_at

    def taken_over_by(self, fresh: Process, now: datetime) -> Process | None:
        """A new hosting replaces this process only if this one's hosting was abandoned."""
        return fresh if self.hosting_abandoned(now) else None

    def refuse_while_hosting(self, now: datetime) -> None:
        """A hosting still running (``Conflict``) says when it may be retried if it died."""
        if self.status is ProcessStatus.HOSTING and not self.hosting_abandoned(now):
            raise Conflict(
                f"A hosting of model '{self.name}' version '{self.version}' is in progress "
                f"(started {self.created_at.isoformat()}); if it died, it may be retried "
                f"from {self.hosting_retry_at.isoformat()}",
                "hosting_in_progress",
            )

    def marked_for_deletion(self, now: datetime) -> Process:
        """``deleting``: from now on the process takes no more work. A hosting still running
        is not deleted from under its instance (``Conflict``); an abandoned one is."""
        self.refuse_while_hosting(now)
        return replace(self, status=ProcessStatus.DELETING)

    def in_service(self) -> Process:
        """This process, unless it is being deleted (``Conflict``: it takes no more work)."""
        if self.status is ProcessStatus.DELETING:
            raise Conflict(
                f"Model '{self.name}' version '{self.version}' is being deleted",
                "process_deleting",
            )
        return self


def current_version(processes: Iterable[Process]) -> Process | None:
    """What a name (and maybe a version) means to devices: the newest process that is
    neither being hosted nor being deleted."""
    ready = [p for p in processes if p.status in (ProcessStatus.TRAINING, ProcessStatus.COMPLETED)]
    return max(ready, key=lambda p: p.created_at, default=None)


@dataclass(frozen=True, kw_only=True)
class Worker:
    id: str
    process_id: str
    subject: str
    """Hash of the token subject the id is derived from (or a random nonce)."""
    created_at: datetime
    last_cycle: int | None = None
    """The last cycle this worker reported a diff into."""
    fcm_token: str | None = None
    """Where pushes reach the device; None until registered (or once FCM drops it)."""
    available: bool = False
    """The device said it can train (``register-token`` / ``worker-status``)."""
    available_until: datetime | None = None
    """Availability lapses unless confirmed again by then."""
    ram_gb: float | None = None
    cpu_cores: int | None = None
    slow: bool = False
    """Flagged from the device profile (less than 2 GB of RAM, as the fork did)."""

    def in_pool(self, now: datetime) -> bool:
        """Reachable and currently available."""
        return (
            self.fcm_token is not None
            and self.available
            and self.available_until is not None
            and self.available_until > now
        )

    def with_token(
        self,
        token: str,
        *,
        ram_gb: float | None,
        cpu_cores: int | None,
        slow: bool,
        available_until: datetime,
    ) -> Worker:
        """Registered: reachable at ``token`` and available until ``available_until``."""
        return replace(
            self,
            fcm_token=token,
            ram_gb=ram_gb,
            cpu_cores=cpu_cores,
            slow=slow,
            available=True,
            available_until=available_until,
        )

    def without_token(self, token: str) -> Worker | None:
        """``token`` no longer reaches this worker (None if it holds another one by now)."""
        if self.fcm_token != token:
            return None
        return replace(self, fcm_token=None, available=False)

    def with_availability(self, available: bool, until: datetime | None) -> Worker:
        return replace(self, available=available, available_until=until if available else None)


def token_holders_to_clear(holders: Iterable[Worker], worker: Worker) -> list[Worker]:
    """One worker per device: a token registered by ``worker`` leaves every other worker
    of its process (a reinstalled app's old identity must not inflate the pool)."""
    return [h for h in holders if h.id != worker.id and h.process_id == worker.process_id]


@dataclass(frozen=True, kw_only=True)
class Assignment:
    """A worker's place in a cycle."""

    worker_id: str
    seq: int
    epoch: int
    assigned_at: datetime
    slot: int | None = None
    reported_at: datetime | None = None
    num_samples: int | None = None
    diff_object: str | None = None
    skipped: str | None = None
    """Why the reported diff was left out at closing (its object lost or unusable)."""
    staleness: int | None = None
    """Async: checkpoints published between the one it trained from and its report."""

    @property
    def reported(self) -> bool:
        return self.reported_at is not None

    def skip(self, reason: str) -> Assignment:
        """Closing could not use this diff: it no longer counts, and is not sent again."""
        return replace(self, reported_at=None, skipped=reason)

    def dropped_by_reset(self, epoch: int) -> bool:
        """A reset into ``epoch`` frees the place of a worker that has not reported."""
        return not self.reported and self.epoch < epoch


def first_assignment(worker_id: str, cycle: Cycle, now: datetime, slot: int | None) -> Assignment:
    return Assignment(
        worker_id=worker_id, seq=cycle.seq, epoch=cycle.epoch, assigned_at=now, slot=slot
    )


@dataclass(frozen=True, kw_only=True)
class Report:
    """A diff a worker sends for the cycle and epoch of its request key."""

    epoch: int
    num_samples: int
    diff_object: str
    at: datetime

    def admit(self, cycle: Cycle | None, assignment: Assignment | None) -> Assignment:
        """The assignment once this report is counted; ``Conflict`` says why it cannot be."""
        if cycle is None or cycle.status is not CycleStatus.OPEN:
            raise Conflict("The cycle closed before this report arrived", "cycle_closed")
        if assignment is None or assignment.epoch != self.epoch:
            raise Conflict(
                "This assignment was dropped when the cycle was reset", "assignment_dropped"
            )
        if assignment.reported:
            raise Conflict("This worker already reported for this cycle", "already_reported")
        if assignment.skipped is not None:
            raise Conflict(
                "This worker's diff was left out of this cycle; wait for the next one",
                "diff_skipped",
            )
        return replace(
            assignment,
            reported_at=self.at,
            num_samples=self.num_samples,
            diff_object=self.diff_object,
        )
