"""What the services need from the outside world, as small Protocols."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from firegrid.domain.buffered import BufferedReport
from firegrid.domain.config import AuthConfig
from firegrid.domain.cycle import Cycle
from firegrid.domain.fanout import Group
from firegrid.domain.model import Assignment, Process, Report, Worker
from firegrid.domain.push import PushMessage, SendReport
from firegrid.domain.selection import Places


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

    def get_range(self, name: str, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of the object, fewer if it ends before ``stop``
        (none past its end); ``NotFound`` if absent. Lets aggregation read a slice of a
        diff without holding the whole object."""
        ...

    def delete(self, name: str) -> None: ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose name starts with ``prefix`` (those already gone are
        skipped, so a second run finishes a first one); how many this call deleted."""
        ...

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


ProcessChange = Callable[[Process], "Process | None"]


class ProcessRepository(Protocol):
    def create_hosting(self, process: Process) -> None:
        """Create the process document; ``Conflict`` if name+version exists."""
        ...

    def start_training(self, process: Process, *cycles: Cycle) -> None:
        """Create the first cycles (cycle 1; async: the lobby and buffer 1) and store the
        process's new status, atomically."""
        ...

    def update_process(self, process_id: str, change: ProcessChange) -> Process | None:
        """Replace the stored process with what ``change`` makes of it, atomically (re-applied
        on a concurrent write); the process as stored, or None if absent or declined."""
        ...

    def delete_process(self, process_id: str) -> dict[str, int]:
        """Delete every document of the process: those under it (cycles and everything
        under them, invited, pushes, metrics), its workers, then the process document
        itself, in batches of at most 500 writes. A second run finishes what a first one
        left (documents under a process document already gone included). Documents
        deleted, by collection name (``processes``, ``workers``, ``cycles``, ...)."""
        ...

    def get_process(self, process_id: str) -> Process | None: ...

    def processes_named(self, name: str, version: str | None) -> list[Process]:
        """Every process of that name (and version, if given), in any status."""
        ...

    def training_processes(self) -> list[Process]: ...


WorkerChange = Callable[[Worker], "Worker | None"]
CycleChange = Callable[[Cycle], "Cycle | None"]
GroupChange = Callable[[Group], "Group | None"]
AssignmentChange = Callable[[Assignment], "Assignment | None"]


class WorkerRepository(Protocol):
    def get_worker(self, worker_id: str) -> Worker | None: ...

    def save_worker(self, worker: Worker) -> Worker:
        """Create the worker unless it exists; return what is stored."""
        ...

    def update_worker(self, worker_id: str, change: WorkerChange) -> Worker | None:
        """Apply ``change`` to the stored worker atomically (re-applied on a concurrent
        write); the worker as stored, or None if absent or ``change`` declined."""
        ...

    def process_workers(self, process_id: str, *, available_only: bool = False) -> list[Worker]: ...

    def workers_with_tokens(self, process_id: str, tokens: Sequence[str]) -> list[Worker]:
        """The workers of the process that hold any of ``tokens``."""
        ...

    def mark_invited(self, process_id: str, worker_ids: Sequence[str], now: datetime) -> None:
        """Remember when these workers were last invited (not on the worker documents,
        whose writes fire the pool trigger)."""
        ...

    def last_invited(self, process_id: str) -> dict[str, datetime]:
        """Worker id -> when it was last invited."""
        ...


class CycleRepository(Protocol):
    def get_cycle(self, process_id: str, seq: int) -> Cycle | None: ...

    def update_cycle(self, process_id: str, seq: int, change: CycleChange) -> Cycle | None:
        """Apply ``change`` to the stored cycle atomically (re-applied on a concurrent write);
        the cycle as stored, or None if absent or ``change`` declined."""
        ...

    def complete_cycle(
        self,
        process_id: str,
        seq: int,
        change: CycleChange,
        next_cycle: Cycle | None,
        progress: ProcessChange,
    ) -> Cycle | None:
        """``update_cycle``, and in the same atomic write create ``next_cycle`` and store
        the progress (status, current cycle, latest checkpoint) ``progress`` makes of the
        stored process; nothing is written if either change declines (or the process
        changed meanwhile and then declines)."""
        ...

    def get_assignment(self, process_id: str, seq: int, worker_id: str) -> Assignment | None: ...

    def update_assignment(
        self, process_id: str, seq: int, worker_id: str, change: AssignmentChange
    ) -> Assignment | None:
        """Apply ``change`` to the stored assignment atomically; None if absent or declined."""
        ...

    def claim_place(
        self,
        process_id: str,
        cycle: Cycle,
        worker_id: str,
        now: datetime,
        places: Places | None,
    ) -> Assignment | None:
        """The worker's assignment in ``cycle`` (existing, or new); with ``places`` the
        cycle is capped: a new assignment takes a free place atomically, tried as
        ``places`` says (its probes, then ``free_place`` over counts of the taken ones,
        never a listing), and None means every place is taken."""
        ...

    def record_report(
        self, process_id: str, seq: int, worker_id: str, report: Report
    ) -> Assignment:
        """Count ``report`` atomically: ``report.admit`` decides on the stored cycle and
        assignment (raising ``Conflict``), then the assignment and the worker's last
        reported cycle are written. Twins of one report are counted once."""
        ...

    def record_buffered(
        self, process_id: str, seq: int, worker_id: str, report: BufferedReport
    ) -> Assignment:
        """Async: move the worker's place into buffer ``seq`` atomically: ``report.admit``
        decides on the stored buffer, the worker's place in the lobby and its entry in the
        buffer (raising ``Conflict``; ``BufferClosed`` once the buffer filled), then the
        entry is created and the place (assignment and slot) freed, in one transaction.
        Twins of one report are counted once."""
        ...

    def count_reported(self, process_id: str, seq: int) -> int: ...

    def count_assigned(self, process_id: str, seq: int) -> int: ...

    def reported_assignments(self, process_id: str, seq: int) -> Iterator[Assignment]: ...

    def assignments(self, process_id: str, seq: int) -> list[Assignment]: ...

    def drop_assignments(
        self, process_id: str, seq: int, dropped: Callable[[Assignment], bool]
    ) -> list[str]:
        """Delete the assignments ``dropped`` picks, each with its slot, unless it changed
        meanwhile (a report racing the drop wins); the worker ids dropped."""
        ...

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


class GroupRepository(Protocol):
    """The groups of a fanned-out closing (``domain.fanout``)."""

    def create_groups(self, process_id: str, seq: int, groups: Sequence[Group]) -> list[Group]:
        """Create those of ``groups`` that do not exist yet; every group as stored."""
        ...

    def groups(self, process_id: str, seq: int) -> list[Group]:
        """The cycle's groups, by index."""
        ...

    def update_group(
        self, process_id: str, seq: int, index: int, change: GroupChange
    ) -> Group | None:
        """Apply ``change`` to the stored group atomically; None if absent or declined."""
        ...

    def assignments_of(
        self, process_id: str, seq: int, worker_ids: Sequence[str]
    ) -> list[Assignment]:
        """The assignments of these workers that exist, in one read."""
        ...


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
    ProcessRepository,
    WorkerRepository,
    CycleRepository,
    GroupRepository,
    MetricsRepository,
    PushLog,
    Protocol,
):
    """Everything FireGrid keeps in its document store."""


class Notifier(Protocol):
    def send(self, messages: Sequence[PushMessage]) -> SendReport:
        """Deliver each message once; per-token failures go in the report, never raise."""
        ...
