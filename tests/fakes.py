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
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from firegrid.adapters.auth import JwtVerifier
from firegrid.domain.buffered import LOBBY, BufferedReport
from firegrid.domain.config import AuthConfig
from firegrid.domain.cycle import Cycle, ProcessStatus
from firegrid.domain.errors import Conflict, NotFound, Unauthorized
from firegrid.domain.fanout import Group
from firegrid.domain.model import Assignment, Process, Report, Worker, first_assignment
from firegrid.domain.push import PushMessage, SendReport
from firegrid.domain.selection import Places
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
        self.ranges: list[tuple[str, int, int]] = []
        """(name, start, stop) of every ranged read."""
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

    def get_range(self, name: str, start: int, stop: int) -> bytes:
        with self._lock:
            if name not in self.objects:
                raise NotFound(f"Object {name} not found", "missing_object")
            self.ranges.append((name, start, stop))
            return self.objects[name][start : max(start, stop)]

    def delete(self, name: str) -> None:
        with self._lock:
            self.objects.pop(name, None)

    def delete_prefix(self, prefix: str) -> int:
        with self._lock:
            names = [n for n in self.objects if n.startswith(prefix)]
            for name in names:
                del self.objects[name]
            return len(names)

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
    """A cycle document and the collections under it."""

    cycle: Cycle
    assignments: dict[str, Assignment] = field(default_factory=dict)
    slots: dict[int, str] = field(default_factory=dict)
    """Slot number -> worker id (only when the cycle is capped)."""
    invitations: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    """Worker id -> (epoch, invited_at)."""
    locks: dict[str, datetime] = field(default_factory=dict)
    """Lock name -> held until."""
    report_claims: set[str] = field(default_factory=set)
    """``{worker}-{epoch}`` of each counted report (Firestore keeps its claim document)."""
    groups: dict[int, Group] = field(default_factory=dict)
    """A fanned-out closing's groups, by index."""


