"""The Repository port on Cloud Firestore.

Layout (docs/state.md): ``processes/{p}``, ``processes/{p}/cycles/{seq}``,
``.../cycles/{seq}/assignments/{worker}``, ``.../cycles/{seq}/slots/{i}``,
``processes/{p}/metrics/{id}``, ``workers/{worker}``.

Concurrency: no document is written by every request. Places in a capped
cycle are claimed with create-if-absent slot documents; transitions of a
cycle run in transactions that check its status first, so they happen once.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from firegrid.domain.config import ServerConfig
from firegrid.domain.cycle import Cycle, CycleStatus, ProcessStatus
from firegrid.domain.diffs import schema_from_wire, schema_to_wire
from firegrid.domain.errors import Conflict, Unavailable
from firegrid.domain.limits import INT64_MAX
from firegrid.domain.model import Assignment, CycleSummary, Process, Worker

_EXISTS = (gexc.AlreadyExists, gexc.Conflict, gexc.FailedPrecondition)
REPORT_CLAIM_WAIT_S = 10.0
"""How long a twin report waits for the copy being recorded to finish."""
REPORT_CLAIM_TTL = timedelta(seconds=60)
"""A report claim older than this was left by a dead instance: the next twin takes it."""


class FirestoreRepository:
    def __init__(self, client: firestore.Client) -> None:
        self._db = client

    # -- references -------------------------------------------------------
    def _process_ref(self, process_id: str) -> firestore.DocumentReference:
        return self._db.collection("processes").document(process_id)

    def _cycle_ref(self, process_id: str, seq: int) -> firestore.DocumentReference:
        return self._process_ref(process_id).collection("cycles").document(str(seq))

    def _assignments(self, process_id: str, seq: int) -> firestore.CollectionReference:
        return self._cycle_ref(process_id, seq).collection("assignments")

    def _slots(self, process_id: str, seq: int) -> firestore.CollectionReference:
        return self._cycle_ref(process_id, seq).collection("slots")

    def _worker_ref(self, worker_id: str) -> firestore.DocumentReference:
        return self._db.collection("workers").document(worker_id)

    # -- processes --------------------------------------------------------
    def create_hosting(self, process: Process) -> None:
        try:
            self._process_ref(process.id).create(_process_doc(process))
        except _EXISTS:
            raise Conflict(
                "A process with this name and version exists", "duplicate_process"
            ) from None

    def start_training(self, process: Process, first_cycle: Cycle) -> None:
        batch = self._db.batch()
        batch.create(self._cycle_ref(process.id, first_cycle.seq), _cycle_doc(first_cycle))
        batch.update(self._process_ref(process.id), {"status": ProcessStatus.TRAINING.value})
        batch.commit()

    def delete_process(self, process_id: str) -> None:
        self._process_ref(process_id).delete()

    def get_process(self, process_id: str) -> Process | None:
        snap = self._process_ref(process_id).get()
        return _process(snap.id, snap.to_dict()) if snap.exists else None

    def find_process(self, name: str, version: str | None) -> Process | None:
        query = self._db.collection("processes").where(filter=FieldFilter("name", "==", name))
        if version is not None:
            query = query.where(filter=FieldFilter("version", "==", version))
        found = [_process(s.id, s.to_dict()) for s in query.stream()]
        found = [p for p in found if p.status is not ProcessStatus.HOSTING]
        return max(found, key=lambda p: p.created_at, default=None)

    def training_processes(self) -> list[Process]:
        query = self._db.collection("processes").where(
            filter=FieldFilter("status", "==", ProcessStatus.TRAINING.value)
        )
        return [_process(s.id, s.to_dict()) for s in query.stream()]

    # -- workers ----------------------------------------------------------
    def get_worker(self, worker_id: str) -> Worker | None:
        snap = self._worker_ref(worker_id).get()
        return _worker(snap.id, snap.to_dict()) if snap.exists else None

    def save_worker(self, worker: Worker) -> Worker:
        try:
            self._worker_ref(worker.id).create(
                {
                    "process_id": worker.process_id,
                    "subject": worker.subject,
                    "created_at": worker.created_at,
                    "last_cycle": worker.last_cycle,
                }
            )
            return worker
        except _EXISTS:
            existing = self.get_worker(worker.id)
            assert existing is not None
            return existing

    def process_workers(self, process_id: str, *, available_only: bool = False) -> list[Worker]:
        query = self._db.collection("workers").where(
            filter=FieldFilter("process_id", "==", process_id)
        )
        if available_only:
            query = query.where(filter=FieldFilter("available", "==", True))
        return [_worker(s.id, s.to_dict()) for s in query.stream()]

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
        holders = (
            self._db.collection("workers")
            .where(filter=FieldFilter("process_id", "==", worker.process_id))
            .where(filter=FieldFilter("fcm_token", "==", token))
        )
        batch = self._db.batch()
        for snap in holders.stream():
            if snap.id != worker.id:  # a reinstalled app's old identity: one worker per device
                batch.update(snap.reference, {"fcm_token": None, "available": False})
        batch.update(
            self._worker_ref(worker.id),
            {
                "fcm_token": token,
                "ram_gb": ram_gb,
                "cpu_cores": cpu_cores,
                "slow": slow,
                "available": True,
                "available_until": available_until,
            },
        )
        batch.commit()

    def set_available(self, worker_id: str, available: bool, until: datetime | None) -> None:
        self._worker_ref(worker_id).update({"available": available, "available_until": until})

    def drop_tokens(self, process_id: str, tokens: Sequence[str]) -> int:
        dropped = 0
        for start in range(0, len(tokens), 30):  # Firestore's limit for an 'in' filter
            query = (
                self._db.collection("workers")
                .where(filter=FieldFilter("process_id", "==", process_id))
                .where(filter=FieldFilter("fcm_token", "in", list(tokens[start : start + 30])))
            )
            for snap in query.stream():
                snap.reference.update({"fcm_token": None, "available": False})
                dropped += 1
        return dropped

    def mark_invited(self, worker_ids: Sequence[str], now: datetime) -> None:
        for start in range(0, len(worker_ids), 400):
            batch = self._db.batch()
            for worker_id in worker_ids[start : start + 400]:
                batch.update(self._worker_ref(worker_id), {"last_invited_at": now})
            batch.commit()

    # -- cycles -----------------------------------------------------------
    def get_cycle(self, process_id: str, seq: int) -> Cycle | None:
        snap = self._cycle_ref(process_id, seq).get()
        return _cycle(process_id, snap.to_dict()) if snap.exists else None

    def get_assignment(self, process_id: str, seq: int, worker_id: str) -> Assignment | None:
        snap = self._assignments(process_id, seq).document(worker_id).get()
        return _assignment(snap.to_dict()) if snap.exists else None

    def claim_place(
        self, process_id: str, cycle: Cycle, worker_id: str, max_workers: int | None, now: datetime
    ) -> Assignment | None:
        ref = self._assignments(process_id, cycle.seq).document(worker_id)
        if max_workers is None:
            assignment = Assignment(
                worker_id=worker_id, seq=cycle.seq, epoch=cycle.epoch, assigned_at=now
            )
            try:
                ref.create(_assignment_doc(assignment))
                return assignment
            except _EXISTS:
                return self.get_assignment(process_id, cycle.seq, worker_id)
        slots = self._slots(process_id, cycle.seq)
        while True:
            taken = {int(s.id) for s in slots.select(["worker_id"]).stream()}
            free = [i for i in range(max_workers) if i not in taken]
            if not free:  # full, unless this worker's own concurrent request took a place
                return self.get_assignment(process_id, cycle.seq, worker_id)
            slot = random.choice(free)  # spreads concurrent claimants over the free slots
            assignment = Assignment(
                worker_id=worker_id, seq=cycle.seq, epoch=cycle.epoch, assigned_at=now, slot=slot
            )
            batch = self._db.batch()
            batch.create(slots.document(str(slot)), {"worker_id": worker_id, "epoch": cycle.epoch})
            batch.create(ref, _assignment_doc(assignment))
            try:
                batch.commit()
                return assignment
            except _EXISTS:
                existing = self.get_assignment(process_id, cycle.seq, worker_id)
                if existing is not None:
                    return existing

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
        cycle_ref = self._cycle_ref(process_id, seq)
        ref = self._assignments(process_id, seq).document(worker_id)

        @firestore.transactional
        def mark(transaction: firestore.Transaction) -> None:
            cycle = cycle_ref.get(transaction=transaction)
            snap = ref.get(transaction=transaction)
            if not cycle.exists or cycle.get("status") != CycleStatus.OPEN.value:
                raise Conflict("The cycle closed before this report arrived", "cycle_closed")
            if not snap.exists or snap.get("epoch") != epoch:
                raise Conflict(
                    "This assignment was dropped when the cycle was reset", "assignment_dropped"
                )
            if snap.get("reported"):
                raise Conflict("This worker already reported for this cycle", "already_reported")
            transaction.update(
                ref,
                {
                    "reported": True,
                    "reported_at": now,
                    "num_samples": num_samples,
                    "diff_object": diff_object,
                },
            )
            transaction.update(self._worker_ref(worker_id), {"last_cycle": seq})

        claim = self._cycle_ref(process_id, seq).collection("report_claims")
        claim_ref = claim.document(f"{worker_id}-{epoch}")
        self._claim_report(claim_ref, ref)
        try:
            mark(self._db.transaction())
        except BaseException:
            claim_ref.delete()  # a retry of this report may go ahead
            raise

    def _claim_report(
        self, claim_ref: firestore.DocumentReference, assignment_ref: firestore.DocumentReference
    ) -> None:
        """Serialise twins of one report before its transaction: transactions that read and
        then write the same assignment deadlock on the emulator's (and Firestore's) locks.
        A twin waits for the holder's outcome: counted (409), or released (it goes ahead)."""
        deadline = time.monotonic() + REPORT_CLAIM_WAIT_S
        while True:
            try:
                claim_ref.create({"at": firestore.SERVER_TIMESTAMP})
                return
            except _EXISTS:
                pass
            if self._take_stale_claim(claim_ref):
                return
            snap = assignment_ref.get()
            if snap.exists and snap.get("reported"):
                raise Conflict("This worker already reported for this cycle", "already_reported")
            if time.monotonic() > deadline:
                raise Unavailable(
                    "Another copy of this report is still being recorded: send it again",
                    "report_in_progress",
                )
            time.sleep(0.05)

    def _take_stale_claim(self, claim_ref: firestore.DocumentReference) -> bool:
        """A claim left by an instance that died mid-report must not block its retries."""
        held = claim_ref.get()
        stale_before = datetime.now(UTC) - REPORT_CLAIM_TTL
        if not held.exists or held.update_time > stale_before:
            return False
        try:
            claim_ref.update(
                {"at": firestore.SERVER_TIMESTAMP},
                option=self._db.write_option(last_update_time=held.update_time),
            )
        except _EXISTS:
            return False
        return True

    def _reported_query(self, process_id: str, seq: int) -> firestore.Query:
        return self._assignments(process_id, seq).where(filter=FieldFilter("reported", "==", True))

    def count_reported(self, process_id: str, seq: int) -> int:
        return _count(self._reported_query(process_id, seq))

    def count_assigned(self, process_id: str, seq: int) -> int:
        return _count(self._assignments(process_id, seq))

    def reported_assignments(self, process_id: str, seq: int) -> Iterator[Assignment]:
        for snap in self._reported_query(process_id, seq).stream():
            yield _assignment(snap.to_dict())

    def _update_if(
        self,
        ref: firestore.DocumentReference,
        decide: Callable[[dict[str, Any]], dict[str, Any] | None],
        extra: Callable[[firestore.WriteBatch], None] | None = None,
    ) -> dict[str, Any] | None:
        """Optimistic check-and-set: apply ``decide(current)`` unless the document changed.

        Transactions would make every contender wait on the emulator's ~2 s lock
        timeout; a write conditioned on the update time fails fast instead.
        Returns the document as updated, or None if ``decide`` declined.
        """
        while True:
            snap = ref.get()
            current = snap.to_dict() if snap.exists else None
            updates = decide(current) if current is not None else None
            if current is None or updates is None:
                return None
            batch = self._db.batch()
            batch.update(
                ref, updates, option=self._db.write_option(last_update_time=snap.update_time)
            )
            if extra is not None:
                extra(batch)
            try:
                batch.commit()
            except _EXISTS:
                continue  # someone else wrote first: decide again on what they wrote
            return current | updates

    def begin_closing(self, process_id: str, seq: int) -> bool:
        def decide(cycle: dict[str, Any]) -> dict[str, Any] | None:
            if cycle["status"] != CycleStatus.OPEN.value:
                return None
            return {"status": CycleStatus.CLOSING.value, "closing_at": firestore.SERVER_TIMESTAMP}

        return self._update_if(self._cycle_ref(process_id, seq), decide) is not None

    def acquire_closing_lease(
        self, process_id: str, seq: int, now: datetime, until: datetime
    ) -> Cycle | None:
        def decide(cycle: dict[str, Any]) -> dict[str, Any] | None:
            lease = cycle.get("closing_lease_until")
            if cycle["status"] != CycleStatus.CLOSING.value or (lease is not None and lease > now):
                return None
            return {"closing_lease_until": until, "aggregation_runs": firestore.Increment(1)}

        updated = self._update_if(self._cycle_ref(process_id, seq), decide)
        return _cycle(process_id, updated) if updated is not None else None

    def complete_cycle(
        self, process_id: str, seq: int, summary: CycleSummary, next_cycle: Cycle | None
    ) -> bool:
        process_update: dict[str, Any] = {"latest_checkpoint": summary.checkpoint_out}
        if next_cycle is None:
            process_update["status"] = ProcessStatus.COMPLETED.value
        else:
            process_update["current_cycle"] = next_cycle.seq

        def decide(cycle: dict[str, Any]) -> dict[str, Any] | None:
            if cycle["status"] != CycleStatus.CLOSING.value:
                return None
            return {
                "status": CycleStatus.COMPLETED.value,
                "closing_lease_until": None,
                "num_diffs": summary.num_diffs,
                "total_samples": _int64_or_float(summary.total_samples),
                "checkpoint_out": summary.checkpoint_out,
                "closed_at": summary.closed_at,
            }

        def open_next(batch: firestore.WriteBatch) -> None:
            if next_cycle is not None:
                batch.create(self._cycle_ref(process_id, next_cycle.seq), _cycle_doc(next_cycle))
            batch.update(self._process_ref(process_id), process_update)

        return self._update_if(self._cycle_ref(process_id, seq), decide, open_next) is not None

    def reset_cycle(
        self, process_id: str, cycle: Cycle, deadline: datetime | None, drop_unreported: bool
    ) -> list[str] | None:
        new_epoch = cycle.epoch + 1 if drop_unreported else cycle.epoch

        def decide(current: dict[str, Any]) -> dict[str, Any] | None:
            unchanged = (
                current["status"] == CycleStatus.OPEN.value
                and current["epoch"] == cycle.epoch
                and current.get("deadline") == cycle.deadline
            )
            if not unchanged:
                return None
            return {"deadline": deadline, "epoch": new_epoch, "resets": firestore.Increment(1)}

        if self._update_if(self._cycle_ref(process_id, cycle.seq), decide) is None:
            return None
        return self._drop_unreported(process_id, cycle.seq, new_epoch) if drop_unreported else []

    def _drop_unreported(self, process_id: str, seq: int, epoch: int) -> list[str]:
        """Free the places of workers who did not report (a report racing us wins)."""
        query = self._assignments(process_id, seq).where(
            filter=FieldFilter("reported", "==", False)
        )
        dropped = []
        for snap in query.stream():
            if snap.get("epoch") >= epoch:
                continue
            try:
                snap.reference.delete(
                    option=self._db.write_option(last_update_time=snap.update_time)
                )
            except _EXISTS:
                continue  # reported meanwhile: keep it
            dropped.append(snap.id)
            slot = snap.get("slot")
            if slot is not None:
                self._slots(process_id, seq).document(str(slot)).delete()
        return dropped

    def assignments(self, process_id: str, seq: int) -> list[Assignment]:
        return [_assignment(s.to_dict()) for s in self._assignments(process_id, seq).stream()]

    def _invitations(self, process_id: str, seq: int) -> firestore.CollectionReference:
        return self._cycle_ref(process_id, seq).collection("invitations")

    def invitations(self, process_id: str, seq: int) -> dict[str, int]:
        return {s.id: int(s.get("epoch")) for s in self._invitations(process_id, seq).stream()}

    def record_invitations(
        self, process_id: str, seq: int, epoch: int, worker_ids: Sequence[str], now: datetime
    ) -> list[str]:
        invitations = self._invitations(process_id, seq)
        invited = []
        for worker_id in worker_ids:
            try:
                invitations.document(worker_id).create({"epoch": epoch, "invited_at": now})
            except _EXISTS:
                continue  # never invite a worker twice into one cycle
            invited.append(worker_id)
        return invited

    def try_lock(
        self, process_id: str, seq: int, name: str, now: datetime, until: datetime
    ) -> bool:
        ref = self._cycle_ref(process_id, seq).collection("locks").document(name)
        try:
            ref.create({"until": until})
            return True
        except _EXISTS:
            pass

        def decide(lock: dict[str, Any]) -> dict[str, Any] | None:
            return {"until": until} if lock["until"] <= now else None

        return self._update_if(ref, decide) is not None

    def unlock(self, process_id: str, seq: int, name: str) -> None:
        self._cycle_ref(process_id, seq).collection("locks").document(name).delete()

    # -- pushes -----------------------------------------------------------
    def claim_push(self, process_id: str, key: str, record: Mapping[str, Any]) -> bool:
        try:
            self._process_ref(process_id).collection("pushes").document(key).create(dict(record))
            return True
        except _EXISTS:
            return False

    def finish_push(self, process_id: str, key: str, result: Mapping[str, Any]) -> None:
        self._process_ref(process_id).collection("pushes").document(key).update(dict(result))

    def recent_pushes(self, process_id: str, limit: int = 5) -> list[dict[str, Any]]:
        query = (
            self._process_ref(process_id)
            .collection("pushes")
            .order_by("created_at", direction=firestore.Query.DESCENDING)
            .limit(limit)
        )
        return [s.to_dict() or {} for s in query.stream()]

    # -- metrics ----------------------------------------------------------
    def add_metrics(self, process_id: str, rows: Sequence[Mapping[str, Any]]) -> int:
        metrics = self._process_ref(process_id).collection("metrics")
        batch = self._db.batch()
        for row in rows:
            doc_id = f"{row['client_id']}-{row['cycle_id']}-{row.get('set', 'test')}"
            batch.set(metrics.document(doc_id), dict(row))
        batch.commit()
        return len(rows)

    def list_metrics(self, process_id: str) -> list[dict[str, Any]]:
        metrics = self._process_ref(process_id).collection("metrics")
        rows = [s.to_dict() for s in metrics.stream()]
        return sorted((r for r in rows if r), key=lambda r: (r["cycle_id"], r["client_id"]))


