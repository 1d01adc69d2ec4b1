"""The operator API's read side, and the device metrics it reads: status, checkpoints,
training metrics, and the console's listings (processes, cycle history, round summaries),
each one bounded read."""

from __future__ import annotations

from firegrid import api
from firegrid.domain import limits
from firegrid.domain.buffered import LOBBY
from firegrid.domain.cycle import Cycle, CycleSummary
from firegrid.domain.diffs import payload_bytes
from firegrid.domain.errors import BadRequest, NotFound
from firegrid.domain.keys import pseudonym
from firegrid.domain.model import Process
from firegrid.domain.rounds import rounds_page
from firegrid.services import pool
from firegrid.services.context import Context
from firegrid.services.lookups import checkpoint_object, known_worker, named_process, process_of
from firegrid.services.results import (
    Buffering,
    CycleHistory,
    MetricsTable,
    Processes,
    ProcessReport,
    RoundsReport,
    SignedUrl,
    Stored,
)
from firegrid.services.signed import download


def status(ctx: Context, query: api.ProcessQuery) -> ProcessReport:
    process = named_process(ctx, query)
    cycle = ctx.repo.get_cycle(process.id, process.current_cycle)
    assigned = ctx.repo.count_assigned(process.id, cycle.seq) if cycle else 0
    reported = ctx.repo.count_reported(process.id, cycle.seq) if cycle else 0
    made_by = _made_latest(ctx, process)
    latest = made_by.summary if made_by else None
    return ProcessReport(
        process=process,
        cycle=cycle,
        assigned=assigned,
        reported=reported,
        pool=pool.pool_status(ctx, process, cycle, assigned),
        previous=ctx.repo.get_cycle(process.id, process.current_cycle - 1)
        if process.current_cycle > 1
        else None,
        epsilon=latest.epsilon if latest else None,
        clip_norm=_clip_norm(process, latest),
        seconds_left=cycle.seconds_left(ctx.clock.now()) if cycle else None,
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


def _clip_norm(process: Process, latest: CycleSummary | None) -> float | None:
    """``dp``: the clip norm of the next closing: adaptive, the one the closing that made
    the latest checkpoint chose (``clip_norm`` before one); else ``clip_norm``."""
    dp = process.server_config.dp
    return dp.clip_norm_after(latest.next_clip_norm if latest else None) if dp else None


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


def processes(ctx: Context, query: api.ProcessListing) -> Processes:
    return Processes(ctx.repo.recent_processes(query.limit))


def cycle_history(ctx: Context, query: api.CycleHistoryQuery) -> CycleHistory:
    process = named_process(ctx, query)
    return CycleHistory(process=process, cycles=ctx.repo.recent_cycles(process.id, query.limit))


def round_summaries(ctx: Context, query: api.RoundStatsQuery) -> RoundsReport:
    """The completed rounds after ``query.after``, from at most ``METRICS_PAGE_ROWS`` metric
    rows: the console asks only for rounds it has not drawn yet, so a refresh reads the
    rows of newly completed rounds, never the whole history."""
    process = named_process(ctx, query)
    last = process.completed_cycles
    if query.after >= last:
        return RoundsReport(stats=[], through=last, completed=last)
    page_rows = limits.METRICS_PAGE_ROWS
    rows = ctx.repo.metrics_of_cycles(process.id, query.after + 1, last, page_rows)
    page = rounds_page(rows, after=query.after, last=last, full=len(rows) >= page_rows)
    return RoundsReport(stats=page.stats, through=page.through, completed=last)