class FakeRepository:
    """The document store (``firegrid.ports.Repository``) in dicts.

    Storage and atomicity only, as the Firestore adapter: one lock makes every
    method atomic, as a conditional write or a transaction does; every decision is
    the domain's, passed in. tests/integration/test_repository_contract.py runs the
    same tests against this fake and against Firestore.
    """

    def __init__(self) -> None:
        self.processes: dict[str, Process] = {}
        self.workers: dict[str, Worker] = {}
        self.cycles: dict[tuple[str, int], CycleRecord] = {}
        self.invited: dict[str, dict[str, datetime]] = {}
        """Process id -> worker id -> last invited at."""
        self.metrics: dict[str, dict[str, dict[str, Any]]] = {}
        """Process id -> metrics document id -> row."""
        self.pushes: dict[str, dict[str, dict[str, Any]]] = {}
        """Process id -> push key -> record."""
        self._lock = threading.RLock()

    def _record(self, process_id: str, seq: int) -> CycleRecord | None:
        return self.cycles.get((process_id, seq))

    # -- processes --------------------------------------------------------
    def create_hosting(self, process: Process) -> None:
        with self._lock:
            if process.id in self.processes:
                raise Conflict("A process with this name and version exists", "duplicate_process")
            self.processes[process.id] = process

    def start_training(self, process: Process, *cycles: Cycle) -> None:
        with self._lock:
            keys = [(process.id, cycle.seq) for cycle in cycles]
            if any(key in self.cycles for key in keys) or process.id not in self.processes:
                raise LookupError(f"cannot start {process.id}: cycle exists or no process")
            for key, cycle in zip(keys, cycles, strict=True):
                self.cycles[key] = CycleRecord(cycle=cycle)
            self.processes[process.id] = process

    def update_process(
        self, process_id: str, change: Callable[[Process], Process | None]
    ) -> Process | None:
        with self._lock:
            current = self.processes.get(process_id)
            changed = change(current) if current is not None else None
            if changed is not None:
                self.processes[process_id] = changed
            return changed

    def delete_process(self, process_id: str) -> dict[str, int]:
        with self._lock:
            deleted: Counter[str] = Counter()
            for key in [k for k in self.cycles if k[0] == process_id]:
                record = self.cycles.pop(key)
                deleted["cycles"] += 1
                deleted["assignments"] += len(record.assignments)
                deleted["slots"] += len(record.slots)
                deleted["invitations"] += len(record.invitations)
                deleted["locks"] += len(record.locks)
                deleted["report_claims"] += len(record.report_claims)
                deleted["groups"] += len(record.groups)
            for name, collection in (
                ("invited", self.invited),
                ("metrics", self.metrics),
                ("pushes", self.pushes),
            ):
                deleted[name] += len(collection.pop(process_id, {}))
            workers = [w for w in self.workers.values() if w.process_id == process_id]
            for worker in workers:
                del self.workers[worker.id]
            deleted["workers"] = len(workers)
            deleted["processes"] = int(self.processes.pop(process_id, None) is not None)
            return {name: count for name, count in deleted.items() if count}

    def get_process(self, process_id: str) -> Process | None:
        with self._lock:
            return self.processes.get(process_id)

    def processes_named(self, name: str, version: str | None) -> list[Process]:
        with self._lock:
            return [
                p
                for p in self.processes.values()
                if p.name == name and (version is None or p.version == version)
            ]

    def training_processes(self) -> list[Process]:
        with self._lock:
            return [p for p in self.processes.values() if p.status is ProcessStatus.TRAINING]

    # -- workers ----------------------------------------------------------
    def get_worker(self, worker_id: str) -> Worker | None:
        with self._lock:
            return self.workers.get(worker_id)

    def save_worker(self, worker: Worker) -> Worker:
        with self._lock:
            return self.workers.setdefault(worker.id, worker)

    def update_worker(
        self, worker_id: str, change: Callable[[Worker], Worker | None]
    ) -> Worker | None:
        with self._lock:
            current = self.workers.get(worker_id)
            changed = change(current) if current is not None else None
            if changed is not None:
                self.workers[worker_id] = changed
            return changed

    def process_workers(self, process_id: str, *, available_only: bool = False) -> list[Worker]:
        with self._lock:
            return [
                w
                for w in self.workers.values()
                if w.process_id == process_id and (w.available or not available_only)
            ]

    def workers_with_tokens(self, process_id: str, tokens: Sequence[str]) -> list[Worker]:
        with self._lock:
            wanted = set(tokens)
            return [
                w
                for w in self.workers.values()
                if w.process_id == process_id and w.fcm_token in wanted
            ]

    def mark_invited(self, process_id: str, worker_ids: Sequence[str], now: datetime) -> None:
        with self._lock:
            self.invited.setdefault(process_id, {}).update(dict.fromkeys(worker_ids, now))

    def last_invited(self, process_id: str) -> dict[str, datetime]:
        with self._lock:
            return dict(self.invited.get(process_id, {}))

    # -- cycles -----------------------------------------------------------
    def get_cycle(self, process_id: str, seq: int) -> Cycle | None:
        with self._lock:
            record = self._record(process_id, seq)
            return record.cycle if record else None

    def update_cycle(
        self, process_id: str, seq: int, change: Callable[[Cycle], Cycle | None]
    ) -> Cycle | None:
        with self._lock:
            record = self._record(process_id, seq)
            changed = change(record.cycle) if record is not None else None
            if record is not None and changed is not None:
                record.cycle = changed
            return changed

    def complete_cycle(
        self,
        process_id: str,
        seq: int,
        change: Callable[[Cycle], Cycle | None],
        next_cycle: Cycle | None,
        progress: Callable[[Process], Process | None],
    ) -> Cycle | None:
        with self._lock:
            record, stored = self._record(process_id, seq), self.processes.get(process_id)
            if record is None or stored is None:
                return None
            changed, progressed = change(record.cycle), progress(stored)
            if changed is None or progressed is None:
                return None
            if next_cycle is not None and (process_id, next_cycle.seq) in self.cycles:
                raise LookupError(f"cycle {next_cycle.seq} exists already")  # as create() fails
            record.cycle = changed
            if next_cycle is not None:
                self.cycles[(process_id, next_cycle.seq)] = CycleRecord(cycle=next_cycle)
            self.processes[process_id] = dataclasses.replace(
                stored,
                status=progressed.status,
                current_cycle=progressed.current_cycle,
                latest_checkpoint=progressed.latest_checkpoint,
            )
            return changed

    # -- fan-out groups ---------------------------------------------------
    def create_groups(self, process_id: str, seq: int, groups: Sequence[Group]) -> list[Group]:
        with self._lock:
            record = self._record(process_id, seq)
            if record is None:
                return []
            for group in groups:
                record.groups.setdefault(group.index, group)
            return [record.groups[i] for i in sorted(record.groups)]

    def groups(self, process_id: str, seq: int) -> list[Group]:
        with self._lock:
            record = self._record(process_id, seq)
            return [record.groups[i] for i in sorted(record.groups)] if record else []

    def update_group(
        self, process_id: str, seq: int, index: int, change: Callable[[Group], Group | None]
    ) -> Group | None:
        with self._lock:
            record = self._record(process_id, seq)
            stored = record.groups.get(index) if record else None
            changed = change(stored) if stored is not None else None
            if record is not None and changed is not None:
                record.groups[index] = changed
            return changed

    def assignments_of(
        self, process_id: str, seq: int, worker_ids: Sequence[str]
    ) -> list[Assignment]:
        with self._lock:
            record = self._record(process_id, seq)
            found = record.assignments if record else {}
            return [found[w] for w in worker_ids if w in found]

    def get_assignment(self, process_id: str, seq: int, worker_id: str) -> Assignment | None:
        with self._lock:
            record = self._record(process_id, seq)
            return record.assignments.get(worker_id) if record else None

    def update_assignment(
        self,
        process_id: str,
        seq: int,
        worker_id: str,
        change: Callable[[Assignment], Assignment | None],
    ) -> Assignment | None:
        with self._lock:
            record = self._record(process_id, seq)
            current = record.assignments.get(worker_id) if record else None
            changed = change(current) if current is not None else None
            if record is not None and changed is not None:
                record.assignments[worker_id] = changed
            return changed

    def claim_place(
        self,
        process_id: str,
        cycle: Cycle,
        worker_id: str,
        now: datetime,
        places: Places | None,
    ) -> Assignment | None:
        with self._lock:
            record = self.cycles[(process_id, cycle.seq)]
            existing = record.assignments.get(worker_id)
            if existing is not None:
                return existing
            slot = None
            if places is not None:
                slot = next((s for s in places.probes() if s not in record.slots), None)
                if slot is None:
                    slot = places.free_place(
                        lambda lo, hi: sum(lo <= taken < hi for taken in record.slots)
                    )
                if slot is None:
                    return None
                record.slots[slot] = worker_id
            assignment = first_assignment(worker_id, cycle, now, slot)
            record.assignments[worker_id] = assignment
            return assignment

    def record_report(
        self, process_id: str, seq: int, worker_id: str, report: Report
    ) -> Assignment:
        with self._lock:
            record = self._record(process_id, seq)
            admitted = report.admit(
                record.cycle if record else None,
                record.assignments.get(worker_id) if record else None,
            )
            assert record is not None
            if worker_id not in self.workers:  # Firestore's update() of a missing document fails
                raise LookupError(f"no worker document {worker_id}")
            self.workers[worker_id] = dataclasses.replace(self.workers[worker_id], last_cycle=seq)
            record.assignments[worker_id] = admitted
            record.report_claims.add(f"{worker_id}-{report.epoch}")
            return admitted

    def record_buffered(
        self, process_id: str, seq: int, worker_id: str, report: BufferedReport
    ) -> Assignment:
        with self._lock:
            buffer, lobby = self._record(process_id, seq), self._record(process_id, LOBBY)
            assert lobby is not None
            place = lobby.assignments.get(worker_id)
            admitted = report.admit(
                buffer.cycle if buffer else None,
                place,
                buffer.assignments.get(worker_id) if buffer else None,
            )
            assert buffer is not None and place is not None
            if worker_id not in self.workers:  # Firestore's update() of a missing document fails
                raise LookupError(f"no worker document {worker_id}")
            self.workers[worker_id] = dataclasses.replace(self.workers[worker_id], last_cycle=seq)
            buffer.assignments[worker_id] = admitted
            del lobby.assignments[worker_id]
            if place.slot is not None:
                lobby.slots.pop(place.slot, None)
            return admitted

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

    def assignments(self, process_id: str, seq: int) -> list[Assignment]:
        with self._lock:
            record = self._record(process_id, seq)
            return list(record.assignments.values()) if record else []

    def drop_assignments(
        self, process_id: str, seq: int, dropped: Callable[[Assignment], bool]
    ) -> list[str]:
        with self._lock:
            record = self._record(process_id, seq)
            if record is None:
                return []
            gone = [a for a in record.assignments.values() if not a.reported and dropped(a)]
            for assignment in gone:
                del record.assignments[assignment.worker_id]
                if assignment.slot is not None:
                    record.slots.pop(assignment.slot, None)
            return [a.worker_id for a in gone]

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
            invited = [w for w in dict.fromkeys(worker_ids) if w not in record.invitations]
            for worker_id in invited:
                record.invitations[worker_id] = (epoch, now)
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
