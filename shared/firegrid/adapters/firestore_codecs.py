"""Firestore documents <-> domain records: the one place that knows field names.

The repository and the trigger decoder both read documents through these
functions, so a field is spelt once. Layout (docs/architecture.md, "State"):

* ``processes/{p}``: a ``Process``; ``client_config`` and ``schema`` as JSON text, so
  device-chosen keys and nesting never meet Firestore's field-name rules or its
  per-document index-entry limit;
* ``processes/{p}/cycles/{seq}``: a ``Cycle`` with its counters and summary;
* ``.../cycles/{seq}/assignments/{worker}``: an ``Assignment``;
* ``.../cycles/{seq}/groups/{index}``: a fanned-out closing's ``Group``;
* ``workers/{worker}``: a ``Worker``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from firegrid.domain.config import ServerConfig
from firegrid.domain.cycle import Cycle, CycleStatus, CycleSummary, ProcessStatus
from firegrid.domain.diffs import schema_from_dict, schema_to_dict
from firegrid.domain.fanout import Group, GroupStatus
from firegrid.domain.limits import INT64_MAX
from firegrid.domain.model import Assignment, Process, Worker

Document = dict[str, Any]


def process_doc(process: Process) -> Document:
    return {
        "name": process.name,
        "version": process.version,
        "client_config": json.dumps(dict(process.client_config)),
        "server_config": process.server_config.to_dict(),
        "status": process.status.value,
        "current_cycle": process.current_cycle,
        "latest_checkpoint": process.latest_checkpoint,
        "key_secret": process.key_secret,
        "schema": json.dumps(schema_to_dict(process.schema)),
        "plans": dict(process.plans),
        "plan_sizes": dict(process.plan_sizes),
        "variant_sizes": {name: dict(sizes) for name, sizes in process.variant_sizes.items()},
        "created_at": process.created_at,
    }


def process_progress(process: Process) -> Document:
    """The fields a completed cycle moves on (the rest never changes after hosting)."""
    return {
        "status": process.status.value,
        "current_cycle": process.current_cycle,
        "latest_checkpoint": process.latest_checkpoint,
    }


PROCESS_CHECKED = ("status", "current_cycle", "latest_checkpoint", "key_secret", "created_at")
"""What is read again of a process already decoded: its progress, and what tells one
hosting from another of the same id (a takeover or a re-host after a deletion)."""


def progressed(known: Process, data: Document) -> Process | None:
    """``known`` with the progress in ``data`` (the ``PROCESS_CHECKED`` fields), or None
    if ``data`` is another hosting's: everything else never changes after hosting."""
    if data["key_secret"] != known.key_secret or data["created_at"] != known.created_at:
        return None
    return replace(
        known,
        status=ProcessStatus(data["status"]),
        current_cycle=data["current_cycle"],
        latest_checkpoint=data["latest_checkpoint"],
    )


def process_from(process_id: str, data: Document) -> Process:
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
        schema=schema_from_dict(json.loads(data["schema"])),
        plans=data.get("plans") or {},
        plan_sizes=data.get("plan_sizes") or {},
        variant_sizes=data.get("variant_sizes") or {},
        created_at=data["created_at"],
    )


def worker_doc(worker: Worker) -> Document:
    return {
        "process_id": worker.process_id,
        "subject": worker.subject,
        "created_at": worker.created_at,
        "last_cycle": worker.last_cycle,
        "fcm_token": worker.fcm_token,
        "available": worker.available,
        "available_until": worker.available_until,
        "ram_gb": worker.ram_gb,
        "cpu_cores": worker.cpu_cores,
        "slow": worker.slow,
    }


def worker_from(worker_id: str, data: Document) -> Worker:
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
    )


def cycle_doc(cycle: Cycle) -> Document:
    summary = cycle.summary
    return {
        "seq": cycle.seq,
        "status": cycle.status.value,
        "epoch": cycle.epoch,
        "opened_at": cycle.opened_at,
        "deadline": cycle.deadline,
        "start_key": cycle.start_key,
        "closing_lease_until": cycle.closing_lease_until,
        "closing_lease_holder": cycle.closing_lease_holder,
        "model_object": cycle.model_object,
        "closing_at": cycle.closing_at,
        "aggregation_runs": cycle.aggregation_runs,
        "failures": cycle.failures,
        "resets": cycle.resets,
        "skipped": dict(cycle.skipped),
        "last_error": cycle.last_error,
        "drop_pending": cycle.drop_pending,
        "num_diffs": summary.num_diffs if summary else None,
        "total_samples": _int64_or_float(summary.total_samples) if summary else None,
        "checkpoint_out": summary.checkpoint_out if summary else None,
        "closed_at": summary.closed_at if summary else None,
        "checkpoint_object": summary.checkpoint_object if summary else None,
        "optimizer_state_object": summary.optimizer_state_object if summary else None,
        "epsilon": summary.epsilon if summary else None,
        "privacy_spent": _spent(summary.privacy_spent) if summary else None,
        "mean_staleness": summary.mean_staleness if summary else None,
        "next_clip_norm": summary.next_clip_norm if summary else None,
    }


