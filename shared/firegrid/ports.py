"""What the services need from the outside world, as small Protocols."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from firegrid.domain.config import AuthConfig
from firegrid.domain.cycle import Cycle
from firegrid.domain.model import Assignment, CycleSummary, Process, Worker
from firegrid.domain.push import PushMessage, SendReport


class Clock(Protocol):
    def now(self) -> datetime: ...


class TokenVerifier(Protocol):
    def subject(self, token: str, auth: AuthConfig) -> str:
        """The token's stable subject; ``Unauthorized`` if the token is not valid."""
        ...


class BlobStore(Protocol):
    def put(self, name: str, data: bytes, *, if_absent: bool = False) -> bool:
        """Store bytes; with ``if_absent`` returns False (and writes nothing) if present."""
        ...

    def get(self, name: str) -> bytes:
        """The bytes; ``NotFound`` if absent."""
        ...

    def delete_prefix(self, prefix: str) -> None: ...


class ProcessRepository(Protocol):
    def create_hosting(self, process: Process) -> None:
        """Create the process document; ``Conflict`` if name+version exists."""
        ...

    def start_training(self, process: Process, first_cycle: Cycle) -> None:
        """Create cycle 1 and mark the process training, atomically."""
        ...

    def delete_process(self, process_id: str) -> None: ...

    def get_process(self, process_id: str) -> Process | None: ...

    def find_process(self, name: str, version: str | None) -> Process | None: ...

    def training_processes(self) -> list[Process]: ...


class WorkerRepository(Protocol):
    def get_worker(self, worker_id: str) -> Worker | None: ...

    def count_workers(self, process_id: str) -> int: ...

    def save_worker(self, worker: Worker) -> Worker:
        """Create the worker unless it exists; return what is stored."""
        ...


class CycleRepository(Protocol):
    def get_cycle(self, process_id: str, seq: int) -> Cycle | None: ...

    def get_assignment(self, process_id: str, seq: int, worker_id: str) -> Assignment | None: ...

    def claim_place(
        self, process_id: str, cycle: Cycle, worker_id: str, max_workers: int | None, now: datetime
    ) -> Assignment | None:
        """The worker's assignment (existing or new); None when all places are taken."""
        ...

    def record_report(
        self,
        process_id: str,
        seq: int,
        worker_id: str,
        epoch: int,
        num_samples: int,
        diff_object: str,
        now: datetime,
    ) -> None:
        """Mark the assignment reported; ``Conflict`` if reported already or the cycle closed."""
        ...

    def count_reported(self, process_id: str, seq: int) -> int: ...

    def count_assigned(self, process_id: str, seq: int) -> int: ...

    def reported_assignments(self, process_id: str, seq: int) -> Iterator[Assignment]: ...

    def begin_closing(self, process_id: str, seq: int) -> bool:
        """Move ``open -> closing``; True only for the one caller that did it."""
        ...

    def acquire_closing_lease(
        self, process_id: str, seq: int, now: datetime, until: datetime
    ) -> Cycle | None:
        """The closing cycle if this caller now holds its aggregation lease."""
        ...

    def complete_cycle(
        self, process_id: str, seq: int, summary: CycleSummary, next_cycle: Cycle | None
    ) -> bool:
        """``closing -> completed`` plus the next cycle (or process completed), atomically."""
        ...

    def reset_cycle(
        self, process_id: str, cycle: Cycle, deadline: datetime | None, drop_unreported: bool
    ) -> bool:
        """Give an expired open cycle a new deadline (and epoch, when dropping workers)."""
        ...


class MetricsRepository(Protocol):
    def add_metrics(self, process_id: str, rows: Sequence[Mapping[str, Any]]) -> int: ...

    def list_metrics(self, process_id: str) -> list[dict[str, Any]]: ...


class Repository(ProcessRepository, WorkerRepository, CycleRepository, MetricsRepository, Protocol):
    """Everything FireGrid keeps in its document store."""


class Notifier(Protocol):
    def send(self, messages: Sequence[PushMessage]) -> SendReport:
        """Deliver each message once; per-token failures go in the report, never raise."""
        ...
