"""The operator API's read side: status, checkpoints, training metrics."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any

from firegrid.domain import blobs
from firegrid.domain.errors import BadRequest, NotFound
from firegrid.domain.model import Process
from firegrid.services import _fields as fields
from firegrid.services import pool
from firegrid.services.context import Context

LEAF_COLUMNS = ("client_id", "round_number", "hierarchy", "num_samples", "set", "accuracy", "loss")


def _process(ctx: Context, args: Mapping[str, Any]) -> Process:
    name = fields.required_str(args, "name")
    version = fields.optional_version(args, "version")
    process = ctx.repo.find_process(name, version)
    if process is None:
        raise NotFound(f"No training process for model '{name}'", "unknown_process")
    return process


def status(ctx: Context, args: Mapping[str, Any]) -> dict[str, Any]:
    process = _process(ctx, args)
    cycle = ctx.repo.get_cycle(process.id, process.current_cycle)
    current = None
    assigned = 0
    if cycle is not None:
        assigned = ctx.repo.count_assigned(process.id, cycle.seq)
        current = {
            "seq": cycle.seq,
            "status": cycle.status.value,
            "epoch": cycle.epoch,
            "opened_at": cycle.opened_at.isoformat(),
            "deadline": cycle.deadline.isoformat() if cycle.deadline else None,
            "assigned": assigned,
            "reported": ctx.repo.count_reported(process.id, cycle.seq),
        }
    return {
        "process_id": process.id,
        "name": process.name,
        "version": process.version,
        "status": process.status.value,
        "current_cycle": current,
        "latest_checkpoint": process.latest_checkpoint,
        "checkpoints": list(range(1, process.latest_checkpoint + 1)),
        "pool": pool.pool_status(ctx, process, cycle, assigned),
        "server_config": process.server_config.to_dict() | {"authentication": "(hidden)"},
    }


def retrieve_model(ctx: Context, args: Mapping[str, Any]) -> bytes:
    process = _process(ctx, args)
    wanted = args.get("checkpoint") or "latest"
    if wanted == "latest":
        number = process.latest_checkpoint
    elif isinstance(wanted, str) and wanted.isdigit():
        number = int(wanted)
    else:
        raise BadRequest("'checkpoint' must be 'latest' or a number", "invalid_field")
    if not 1 <= number <= process.latest_checkpoint:
        raise NotFound(f"Checkpoint {number} not found", "unknown_checkpoint")
    return ctx.blobs.get(blobs.checkpoint_object(process.id, number))


def post_metrics(ctx: Context, body: Mapping[str, Any]) -> dict[str, Any]:
    worker_id = fields.required_str(body, "worker_id")
    worker = ctx.repo.get_worker(worker_id)
    if worker is None:
        raise NotFound("Worker not found: authenticate first", "unknown_worker")
    stats = body.get("stats")
    if not isinstance(stats, list) or not stats or len(stats) > 100:
        raise BadRequest("'stats' must be a list of 1 to 100 objects", "invalid_field")
    rows = [_metric_row(worker_id, entry) for entry in stats]
    stored = ctx.repo.add_metrics(worker.process_id, rows)
    return {"status": "success", "stored": stored}


_NUMERIC_EXTRAS = ("loss", "train_time_s", "download_time_s", "upload_time_s", "eval_time_s")


def _metric_row(worker_id: str, entry: object) -> dict[str, Any]:
    if not isinstance(entry, Mapping):
        raise BadRequest("each entry of 'stats' must be an object", "invalid_field")
    cycle_id = entry.get("cycle_id")
    if isinstance(cycle_id, bool) or not isinstance(cycle_id, int) or cycle_id < 1:
        raise BadRequest("'cycle_id' must be a positive integer", "invalid_field")
    accuracy = fields.optional_number(entry, "accuracy")
    if accuracy is None or accuracy > 1:
        raise BadRequest("'accuracy' is required, between 0 and 1", "invalid_field")
    row: dict[str, Any] = {
        "worker_id": worker_id,
        "cycle_id": cycle_id,
        "accuracy": accuracy,
        "num_samples": fields.positive_int(entry, "num_samples"),
        "set": entry.get("set") if entry.get("set") in ("test", "train") else "test",
    }
    for key in _NUMERIC_EXTRAS:
        value = fields.optional_number(entry, key)
        if value is not None:
            row[key] = value
    return row


def training_metrics(ctx: Context, args: Mapping[str, Any]) -> list[dict[str, Any]]:
    return ctx.repo.list_metrics(_process(ctx, args).id)


def metrics_csv(rows: list[dict[str, Any]]) -> str:
    """LEAF's metrics layout: one row per client and round."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(LEAF_COLUMNS)
    for row in rows:
        writer.writerow(
            [
                row["worker_id"],
                row["cycle_id"],
                "",
                row["num_samples"],
                row.get("set", "test"),
                row["accuracy"],
                row.get("loss", ""),
            ]
        )
    return out.getvalue()
