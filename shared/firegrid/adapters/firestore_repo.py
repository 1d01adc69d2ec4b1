"""The Repository port on Cloud Firestore: a translator that guarantees atomicity.

Rules live in the domain; this adapter reads documents through the codecs
(``firestore_codecs``), applies the change the domain decided, and writes it back
atomically: a create that fails if the document exists, a write conditioned on the
document's update time (re-read and re-decided on conflict), or a transaction.

Concurrency: no document is written by every request. Places in a capped cycle
are claimed with create-if-absent slot documents; a report is a transaction over
the cycle and the assignment, serialised among its twins by a report claim.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from firegrid.adapters import firestore_codecs as codecs
from firegrid.domain.buffered import LOBBY, BufferedReport
from firegrid.domain.cycle import Cycle, ProcessStatus
from firegrid.domain.errors import Conflict, Unavailable
from firegrid.domain.fanout import Group
from firegrid.domain.model import Assignment, Process, Report, Worker, first_assignment
from firegrid.domain.selection import Places

_EXISTS = (gexc.AlreadyExists, gexc.Conflict, gexc.FailedPrecondition)
REPORT_CLAIM_WAIT_S = 10.0
"""How long a twin report waits for the copy being recorded to finish."""
REPORT_CLAIM_TTL = timedelta(seconds=60)
"""A report claim older than this was left by a dead instance: the next twin takes it."""
_IN_FILTER_LIMIT = 30
"""Firestore's limit on the values of an ``in`` filter."""
_DECODED_LIMIT = 1024
"""Processes an instance keeps decoded (the oldest goes first)."""
_BATCH_LIMIT = 400
"""Writes per batch: below Firestore's 500."""

T = TypeVar("T")


class _Declined(Exception):
    """A change to a second document, decided inside a conditional write, declined."""