def _int64_or_float(value: int) -> int | float:
    """Firestore integers are int64; a larger total is kept as a float, never an error."""
    return value if value <= INT64_MAX else float(value)


def _count(query: Any) -> int:
    result = query.count().get()
    return int(result[0][0].value)  # the emulator answers 0.0 for an empty result


def _process_doc(process: Process) -> dict[str, Any]:
    return {
        "name": process.name,
        "version": process.version,
        # JSON text, not maps: device-chosen keys and nesting never meet Firestore's
        # field-name rules or its per-document index-entry limit.
        "client_config": json.dumps(dict(process.client_config)),
        "server_config": process.server_config.to_dict(),
        "status": process.status.value,
        "current_cycle": process.current_cycle,
        "latest_checkpoint": process.latest_checkpoint,
        "key_secret": process.key_secret,
        "schema": json.dumps(schema_to_wire(process.schema)),
        "plans": dict(process.plans),
        "plan_sizes": dict(process.plan_sizes),
        "created_at": process.created_at,
    }


def _process(process_id: str, data: dict[str, Any] | None) -> Process:
    assert data is not None
    return Process(
        id=process_id,
        name=data["name"],
        version=data["version"],
        client_config=json.loads(data["client_config"]),
        server_config=ServerConfig.from_dict(data["server_config"]),
        status=ProcessStatus(data["status"]),
        current_cycle=data["current_cycle"],
        latest_checkpoint=data["latest_checkpoint"],
        key_secret=data["key_secret"],
        schema=schema_from_wire(json.loads(data["schema"])),
        plans=data.get("plans") or {},
        plan_sizes=data.get("plan_sizes") or {},
        created_at=data["created_at"],
    )


