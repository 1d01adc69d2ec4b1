"""In-memory implementations of every port (``firegrid.ports``) for fast tests.

Each fake keeps the semantics the Protocol documents and the Firestore / Cloud
Storage adapters implement (conflicts, check-and-set transitions, create-if-absent),
and records what happened so tests assert on state, not on calls. One lock per
fake makes every method atomic, as a transaction or a conditional write is.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from firegrid.adapters.auth import JwtVerifier
from firegrid.domain.config import AuthConfig
from firegrid.domain.cycle import Cycle, CycleStatus, ProcessStatus
from firegrid.domain.errors import Conflict, NotFound, Unauthorized
from firegrid.domain.model import Assignment, CycleSummary, Process, Worker
from firegrid.domain.push import PushMessage, SendReport
from firegrid.services.context import Context
from firegrid.settings import Settings

START = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


class FixedClock:
    """Time stands still until a test moves it."""

    def __init__(self, start: datetime = START) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> datetime:
        self._now += timedelta(seconds=seconds)
        return self._now


class FakeVerifier:
    """Accepts ``"valid:<subject>"``; anything else is the adapter's invalid-token 401."""

    PREFIX = "valid:"

    def __init__(self) -> None:
        self.checked: list[str] = []

    def check(self, auth: AuthConfig) -> None:
        JwtVerifier().check(auth)  # pure: parses the key, checks the endpoint URL

    def subject(self, token: str, auth: AuthConfig) -> str:
        self.checked.append(token)
        if not token.startswith(self.PREFIX) or len(token) == len(self.PREFIX):
            raise Unauthorized("The 'auth_token' you sent is invalid.", "invalid_token")
        return "sub:" + token.removeprefix(self.PREFIX)


class FakeNotifier:
    """Delivers to every token except those told to be unregistered (or failing)."""

    def __init__(self, *, unregistered: Sequence[str] = (), failing: Sequence[str] = ()) -> None:
        self.unregistered = set(unregistered)
        """Tokens FCM no longer knows: reported back, never delivered."""
        self.failing = set(failing)
        """Tokens whose delivery fails (a transient error after retries)."""
        self.sent: list[PushMessage] = []
        """Every message delivered, in order."""
        self.reports: list[SendReport] = []
        self._lock = threading.Lock()

    def send(self, messages: Sequence[PushMessage]) -> SendReport:
        with self._lock:
            delivered = [
                m
                for m in messages
                if m.token not in self.unregistered and m.token not in self.failing
            ]
            gone = [m.token for m in messages if m.token in self.unregistered]
            failed = [m.token for m in messages if m.token in self.failing]
            self.sent.extend(delivered)
            report = SendReport(
                sent=len(delivered),
                failed=len(failed),
                unregistered=tuple(dict.fromkeys(gone)),
                errors=tuple(f"{token}: unavailable" for token in failed),
            )
            self.reports.append(report)
            return report

    def of_type(self, push_type: str) -> list[PushMessage]:
        return [m for m in self.sent if m.data["type"] == push_type]

    def types(self) -> list[str]:
        """The message types in the order they were first sent."""
        return list(dict.fromkeys(m.data["type"] for m in self.sent))


