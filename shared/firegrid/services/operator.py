"""The operator API's read side: status, checkpoints, training metrics."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any

from firegrid.domain import blobs, limits
from firegrid.domain.errors import BadRequest, NotFound
from firegrid.domain.fields import Fields
from firegrid.domain.keys import pseudonym
from firegrid.domain.model import Process
from firegrid.services import pool
from firegrid.services.context import Context
from firegrid.services.lookups import known_worker, named_process, worker_id_field

LEAF_COLUMNS = ("client_id", "round_number", "hierarchy", "num_samples", "set", "accuracy", "loss")


def _process(ctx: Context, args: Mapping[str, Any]) -> Process:
    return named_process(ctx, Fields(args, what="the query"))


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
    query = Fields(args, what="the query")
    wanted = query.raw.get("checkpoint") or "latest"
    number = process.latest_checkpoint if wanted == "latest" else query.digits("checkpoint")
    if number is None or not 1 <= number <= process.latest_checkpoint:
        raise NotFound(f"Checkpoint {wanted} not found", "unknown_checkpoint")
    return ctx.blobs.get(blobs.checkpoint_object(process.id, number))


def post_metrics(ctx: Context, body: Mapping[str, Any]) -> dict[str, Any]:
    fields = Fields(body)
    worker = known_worker(ctx, worker_id_field(fields))
    fields.text("request_key", max_length=limits.MAX_KEY_LENGTH)  # the fork's shape; unused
    process = ctx.repo.get_process(worker.process_id)
    if process is None:
        raise NotFound("The worker's process no longer exists", "unknown_process")
    stats = fields.raw.get("stats")
    if not isinstance(stats, list) or not 1 <= len(stats) <= limits.MAX_STATS_PER_POST:
        raise BadRequest(
            f"'stats' must be a list of 1 to {limits.MAX_STATS_PER_POST} objects", "invalid_field"
        )
    rows = [_metric_row(pseudonym(worker.id), process, entry) for entry in stats]
    stored = ctx.repo.add_metrics(worker.process_id, rows)
    return {"status": "success", "stored": stored}


_NUMERIC_EXTRAS = ("loss", "train_time_s", "download_time_s", "upload_time_s", "eval_time_s")
METRIC_SETS = ("test", "train")


def _metric_row(client_id: str, process: Process, entry: object) -> dict[str, Any]:
    fields = Fields(entry, what="each entry of 'stats'")
    row: dict[str, Any] = {
        "client_id": client_id,
        "cycle_id": fields.integer(
            "cycle_id", required=True, minimum=1, maximum=process.current_cycle
        ),
        "accuracy": fields.number("accuracy", required=True, maximum=1.0),
        "num_samples": fields.integer(
            "num_samples",
            required=True,
            minimum=1,
            maximum=process.server_config.max_num_samples,
        ),
        "set": fields.choice("set", METRIC_SETS, "test"),
    }
    for key in _NUMERIC_EXTRAS:
        value = fields.number(key, maximum=limits.MAX_METRIC_VALUE)
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
                row["client_id"],
                row["cycle_id"],
                "",
                row["num_samples"],
                row.get("set", "test"),
                row["accuracy"],
                row.get("loss", ""),
            ]
        )
    return out.getvalue()
