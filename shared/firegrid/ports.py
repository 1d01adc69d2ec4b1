"""What the services need from the outside world, as small Protocols."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from firegrid.domain.config import AuthConfig
from firegrid.domain.cycle import Cycle
from firegrid.domain.model import Assignment, CycleSummary, Process, Worker
from firegrid.domain.push import PushMessage, SendReport


class Clock(Protocol):
    def now(self) -> datetime: ...


class TokenVerifier(Protocol):
    def check(self, auth: AuthConfig) -> None:
        """Refuse (``BadRequest``) a configuration no token could pass: an unparsable key..."""
        ...

    def subject(self, token: str, auth: AuthConfig) -> str:
        """The token's stable subject; ``Unauthorized`` if the token is not valid,
        ``Unavailable`` if whoever decides could not be asked."""
        ...


class BlobStore(Protocol):
    def put(self, name: str, data: bytes, *, if_absent: bool = False) -> bool:
        """Store bytes; with ``if_absent`` returns False (and writes nothing) if present."""
        ...

    def get(self, name: str, *, max_bytes: int | None = None) -> bytes:
        """The bytes; ``NotFound`` if absent (or larger than ``max_bytes``)."""
        ...

    def delete(self, name: str) -> None: ...

    def delete_prefix(self, prefix: str) -> None: ...

    def signed_url(
        self,
        name: str,
        *,
        method: str,
        expires_in: timedelta,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """A short-lived URL to GET or PUT one object without other credentials; the
        request must carry ``headers`` (signed with the URL, e.g. a content-length range)."""
        ...


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

    def process_workers(self, process_id: str, *, available_only: bool = False) -> list[Worker]: ...

    def register_token(
        self,
        worker: Worker,
        token: str,
        *,
        ram_gb: float | None,
        cpu_cores: int | None,
        slow: bool,
        available_until: datetime,
    ) -> None:
        """Store the token and profile; the token leaves any other worker of the process."""
        ...

    def set_available(self, worker_id: str, available: bool, until: datetime | None) -> None: ...

    def drop_tokens(self, process_id: str, tokens: Sequence[str]) -> int:
        """Forget tokens FCM no longer knows; how many workers lost theirs."""
        ...

    def mark_invited(self, worker_ids: Sequence[str], now: datetime) -> None: ...

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
    ) -> list[str] | None:
        """Give an expired open cycle a new deadline (and epoch, when dropping workers).

        None if another caller got there first; else the workers whose places were dropped.
        """
        ...

    def assignments(self, process_id: str, seq: int) -> list[Assignment]: ...

    def invitations(self, process_id: str, seq: int) -> dict[str, int]:
        """Worker id -> the cycle epoch it was invited in."""
        ...

    def record_invitations(
        self, process_id: str, seq: int, epoch: int, worker_ids: Sequence[str], now: datetime
    ) -> list[str]:
        """Create the invitations that do not exist yet; the ids this call invited."""
        ...

    def try_lock(
        self, process_id: str, seq: int, name: str, now: datetime, until: datetime
    ) -> bool:
        """A named per-cycle lock, held until released or ``until``."""
        ...

    def unlock(self, process_id: str, seq: int, name: str) -> None: ...


class MetricsRepository(Protocol):
    def add_metrics(self, process_id: str, rows: Sequence[Mapping[str, Any]]) -> int: ...

    def list_metrics(self, process_id: str) -> list[dict[str, Any]]: ...


class PushLog(Protocol):
    def claim_push(self, process_id: str, key: str, record: Mapping[str, Any]) -> bool:
        """Record a send about to happen; False if ``key`` was sent already (send it once)."""
        ...

    def finish_push(self, process_id: str, key: str, result: Mapping[str, Any]) -> None: ...

    def recent_pushes(self, process_id: str, limit: int = 5) -> list[dict[str, Any]]: ...


class Repository(
    ProcessRepository, WorkerRepository, CycleRepository, MetricsRepository, PushLog, Protocol
):
    """Everything FireGrid keeps in its document store."""


class Notifier(Protocol):
    def send(self, messages: Sequence[PushMessage]) -> SendReport:
        """Deliver each message once; per-token failures go in the report, never raise."""
        ...