class FakeBlobStore:
    """A bucket as a dict; ``writes`` lists every object written, in order."""

    URL_BASE = "https://storage.fake.invalid/b/"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.writes: list[str] = []
        self.signed: list[tuple[str, str]] = []
        """(method, name) of every signed URL handed out."""
        self.signed_headers: dict[str, Mapping[str, str]] = {}
        """The headers each signed URL (by object name) requires."""
        self._lock = threading.Lock()

    def put(self, name: str, data: bytes, *, if_absent: bool = False) -> bool:
        with self._lock:
            if if_absent and name in self.objects:
                return False
            self.objects[name] = bytes(data)
            self.writes.append(name)
            return True

    def get(self, name: str, *, max_bytes: int | None = None) -> bytes:
        with self._lock:
            if name not in self.objects:
                raise NotFound(f"Object {name} not found", "missing_object")
            data = self.objects[name]
            if max_bytes is not None and len(data) > max_bytes:
                raise NotFound(f"Object {name} is larger than {max_bytes} bytes", "too_large")
            return data

    def delete(self, name: str) -> None:
        with self._lock:
            self.objects.pop(name, None)

    def delete_prefix(self, prefix: str) -> None:
        with self._lock:
            for name in [n for n in self.objects if n.startswith(prefix)]:
                del self.objects[name]

    def signed_url(
        self,
        name: str,
        *,
        method: str,
        expires_in: timedelta,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        with self._lock:
            self.signed.append((method, name))
            self.signed_headers[name] = dict(headers or {})
        return f"{self.URL_BASE}{name}?method={method}&expires={int(expires_in.total_seconds())}"


@dataclass
class CycleRecord:
    """A cycle document: the domain ``Cycle`` plus the fields only the store keeps."""

    cycle: Cycle
    aggregation_runs: int = 0
    resets: int = 0
    summary: CycleSummary | None = None
    assignments: dict[str, Assignment] = field(default_factory=dict)
    slots: dict[int, str] = field(default_factory=dict)
    """Slot number -> worker id (only when ``max_workers`` is set)."""
    invitations: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    """Worker id -> (epoch, invited_at)."""
    locks: dict[str, datetime] = field(default_factory=dict)
    """Lock name -> held until."""


class FakeRepository:
    """The whole document store (``firegrid.ports.Repository``) in dicts."""

    def __init__(self) -> None:
        self.processes: dict[str, Process] = {}
        self.workers: dict[str, Worker] = {}
        self.cycles: dict[tuple[str, int], CycleRecord] = {}
        self.metrics: dict[str, dict[str, dict[str, Any]]] = {}
        """Process id -> metrics document id -> row."""
        self.pushes: dict[str, dict[str, dict[str, Any]]] = {}
        """Process id -> push key -> record."""
        self._lock = threading.RLock()

    # -- helpers for tests ------------------------------------------------
    def cycle_record(self, process_id: str, seq: int) -> CycleRecord:
        return self.cycles[(process_id, seq)]

    def _record(self, process_id: str, seq: int) -> CycleRecord | None:
        return self.cycles.get((process_id, seq))

    def _update_worker(self, worker_id: str, **changes: Any) -> None:
        if worker_id not in self.workers:  # Firestore's update() of a missing document fails
            raise LookupError(f"no worker document {worker_id}")
        self.workers[worker_id] = dataclasses.replace(self.workers[worker_id], **changes)

    # -- processes --------------------------------------------------------
    def create_hosting(self, process: Process) -> None:
        with self._lock:
            if process.id in self.processes:
                raise Conflict("A process with this name and version exists", "duplicate_process")
            self.processes[process.id] = process

    def start_training(self, process: Process, first_cycle: Cycle) -> None:
        with self._lock:
            key = (process.id, first_cycle.seq)
            if key in self.cycles or process.id not in self.processes:
                raise LookupError(f"cannot start {process.id}: cycle exists or no process")
            self.cycles[key] = CycleRecord(cycle=first_cycle)
            self.processes[process.id] = dataclasses.replace(
                self.processes[process.id], status=ProcessStatus.TRAINING
            )

    def delete_process(self, process_id: str) -> None:
        with self._lock:
            self.processes.pop(process_id, None)

    def get_process(self, process_id: str) -> Process | None:
        with self._lock:
            return self.processes.get(process_id)

    def find_process(self, name: str, version: str | None) -> Process | None:
        with self._lock:
            found = [
                p
                for p in self.processes.values()
                if p.name == name
                and (version is None or p.version == version)
                and p.status is not ProcessStatus.HOSTING
            ]
            return max(found, key=lambda p: p.created_at, default=None)

    def training_processes(self) -> list[Process]:
        with self._lock:
            return [p for p in self.processes.values() if p.status is ProcessStatus.TRAINING]

    # -- workers ----------------------------------------------------------
    def get_worker(self, worker_id: str) -> Worker | None:
        with self._lock:
            return self.workers.get(worker_id)

    def process_workers(self, process_id: str, *, available_only: bool = False) -> list[Worker]:
        with self._lock:
            return [
                w
                for w in self.workers.values()
                if w.process_id == process_id and (w.available or not available_only)
            ]

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
        with self._lock:
            if worker.id not in self.workers:
                raise LookupError(f"no worker document {worker.id}")
            for other in list(self.workers.values()):
                if (
                    other.id != worker.id
                    and other.process_id == worker.process_id
                    and other.fcm_token == token
                ):
                    self._update_worker(other.id, fcm_token=None, available=False)
            self._update_worker(
                worker.id,
                fcm_token=token,
                ram_gb=ram_gb,
                cpu_cores=cpu_cores,
                slow=slow,
                available=True,
                available_until=available_until,
            )

    def set_available(self, worker_id: str, available: bool, until: datetime | None) -> None:
        with self._lock:
            self._update_worker(worker_id, available=available, available_until=until)

    def drop_tokens(self, process_id: str, tokens: Sequence[str]) -> int:
        with self._lock:
            wanted = set(tokens)
            holders = [
                w.id
                for w in self.workers.values()
                if w.process_id == process_id and w.fcm_token in wanted
            ]
            for worker_id in holders:
                self._update_worker(worker_id, fcm_token=None, available=False)
            return len(holders)

    def mark_invited(self, worker_ids: Sequence[str], now: datetime) -> None:
        with self._lock:
            for worker_id in worker_ids:
                self._update_worker(worker_id, last_invited_at=now)

    def save_worker(self, worker: Worker) -> Worker:
        with self._lock:
            return self.workers.setdefault(worker.id, worker)

    # -- cycles -----------------------------------------------------------
    def get_cycle(self, process_id: str, seq: int) -> Cycle | None:
        with self._lock:
            record = self._record(process_id, seq)
            return record.cycle if record else None

    def get_assignment(self, process_id: str, seq: int, worker_id: str) -> Assignment | None:
        with self._lock:
            record = self._record(process_id, seq)
            return record.assignments.get(worker_id) if record else None

    def claim_place(
        self, process_id: str, cycle: Cycle, worker_id: str, max_workers: int | None, now: datetime
    ) -> Assignment | None:
        with self._lock:
            record = self.cycles[(process_id, cycle.seq)]
            existing = record.assignments.get(worker_id)
            if existing is not None:
                return existing
            slot = None
            if max_workers is not None:
                free = [i for i in range(max_workers) if i not in record.slots]
                if not free:
                    return None
                slot = free[0]
                record.slots[slot] = worker_id
            assignment = Assignment(
                worker_id=worker_id, seq=cycle.seq, epoch=cycle.epoch, assigned_at=now, slot=slot
            )
            record.assignments[worker_id] = assignment
            return assignment

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
        with self._lock:
            record = self._record(process_id, seq)
            if record is None or record.cycle.status is not CycleStatus.OPEN:
                raise Conflict("The cycle closed before this report arrived", "cycle_closed")
            assignment = record.assignments.get(worker_id)
            if assignment is None or assignment.epoch != epoch:
                raise Conflict(
                    "This assignment was dropped when the cycle was reset", "assignment_dropped"
                )
            if assignment.reported:
                raise Conflict("This worker already reported for this cycle", "already_reported")
            self._update_worker(worker_id, last_cycle=seq)
            record.assignments[worker_id] = dataclasses.replace(
                assignment, reported_at=now, num_samples=num_samples, diff_object=diff_object
            )

    def count_reported(self, process_id: str, seq: int) -> int:
        with self._lock:
            return sum(1 for a in self.assignments(process_id, seq) if a.reported)

    def count_assigned(self, process_id: str, seq: int) -> int:
        with self._lock:
            return len(self.assignments(process_id, seq))

    def reported_assignments(self, process_id: str, seq: int) -> Iterator[Assignment]:
        with self._lock:
            reported = [a for a in self.assignments(process_id, seq) if a.reported]
        yield from reported

    def begin_closing(self, process_id: str, seq: int) -> bool:
        with self._lock:
            record = self._record(process_id, seq)
            if record is None or record.cycle.status is not CycleStatus.OPEN:
                return False
            record.cycle = dataclasses.replace(record.cycle, status=CycleStatus.CLOSING)
            return True

    def acquire_closing_lease(
        self, process_id: str, seq: int, now: datetime, until: datetime
    ) -> Cycle | None:
        with self._lock:
            record = self._record(process_id, seq)
            if record is None or record.cycle.status is not CycleStatus.CLOSING:
                return None
            lease = record.cycle.closing_lease_until
            if lease is not None and lease > now:
                return None
            record.cycle = dataclasses.replace(record.cycle, closing_lease_until=until)
            record.aggregation_runs += 1
            return record.cycle

    def complete_cycle(
        self, process_id: str, seq: int, summary: CycleSummary, next_cycle: Cycle | None
    ) -> bool:
        with self._lock:
            record = self._record(process_id, seq)
            if record is None or record.cycle.status is not CycleStatus.CLOSING:
                return False
            if next_cycle is not None and (process_id, next_cycle.seq) in self.cycles:
                raise LookupError(f"cycle {next_cycle.seq} exists already")
            record.cycle = dataclasses.replace(
                record.cycle, status=CycleStatus.COMPLETED, closing_lease_until=None
            )
            record.summary = summary
            process = self.processes[process_id]
            if next_cycle is None:
                process = dataclasses.replace(process, status=ProcessStatus.COMPLETED)
            else:
                self.cycles[(process_id, next_cycle.seq)] = CycleRecord(cycle=next_cycle)
                process = dataclasses.replace(process, current_cycle=next_cycle.seq)
            self.processes[process_id] = dataclasses.replace(
                process, latest_checkpoint=summary.checkpoint_out
            )
            return True

    def reset_cycle(
        self, process_id: str, cycle: Cycle, deadline: datetime | None, drop_unreported: bool
    ) -> list[str] | None:
        with self._lock:
            record = self._record(process_id, cycle.seq)
            current = record.cycle if record else None
            if (
                record is None
                or current is None
                or current.status is not CycleStatus.OPEN
                or current.epoch != cycle.epoch
                or current.deadline != cycle.deadline
            ):
                return None
            new_epoch = cycle.epoch + 1 if drop_unreported else cycle.epoch
            record.cycle = dataclasses.replace(current, deadline=deadline, epoch=new_epoch)
            record.resets += 1
            if not drop_unreported:
                return []
            dropped = [
                a for a in record.assignments.values() if not a.reported and a.epoch < new_epoch
            ]
            for assignment in dropped:
                del record.assignments[assignment.worker_id]
                if assignment.slot is not None:
                    record.slots.pop(assignment.slot, None)
            return [a.worker_id for a in dropped]

    def assignments(self, process_id: str, seq: int) -> list[Assignment]:
        with self._lock:
            record = self._record(process_id, seq)
            return list(record.assignments.values()) if record else []

    def invitations(self, process_id: str, seq: int) -> dict[str, int]:
        with self._lock:
            record = self._record(process_id, seq)
            if record is None:
                return {}
            return {worker: epoch for worker, (epoch, _) in record.invitations.items()}

    def record_invitations(
        self, process_id: str, seq: int, epoch: int, worker_ids: Sequence[str], now: datetime
    ) -> list[str]:
        with self._lock:
            record = self.cycles[(process_id, seq)]
            invited = []
            for worker_id in worker_ids:
                if worker_id in record.invitations:
                    continue  # never invite a worker twice into one cycle
                record.invitations[worker_id] = (epoch, now)
                invited.append(worker_id)
            return invited

    def try_lock(
        self, process_id: str, seq: int, name: str, now: datetime, until: datetime
    ) -> bool:
        with self._lock:
            locks = self.cycles[(process_id, seq)].locks
            held_until = locks.get(name)
            if held_until is not None and held_until > now:
                return False
            locks[name] = until
            return True

    def unlock(self, process_id: str, seq: int, name: str) -> None:
        with self._lock:
            record = self._record(process_id, seq)
            if record is not None:
                record.locks.pop(name, None)

    # -- metrics ----------------------------------------------------------
    def add_metrics(self, process_id: str, rows: Sequence[Mapping[str, Any]]) -> int:
        with self._lock:
            stored = self.metrics.setdefault(process_id, {})
            for row in rows:
                stored[f"{row['client_id']}-{row['cycle_id']}-{row.get('set', 'test')}"] = dict(row)
            return len(rows)

    def list_metrics(self, process_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = [dict(r) for r in self.metrics.get(process_id, {}).values()]
            return sorted(rows, key=lambda r: (r["cycle_id"], r["client_id"]))

    # -- pushes -----------------------------------------------------------
    def claim_push(self, process_id: str, key: str, record: Mapping[str, Any]) -> bool:
        with self._lock:
            pushes = self.pushes.setdefault(process_id, {})
            if key in pushes:
                return False
            pushes[key] = dict(record)
            return True

    def finish_push(self, process_id: str, key: str, result: Mapping[str, Any]) -> None:
        with self._lock:
            self.pushes[process_id][key].update(result)

    def recent_pushes(self, process_id: str, limit: int = 5) -> list[dict[str, Any]]:
        with self._lock:
            records = [dict(r) for r in self.pushes.get(process_id, {}).values()]
            records.sort(key=lambda r: r["created_at"], reverse=True)
            return records[:limit]


def fake_settings(**overrides: Any) -> Settings:
    """The settings every fast test runs with (override any field)."""
    defaults: dict[str, Any] = {"project_id": "demo-test", "bucket": "b", "admin_token": "tok"}
    return Settings(**(defaults | overrides))


def make_context(**overrides: Any) -> Context:
    """A Context of fresh fakes; pass ``repo=...``, ``clock=...`` etc. to replace one."""
    parts: dict[str, Any] = {
        "repo": FakeRepository(),
        "blobs": FakeBlobStore(),
        "verifier": FakeVerifier(),
        "clock": FixedClock(),
        "settings": fake_settings(),
        "notifier": FakeNotifier(),
        "rng": random.Random(0),
    }
    return Context(**(parts | overrides))