def _worker(worker_id: str, data: dict[str, Any] | None) -> Worker:
    assert data is not None
    return Worker(
        id=worker_id,
        process_id=data["process_id"],
        subject=data["subject"],
        created_at=data["created_at"],
        last_cycle=data.get("last_cycle"),
        fcm_token=data.get("fcm_token"),
        available=bool(data.get("available")),
        available_until=data.get("available_until"),
        ram_gb=data.get("ram_gb"),
        cpu_cores=data.get("cpu_cores"),
        slow=bool(data.get("slow")),
        last_invited_at=data.get("last_invited_at"),
    )


def _cycle_doc(cycle: Cycle) -> dict[str, Any]:
    return {
        "seq": cycle.seq,
        "status": cycle.status.value,
        "epoch": cycle.epoch,
        "opened_at": cycle.opened_at,
        "deadline": cycle.deadline,
        "start_key": cycle.start_key,
        "closing_lease_until": cycle.closing_lease_until,
        "aggregation_runs": 0,
        "resets": 0,
    }


def _cycle(process_id: str, data: dict[str, Any] | None) -> Cycle:
    assert data is not None
    return Cycle(
        process_id=process_id,
        seq=data["seq"],
        status=CycleStatus(data["status"]),
        epoch=data["epoch"],
        opened_at=data["opened_at"],
        deadline=data.get("deadline"),
        start_key=data["start_key"],
        closing_lease_until=data.get("closing_lease_until"),
    )


def _assignment_doc(assignment: Assignment) -> dict[str, Any]:
    return {
        "worker_id": assignment.worker_id,
        "seq": assignment.seq,
        "epoch": assignment.epoch,
        "assigned_at": assignment.assigned_at,
        "slot": assignment.slot,
        "reported": assignment.reported,
        "reported_at": assignment.reported_at,
        "num_samples": assignment.num_samples,
        "diff_object": assignment.diff_object,
    }


def _assignment(data: dict[str, Any] | None) -> Assignment:
    assert data is not None
    return Assignment(
        worker_id=data["worker_id"],
        seq=data["seq"],
        epoch=data["epoch"],
        assigned_at=data["assigned_at"],
        slot=data.get("slot"),
        reported_at=data.get("reported_at"),
        num_samples=data.get("num_samples"),
        diff_object=data.get("diff_object"),
    )