class FirestoreRepository:
    def __init__(self, client: firestore.Client) -> None:
        self._db = client
        self._decoded: dict[str, Process] = {}
        """Processes already read by this instance, by id (see ``_fresh``)."""
        self._decoded_lock = threading.Lock()

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

    def _process_workers(self, process_id: str) -> firestore.Query:
        return self._db.collection("workers").where(
            filter=FieldFilter("process_id", "==", process_id)
        )

    # -- the one conditional write ---------------------------------------
    def _update_if(
        self,
        ref: firestore.DocumentReference,
        decode: Callable[[dict[str, Any]], T],
        change: Callable[[T], T | None],
        encode: Callable[[T], dict[str, Any]],
        extra: Callable[[firestore.WriteBatch], None] | None = None,
    ) -> T | None:
        """Apply ``change`` to the decoded document unless it changed since it was read.

        Transactions would make every contender wait on the emulator's ~2 s lock
        timeout; a write conditioned on the update time fails fast instead, and the
        loser re-reads and re-decides. Returns what was written, or None if the
        document is absent or ``change`` declined.
        """
        while True:
            snap = ref.get()
            if not snap.exists:
                return None
            changed = change(decode(snap.to_dict() or {}))
            if changed is None:
                return None
            batch = self._db.batch()
            batch.update(
                ref,
                encode(changed),
                option=self._db.write_option(last_update_time=snap.update_time),
            )
            if extra is not None:
                extra(batch)
            try:
                batch.commit()
            except _EXISTS:
                continue  # someone else wrote first: decide again on what they wrote
            return changed

    # -- processes --------------------------------------------------------
    def create_hosting(self, process: Process) -> None:
        try:
            self._process_ref(process.id).create(codecs.process_doc(process))
        except _EXISTS:
            raise Conflict(
                "A process with this name and version exists", "duplicate_process"
            ) from None

    def start_training(self, process: Process, *cycles: Cycle) -> None:
        batch = self._db.batch()
        for cycle in cycles:
            batch.create(self._cycle_ref(process.id, cycle.seq), codecs.cycle_doc(cycle))
        batch.update(self._process_ref(process.id), codecs.process_progress(process))
        batch.commit()

    def update_process(
        self, process_id: str, change: Callable[[Process], Process | None]
    ) -> Process | None:
        return self._update_if(
            self._process_ref(process_id),
            lambda data: codecs.process_from(process_id, data),
            change,
            codecs.process_doc,
        )

    def delete_process(self, process_id: str) -> dict[str, int]:
        """Everything under the process first, whatever the collection (a query over all
        descendants finds documents under a parent already deleted), then its workers,
        the process document last: until the end, it says a deletion is under way."""
        deleted: Counter[str] = Counter()
        ref = self._process_ref(process_id)
        for collection in ref.collections():
            self._delete_found(collection.recursive(), deleted)
        self._delete_found(self._process_workers(process_id), deleted)
        if ref.get().exists:
            ref.delete()
            deleted["processes"] += 1
        return dict(deleted)

    def _delete_found(self, query: firestore.Query, deleted: Counter[str]) -> None:
        """Delete what ``query`` finds, one bounded batch at a time, until it finds nothing."""
        while True:
            found = list(query.select([FieldPath.document_id()]).limit(_BATCH_LIMIT).stream())
            if not found:
                return
            batch = self._db.batch()
            for snap in found:
                batch.delete(snap.reference)
                deleted[snap.reference.parent.id] += 1
            batch.commit()

    def get_process(self, process_id: str) -> Process | None:
        ref = self._process_ref(process_id)
        known = self._known(process_id)
        if known is None:
            return self._read_process(ref)
        snap = ref.get(field_paths=codecs.PROCESS_CHECKED)
        return self._fresh(snap, known) if snap.exists else None

    def processes_named(self, name: str, version: str | None) -> list[Process]:
        query = self._db.collection("processes").where(filter=FieldFilter("name", "==", name))
        if version is not None:
            query = query.where(filter=FieldFilter("version", "==", version))
        found = [self._fresh(snap, self._known(snap.id)) for snap in query.stream()]
        return [process for process in found if process is not None]

    def _fresh(self, snap: Any, known: Process | None) -> Process | None:
        """Device requests read a process each time, but decoding its configuration and
        schema (milliseconds for a model of hundreds of tensors) is done once per instance:
        a process already decoded is read again for ``PROCESS_CHECKED`` only, which must
        be fresh (a deletion's 409, the current cycle); another hosting of the same id
        is read in full."""
        data = snap.to_dict() or {}
        fresh = codecs.progressed(known, data) if known is not None else None
        if fresh is not None:
            return fresh
        if set(data) <= set(codecs.PROCESS_CHECKED):  # a projection: read the whole document
            return self._read_process(snap.reference)
        return self._remember(codecs.process_from(snap.id, data))

    def _read_process(self, ref: firestore.DocumentReference) -> Process | None:
        snap = ref.get()
        return (
            self._remember(codecs.process_from(snap.id, snap.to_dict() or {}))
            if snap.exists
            else None
        )

    def _known(self, process_id: str) -> Process | None:
        with self._decoded_lock:
            return self._decoded.get(process_id)

    def _remember(self, process: Process) -> Process:
        with self._decoded_lock:
            if len(self._decoded) >= _DECODED_LIMIT:
                self._decoded.pop(next(iter(self._decoded)))
            self._decoded[process.id] = process
        return process

    def training_processes(self) -> list[Process]:
        query = self._db.collection("processes").where(
            filter=FieldFilter("status", "==", ProcessStatus.TRAINING.value)
        )
        return [codecs.process_from(s.id, s.to_dict() or {}) for s in query.stream()]

    # -- workers ----------------------------------------------------------
    def get_worker(self, worker_id: str) -> Worker | None:
        snap = self._worker_ref(worker_id).get()
        return codecs.worker_from(snap.id, snap.to_dict() or {}) if snap.exists else None

    def save_worker(self, worker: Worker) -> Worker:
        try:
            self._worker_ref(worker.id).create(codecs.worker_doc(worker))
            return worker
        except _EXISTS:
            existing = self.get_worker(worker.id)
            assert existing is not None
            return existing

    def update_worker(
        self, worker_id: str, change: Callable[[Worker], Worker | None]
    ) -> Worker | None:
        return self._update_if(
            self._worker_ref(worker_id),
            lambda data: codecs.worker_from(worker_id, data),
            change,
            codecs.worker_doc,
        )

    def process_workers(self, process_id: str, *, available_only: bool = False) -> list[Worker]:
        query = self._process_workers(process_id)
        if available_only:
            query = query.where(filter=FieldFilter("available", "==", True))
        return [codecs.worker_from(s.id, s.to_dict() or {}) for s in query.stream()]

    def workers_with_tokens(self, process_id: str, tokens: Sequence[str]) -> list[Worker]:
        found = []
        for start in range(0, len(tokens), _IN_FILTER_LIMIT):
            chunk = list(tokens[start : start + _IN_FILTER_LIMIT])
            query = self._process_workers(process_id).where(
                filter=FieldFilter("fcm_token", "in", chunk)
            )
            found += [codecs.worker_from(s.id, s.to_dict() or {}) for s in query.stream()]
        return found

    def _invited(self, process_id: str) -> firestore.CollectionReference:
        return self._process_ref(process_id).collection("invited")

    def mark_invited(self, process_id: str, worker_ids: Sequence[str], now: datetime) -> None:
        invited = self._invited(process_id)
        for start in range(0, len(worker_ids), _BATCH_LIMIT):
            batch = self._db.batch()
            for worker_id in worker_ids[start : start + _BATCH_LIMIT]:
                batch.set(invited.document(worker_id), {"at": now})
            batch.commit()

    def last_invited(self, process_id: str) -> dict[str, datetime]:
        return {s.id: s.get("at") for s in self._invited(process_id).stream()}

    # -- cycles -----------------------------------------------------------
    def get_cycle(self, process_id: str, seq: int) -> Cycle | None:
        snap = self._cycle_ref(process_id, seq).get()
        return codecs.cycle_from(process_id, snap.to_dict() or {}) if snap.exists else None

    def update_cycle(
        self, process_id: str, seq: int, change: Callable[[Cycle], Cycle | None]
    ) -> Cycle | None:
        return self._update_if(
            self._cycle_ref(process_id, seq),
            lambda data: codecs.cycle_from(process_id, data),
            change,
            codecs.cycle_doc,
        )

    def complete_cycle(
        self,
        process_id: str,
        seq: int,
        change: Callable[[Cycle], Cycle | None],
        next_cycle: Cycle | None,
        progress: Callable[[Process], Process | None],
    ) -> Cycle | None:
        process_ref = self._process_ref(process_id)

        def open_next(batch: firestore.WriteBatch) -> None:
            """The process moves on in the same batch, unless it changed since it was read
            (marked for deletion, say): then the whole write is decided again."""
            snap = process_ref.get()
            progressed = (
                progress(codecs.process_from(process_id, snap.to_dict() or {}))
                if snap.exists
                else None
            )
            if progressed is None:
                raise _Declined
            batch.update(
                process_ref,
                codecs.process_progress(progressed),
                option=self._db.write_option(last_update_time=snap.update_time),
            )
            if next_cycle is not None:
                batch.create(
                    self._cycle_ref(process_id, next_cycle.seq), codecs.cycle_doc(next_cycle)
                )

        try:
            return self._update_if(
                self._cycle_ref(process_id, seq),
                lambda data: codecs.cycle_from(process_id, data),
                change,
                codecs.cycle_doc,
                open_next,
            )
        except _Declined:
            return None

    # -- fan-out groups ---------------------------------------------------
    def _groups(self, process_id: str, seq: int) -> firestore.CollectionReference:
        return self._cycle_ref(process_id, seq).collection("groups")

    def create_groups(self, process_id: str, seq: int, groups: Sequence[Group]) -> list[Group]:
        for group in groups:
            with contextlib.suppress(*_EXISTS):  # a re-driven closing keeps the groups it made
                self._groups(process_id, seq).document(str(group.index)).create(
                    codecs.group_doc(group)
                )
        return self.groups(process_id, seq)

    def groups(self, process_id: str, seq: int) -> list[Group]:
        found = [
            codecs.group_from(process_id, seq, snap.to_dict() or {})
            for snap in self._groups(process_id, seq).stream()
        ]
        return sorted(found, key=lambda group: group.index)

    def update_group(
        self, process_id: str, seq: int, index: int, change: Callable[[Group], Group | None]
    ) -> Group | None:
        return self._update_if(
            self._groups(process_id, seq).document(str(index)),
            lambda data: codecs.group_from(process_id, seq, data),
            change,
            codecs.group_doc,
        )

    def assignments_of(
        self, process_id: str, seq: int, worker_ids: Sequence[str]
    ) -> list[Assignment]:
        refs = [self._assignments(process_id, seq).document(w) for w in worker_ids]
        found = {
            snap.id: codecs.assignment_from(snap.to_dict() or {})
            for snap in self._db.get_all(refs)
            if snap.exists
        }
        return [found[w] for w in worker_ids if w in found]

    def get_assignment(self, process_id: str, seq: int, worker_id: str) -> Assignment | None:
        snap = self._assignments(process_id, seq).document(worker_id).get()
        return codecs.assignment_from(snap.to_dict() or {}) if snap.exists else None

    def update_assignment(
        self,
        process_id: str,
        seq: int,
        worker_id: str,
        change: Callable[[Assignment], Assignment | None],
    ) -> Assignment | None:
        return self._update_if(
            self._assignments(process_id, seq).document(worker_id),
            codecs.assignment_from,
            change,
            codecs.assignment_doc,
        )

    def claim_place(
        self,
        process_id: str,
        cycle: Cycle,
        worker_id: str,
        now: datetime,
        places: Places | None,
    ) -> Assignment | None:
        ref = self._assignments(process_id, cycle.seq).document(worker_id)
        if places is None:
            assignment = first_assignment(worker_id, cycle, now, slot=None)
            try:
                ref.create(codecs.assignment_doc(assignment))
                return assignment
            except _EXISTS:
                return self.get_assignment(process_id, cycle.seq, worker_id)
        slots = self._slots(process_id, cycle.seq)

        def taken_in(lo: int, hi: int) -> int:
            in_range = slots.where(filter=FieldFilter("slot", ">=", lo)).where(
                filter=FieldFilter("slot", "<", hi)
            )
            return _count(in_range)

        probes = iter(places.probes())
        while True:
            slot = next(probes, None)
            if slot is None:
                slot = places.free_place(taken_in)
            if slot is None:  # full, unless this worker's own concurrent request took a place
                return self.get_assignment(process_id, cycle.seq, worker_id)
            assignment = first_assignment(worker_id, cycle, now, slot=slot)
            batch = self._db.batch()
            batch.create(slots.document(str(slot)), codecs.slot_doc(assignment))
            batch.create(ref, codecs.assignment_doc(assignment))
            try:
                batch.commit()
                return assignment
            except _EXISTS:
                existing = self.get_assignment(process_id, cycle.seq, worker_id)
                if existing is not None:
                    return existing

    def record_report(
        self, process_id: str, seq: int, worker_id: str, report: Report
    ) -> Assignment:
        cycle_ref = self._cycle_ref(process_id, seq)
        ref = self._assignments(process_id, seq).document(worker_id)

        @firestore.transactional
        def count(transaction: firestore.Transaction) -> Assignment:
            cycle = cycle_ref.get(transaction=transaction)
            snap = ref.get(transaction=transaction)
            admitted = report.admit(
                codecs.cycle_from(process_id, cycle.to_dict() or {}) if cycle.exists else None,
                codecs.assignment_from(snap.to_dict() or {}) if snap.exists else None,
            )
            transaction.update(ref, codecs.assignment_doc(admitted))
            transaction.update(self._worker_ref(worker_id), {"last_cycle": seq})
            return admitted

        claim_ref = cycle_ref.collection("report_claims").document(f"{worker_id}-{report.epoch}")
        held = self._claim_report(claim_ref, ref)
        try:
            return count(self._db.transaction())
        except BaseException:
            if held:
                claim_ref.delete()  # a retry of this report may go ahead
            raise

    def record_buffered(
        self, process_id: str, seq: int, worker_id: str, report: BufferedReport
    ) -> Assignment:
        buffer_ref = self._cycle_ref(process_id, seq)
        entry_ref = self._assignments(process_id, seq).document(worker_id)
        place_ref = self._assignments(process_id, LOBBY).document(worker_id)
        claim_ref = (
            self._cycle_ref(process_id, LOBBY)
            .collection("report_claims")
            .document(f"{worker_id}-{report.report.epoch}")
        )

        @firestore.transactional
        def move(transaction: firestore.Transaction) -> Assignment:
            buffer = buffer_ref.get(transaction=transaction)
            place = place_ref.get(transaction=transaction)
            entry = entry_ref.get(transaction=transaction)
            held = codecs.assignment_from(place.to_dict() or {}) if place.exists else None
            admitted = report.admit(
                codecs.cycle_from(process_id, buffer.to_dict() or {}) if buffer.exists else None,
                held,
                codecs.assignment_from(entry.to_dict() or {}) if entry.exists else None,
            )
            assert held is not None
            transaction.create(entry_ref, codecs.assignment_doc(admitted))
            transaction.delete(place_ref)
            if held.slot is not None:
                transaction.delete(self._slots(process_id, LOBBY).document(str(held.slot)))
            transaction.delete(claim_ref)  # the place is gone: a twin's admit refuses it
            transaction.update(self._worker_ref(worker_id), {"last_cycle": seq})
            return admitted

        held = self._claim_report(claim_ref, place_ref)
        try:
            return move(self._db.transaction())
        except BaseException:
            if held:
                claim_ref.delete()
            raise

    def _claim_report(
        self, claim_ref: firestore.DocumentReference, assignment_ref: firestore.DocumentReference
    ) -> bool:
        """Serialise twins of one report before its transaction: transactions that read and
        then write the same assignment deadlock on the emulator's (and Firestore's) locks.
        A twin waits for the holder's outcome: decided (the transaction then says how, with
        no claim needed: False), or released (it takes the claim: True)."""
        deadline = time.monotonic() + REPORT_CLAIM_WAIT_S
        while True:
            try:
                claim_ref.create({"at": firestore.SERVER_TIMESTAMP})
                return True
            except _EXISTS:
                pass
            if self._take_stale_claim(claim_ref):
                return True
            snap = assignment_ref.get()
            if not snap.exists:  # dropped, or (async) moved into a buffer by the holder
                return False
            data = snap.to_dict() or {}
            if data.get("reported") or data.get("skipped"):
                return False
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
            yield codecs.assignment_from(snap.to_dict() or {})

    def assignments(self, process_id: str, seq: int) -> list[Assignment]:
        return [
            codecs.assignment_from(s.to_dict() or {})
            for s in self._assignments(process_id, seq).stream()
        ]

    def drop_assignments(
        self, process_id: str, seq: int, dropped: Callable[[Assignment], bool]
    ) -> list[str]:
        unreported = self._assignments(process_id, seq).where(
            filter=FieldFilter("reported", "==", False)
        )
        gone = []
        for snap in unreported.stream():
            assignment = codecs.assignment_from(snap.to_dict() or {})
            if not dropped(assignment):
                continue
            batch = self._db.batch()  # the place is freed with the assignment, or neither
            batch.delete(
                snap.reference, option=self._db.write_option(last_update_time=snap.update_time)
            )
            if assignment.slot is not None:
                batch.delete(self._slots(process_id, seq).document(str(assignment.slot)))
            try:
                batch.commit()
            except _EXISTS:
                continue  # reported meanwhile: keep it
            gone.append(assignment.worker_id)
        return gone

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
        taken = self._update_if(
            ref,
            lambda data: data["until"],
            lambda held_until: until if held_until <= now else None,
            lambda new_until: {"until": new_until},
        )
        return taken is not None

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


def _count(query: Any) -> int:
    result = query.count().get()
    return int(result[0][0].value)  # the emulator answers 0.0 for an empty result
