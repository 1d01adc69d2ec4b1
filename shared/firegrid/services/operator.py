"""The operator API's read side, and the device metrics it reads: status, checkpoints,
training metrics."""

from __future__ import annotations

from firegrid import api
from firegrid.domain import limits
from firegrid.domain.buffered import LOBBY
from firegrid.domain.cycle import Cycle
from firegrid.domain.diffs import payload_bytes
from firegrid.domain.errors import BadRequest, NotFound
from firegrid.domain.keys import pseudonym
from firegrid.domain.model import Process
from firegrid.services import pool
from firegrid.services.context import Context
from firegrid.services.lookups import checkpoint_object, known_worker, named_process, process_of
from firegrid.services.results import Buffering, MetricsTable, ProcessReport, SignedUrl, Stored
from firegrid.services.signed import download


def status(ctx: Context, query: api.ProcessQuery) -> ProcessReport:
    process = named_process(ctx, query)
    cycle = ctx.repo.get_cycle(process.id, process.current_cycle)
    assigned = ctx.repo.count_assigned(process.id, cycle.seq) if cycle else 0
    reported = ctx.repo.count_reported(process.id, cycle.seq) if cycle else 0
    return ProcessReport(
        process=process,
        cycle=cycle,
        assigned=assigned,
        reported=reported,
        pool=pool.pool_status(ctx, process, cycle, assigned),
        previous=ctx.repo.get_cycle(process.id, process.current_cycle - 1)
        if process.current_cycle > 1
        else None,
        epsilon=_epsilon(ctx, process),
        buffering=_buffering(ctx, process),
    )


def _buffering(ctx: Context, process: Process) -> Buffering | None:
    if not process.server_config.is_async:
        return None
    made_by = _made_latest(ctx, process)
    return Buffering(
        places_taken=ctx.repo.count_assigned(process.id, LOBBY),
        mean_staleness=made_by.summary.mean_staleness if made_by and made_by.summary else None,
    )


def _made_latest(ctx: Context, process: Process) -> Cycle | None:
    """The cycle whose closing made the latest checkpoint (None before one)."""
    if process.latest_checkpoint < 2:
        return None
    return ctx.repo.get_cycle(process.id, process.latest_checkpoint - 1)


def _epsilon(ctx: Context, process: Process) -> float | None:
    """The epsilon stored by the closing that made the latest checkpoint (None before one)."""
    if process.server_config.dp is None:
        return None
    made_by = _made_latest(ctx, process)
    return made_by.summary.epsilon if made_by and made_by.summary else None


def retrieve_model(ctx: Context, query: api.CheckpointQuery) -> bytes | SignedUrl:
    """The checkpoint's bytes; above the inline limit a signed URL (307), as devices get."""
    process = named_process(ctx, query)
    number = process.latest_checkpoint if query.number is None else query.number
    if not 1 <= number <= process.latest_checkpoint:
        raise NotFound(f"Checkpoint {number} not found", "unknown_checkpoint")
    name = checkpoint_object(ctx, process, number)
    return download(ctx, process, name, payload_bytes(process.schema))


def post_metrics(ctx: Context, request: api.Metrics) -> Stored:
    worker = known_worker(ctx, request.worker_id)
    process = process_of(ctx, worker)
    client_id = pseudonym(worker.id)
    rows = [_metric_row(client_id, process, entry) for entry in request.stats]
    return Stored(ctx.repo.add_metrics(worker.process_id, rows))


def _metric_row(client_id: str, process: Process, entry: api.MetricEntry) -> dict[str, object]:
    if entry.cycle_id > process.current_cycle:
        raise BadRequest(
            f"'cycle_id' must be <= {process.current_cycle} (the process's current cycle)",
            "invalid_field",
        )
    cap = min(process.server_config.max_num_samples, limits.MAX_NUM_SAMPLES)
    if entry.num_samples > cap:
        raise BadRequest(f"'num_samples' must be <= {cap}", "invalid_field")
    row: dict[str, object] = {
        "client_id": client_id,
        "cycle_id": entry.cycle_id,
        "accuracy": entry.accuracy,
        "num_samples": entry.num_samples,
        "set": entry.set,
    }
    return row | dict(entry.extras)


def training_metrics(ctx: Context, query: api.MetricsQuery) -> MetricsTable:
    return MetricsTable(rows=ctx.repo.list_metrics(named_process(ctx, query).id), csv=query.csv)