def _spent(spent: Mapping[str, int] | None) -> dict[str, int] | None:
    return None if spent is None else dict(spent)


def cycle_from(process_id: str, data: Document) -> Cycle:
    summary = None
    if data.get("closed_at") is not None:
        summary = CycleSummary(
            num_diffs=data["num_diffs"],
            total_samples=int(data["total_samples"]),
            checkpoint_out=data["checkpoint_out"],
            closed_at=data["closed_at"],
            checkpoint_object=data.get("checkpoint_object"),
            optimizer_state_object=data.get("optimizer_state_object"),
            epsilon=data.get("epsilon"),
            privacy_spent=_spent(data.get("privacy_spent")),
            mean_staleness=data.get("mean_staleness"),
            next_clip_norm=data.get("next_clip_norm"),
        )
    return Cycle(
        process_id=process_id,
        seq=data["seq"],
        status=CycleStatus(data["status"]),
        epoch=data["epoch"],
        opened_at=data["opened_at"],
        deadline=data.get("deadline"),
        start_key=data["start_key"],
        closing_lease_until=data.get("closing_lease_until"),
        closing_lease_holder=data.get("closing_lease_holder"),
        model_object=data.get("model_object"),
        closing_at=data.get("closing_at"),
        aggregation_runs=data.get("aggregation_runs") or 0,
        failures=data.get("failures") or 0,
        resets=data.get("resets") or 0,
        summary=summary,
        skipped=data.get("skipped") or {},
        last_error=data.get("last_error"),
        drop_pending=bool(data.get("drop_pending")),
    )


def assignment_doc(assignment: Assignment) -> Document:
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
        "skipped": assignment.skipped,
        "staleness": assignment.staleness,
    }


def slot_doc(assignment: Assignment) -> Document:
    """The place an assignment holds in a capped cycle; ``slot`` is a field as well as
    the document id, so the places taken in a range can be counted."""
    return {"worker_id": assignment.worker_id, "epoch": assignment.epoch, "slot": assignment.slot}


def assignment_from(data: Document) -> Assignment:
    return Assignment(
        worker_id=data["worker_id"],
        seq=data["seq"],
        epoch=data["epoch"],
        assigned_at=data["assigned_at"],
        slot=data.get("slot"),
        reported_at=data.get("reported_at"),
        num_samples=data.get("num_samples"),
        diff_object=data.get("diff_object"),
        skipped=data.get("skipped"),
        staleness=data.get("staleness"),
    )


def _int64_or_float(value: int) -> int | float:
    """Firestore integers are int64; a larger total is kept as a float, never an error."""
    return value if value <= INT64_MAX else float(value)


def group_doc(group: Group) -> Document:
    return {
        "index": group.index,
        "workers": list(group.workers),
        "weights": list(group.weights),
        "created_at": group.created_at,
        "status": group.status.value,
        "lease_until": group.lease_until,
        "lease_holder": group.lease_holder,
        "attempts": group.attempts,
        "partial_object": group.partial_object,
        "weight": group.weight,
        "num_diffs": group.num_diffs,
        "skipped": dict(group.skipped),
    }


def group_from(process_id: str, seq: int, data: Document) -> Group:
    return Group(
        process_id=process_id,
        seq=seq,
        index=data["index"],
        workers=tuple(data["workers"]),
        weights=tuple(float(w) for w in data["weights"]),
        created_at=data["created_at"],
        status=GroupStatus(data["status"]),
        lease_until=data.get("lease_until"),
        lease_holder=data.get("lease_holder"),
        attempts=data.get("attempts") or 0,
        partial_object=data.get("partial_object"),
        weight=float(data.get("weight") or 0.0),
        num_diffs=data.get("num_diffs") or 0,
        skipped=data.get("skipped") or {},
    )
