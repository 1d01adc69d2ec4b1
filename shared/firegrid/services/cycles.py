"""Closing cycles (aggregation), deadlines and the scheduled tick."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np

from firegrid.domain import blobs
from firegrid.domain.aggregation import AggregationFailed, Contribution, aggregate, fedavg_weights
from firegrid.domain.cycle import (
    Cycle,
    CycleStatus,
    CycleSummary,
    ProcessStatus,
    deadline_for,
    has_enough,
    is_expired,
    is_last_cycle,
    is_ready,
)
from firegrid.domain.diffs import validate_diff
from firegrid.domain.errors import FireGridError, NotFound
from firegrid.domain.keys import redact
from firegrid.domain.model import Assignment, Process
from firegrid.services import pool
from firegrid.services.context import Context
from firegrid.services.hosting import new_cycle
from firegrid.tensors import decode_state, encode_state
from firegrid.transient import is_transient

log = logging.getLogger(__name__)

# Longer than any aggregation we run in one invocation (event functions stop at 9 min).
CLOSING_LEASE = timedelta(minutes=10)
REDRIVE_GRACE = timedelta(seconds=60)
"""How long a closing cycle waits for its trigger before the tick aggregates it."""


def on_report(ctx: Context, process_id: str, seq: int) -> bool:
    """After a report: mark the cycle ``closing`` if it is full (its trigger then
    aggregates it). True if this call marked it."""
    process = ctx.repo.get_process(process_id)
    cycle = ctx.repo.get_cycle(process_id, seq)
    if process is None or process.status is not ProcessStatus.TRAINING:
        return False  # a process being deleted starts no closing
    if cycle is None or cycle.status is not CycleStatus.OPEN:
        return False
    reported = ctx.repo.count_reported(process_id, seq)
    if not is_ready(cycle, reported, process.server_config, ctx.clock.now()):
        return False
    now = ctx.clock.now()
    return ctx.repo.update_cycle(process_id, seq, lambda c: c.begin_closing(now)) is not None


def close_cycle(ctx: Context, process_id: str, seq: int) -> bool:
    """Aggregate a ``closing`` cycle and open the next one; safe to call any number of times.

    The one closing path: the cycle trigger calls it when a cycle enters ``closing``,
    and the tick calls it for a closing cycle nobody is aggregating. It never jams: a
    diff that cannot be used is left out (and recorded); too few usable diffs reopen the
    cycle as an expired one would be; any other failure releases the lease for the next
    attempt, and after ``MAX_AGGREGATION_ATTEMPTS`` the cycle is ``failed``.
    A process being deleted is not aggregated; an aggregation that was already running
    when the deletion began cannot complete (``Process.after_cycle`` declines) and deletes
    the checkpoint it wrote. True if this call completed the cycle.
    """
    process = ctx.repo.get_process(process_id)
    if process is None or process.status is not ProcessStatus.TRAINING:
        return False
    now = ctx.clock.now()
    cycle = ctx.repo.update_cycle(process_id, seq, lambda c: c.take_lease(now, now + CLOSING_LEASE))
    if cycle is None:
        return False
    try:
        return _aggregate(ctx, process, seq)
    except Exception as error:
        if is_transient(error):  # the store or network, briefly: try again soon
            ctx.repo.update_cycle(process_id, seq, lambda c: c.release_lease())
            raise
        reason = f"{type(error).__name__}: {error}"[:500]
        failed = ctx.repo.update_cycle(process_id, seq, lambda c: c.record_failure(reason))
        log.error("aggregation of %s/%d failed: %s", process_id, seq, reason)
        if failed is not None and failed.status is CycleStatus.FAILED:
            log.error(
                "cycle %s/%d is failed after %d attempts", process_id, seq, failed.aggregation_runs
            )
        return False


def _aggregate(ctx: Context, process: Process, seq: int) -> bool:
    config = process.server_config
    checkpoint = decode_state(ctx.blobs.get(blobs.checkpoint_object(process.id, seq)), "checkpoint")
    reported = list(ctx.repo.reported_assignments(process.id, seq))
    counts = [a.num_samples or 0 for a in reported]
    skipped: dict[str, str] = {}
    contributions = _contributions(
        ctx, process, reported, fedavg_weights(counts, config.max_weight_fraction), skipped
    )
    try:
        updated, step = aggregate(
            checkpoint,
            contributions,
            method=config.aggregation,
            server_lr=config.server_lr,
            trim_fraction=config.trim_fraction,
        )
        usable = step.num_diffs
    except AggregationFailed:
        if not skipped:
            raise
        updated, usable = {}, 0  # every diff was unusable
    for worker_id, reason in skipped.items():
        ctx.repo.update_assignment(process.id, seq, worker_id, _skip(reason))
    reasons = dict(Counter(skipped.values()))
    if not has_enough(usable, config):
        _reopen(ctx, process, seq, reasons)
        return False
    _check_finite(updated)
    checkpoint_out = blobs.checkpoint_object(process.id, seq + 1)
    ctx.blobs.put(checkpoint_out, encode_state(updated))
    total_samples = sum(a.num_samples or 0 for a in reported if a.worker_id not in skipped)
    summary = CycleSummary(
        num_diffs=usable,
        total_samples=total_samples,  # a Python int: no overflow whatever the counts
        checkpoint_out=seq + 1,
        closed_at=ctx.clock.now(),
    )
    next_cycle = None if is_last_cycle(seq, config) else new_cycle(process, seq + 1, ctx)
    next_seq = next_cycle.seq if next_cycle else None
    completed = ctx.repo.complete_cycle(
        process.id,
        seq,
        lambda c: c.complete(summary, reasons),
        next_cycle,
        lambda stored: stored.after_cycle(seq + 1, next_seq),
    )
    if completed is None:
        _drop_if_deleting(ctx, process.id, checkpoint_out)
        return False
    _notify(pool.after_cycle_completed, ctx, process.id, seq)
    log.info(
        "cycle %s/%d closed: %d diffs, %d samples, %d skipped",
        *(process.id, seq, usable, total_samples, len(skipped)),
    )
    return True


def _drop_if_deleting(ctx: Context, process_id: str, name: str) -> None:
    """A completion declined because the process is being (or was) deleted: the checkpoint
    written for it would outlive the deletion's sweep of the objects."""
    process = ctx.repo.get_process(process_id)
    if process is None or process.status is ProcessStatus.DELETING:
        ctx.blobs.delete(name)


def _skip(reason: str) -> Callable[[Assignment], Assignment | None]:
    return lambda assignment: assignment.skip(reason) if assignment.reported else None


def _check_finite(state: Mapping[str, Any]) -> None:
    """A checkpoint that is not finite would poison every later cycle: refuse it."""
    for name, tensor in state.items():
        if np.issubdtype(tensor.dtype, np.floating) and not np.isfinite(tensor).all():
            raise AggregationFailed(f"the new checkpoint's '{name}' is not finite")


def _reopen(ctx: Context, process: Process, seq: int, skipped: Mapping[str, int]) -> None:
    """Too few usable diffs: the cycle takes reports again, as at an expired deadline."""
    config = process.server_config
    drop = config.on_expiry == "reset"
    deadline = deadline_for(ctx.clock.now(), config)
    reopened = ctx.repo.update_cycle(
        process.id, seq, lambda c: c.reopen(deadline, skipped, drop_unreported=drop)
    )
    if reopened is None:
        return
    log.warning("cycle %s/%d reopened: too few usable diffs (%s)", process.id, seq, skipped)
    if drop:
        _drop_places(ctx, process.id, reopened)


def _drop_places(ctx: Context, process_id: str, cycle: Cycle) -> None:
    """Free the unreported places a reset into ``cycle.epoch`` dropped, record that it is
    done, and tell the workers. Safe to repeat: the tick does it again for a reset whose
    instance died before recording it (each place is freed once, each push sent once)."""
    dropped = ctx.repo.drop_assignments(
        process_id, cycle.seq, lambda a: a.dropped_by_reset(cycle.epoch)
    )
    ctx.repo.update_cycle(process_id, cycle.seq, lambda c: c.places_dropped(cycle.epoch))
    _notify(pool.after_cycle_reset, ctx, process_id, cycle.seq, dropped)


def _notify(send: Callable[..., None], *args: Any) -> None:
    """Lifecycle pushes follow a committed transition; their failure must not undo it."""
    try:
        send(*args)
    except Exception:
        log.exception("lifecycle push %s failed", send.__name__)


def _contributions(
    ctx: Context,
    process: Process,
    reported: list[Assignment],
    weights: list[float],
    skipped: dict[str, str],
) -> Iterator[Contribution]:
    """Each reported diff, read from storage one at a time; one that is missing, corrupt
    or does not fit the model is left out and its reason put in ``skipped``."""
    for assignment, weight in zip(reported, weights, strict=True):
        try:
            if assignment.diff_object is None:
                raise NotFound("the report names no diff object", "missing_object")
            data = ctx.blobs.get(assignment.diff_object)
            diff = validate_diff(decode_state(data, "stored diff"), process.schema)
        except FireGridError as unusable:
            skipped[assignment.worker_id] = unusable.code
            log.warning("diff of %s left out: %s", redact(assignment.worker_id), unusable.message)
            continue
        yield Contribution(diff=diff, weight=weight)


@dataclass
class TickReport:
    closed: list[str] = field(default_factory=list)
    reset: list[str] = field(default_factory=list)
    extended: list[str] = field(default_factory=list)
    redriven: list[str] = field(default_factory=list)
    invited: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def tick(ctx: Context) -> TickReport:
    """Enforce deadlines and re-drive stuck closings, for every training process."""
    report = TickReport()
    for process in ctx.repo.training_processes():
        label = f"{process.name}:{process.version}#{process.current_cycle}"
        try:
            _tick_process(ctx, process, label, report)
        except Exception:  # one broken process must not stop the others' deadlines
            log.exception("tick failed for %s", label)
            report.failed.append(label)
    return report


def _tick_process(ctx: Context, process: Process, label: str, report: TickReport) -> None:
    _enforce_deadline(ctx, process, label, report)
    # Catches what triggers missed: pools that filled up, availability that lapsed.
    if pool.invite(ctx, process.id):
        report.invited.append(label)


def _enforce_deadline(ctx: Context, process: Process, label: str, report: TickReport) -> None:
    cycle = ctx.repo.get_cycle(process.id, process.current_cycle)
    if cycle is None:
        return
    now = ctx.clock.now()
    if cycle.status is CycleStatus.CLOSING:
        if not cycle.needs_redrive(now, REDRIVE_GRACE):
            return
        if close_cycle(ctx, process.id, cycle.seq):
            report.redriven.append(label)
            return
        after = ctx.repo.get_cycle(process.id, cycle.seq)
        if after is not None and after.last_error is not None:
            report.failed.append(label)
        return
    if cycle.status is not CycleStatus.OPEN:
        return
    if cycle.drop_pending:  # the instance that reset it died before freeing the places
        _drop_places(ctx, process.id, cycle)
    if not is_expired(cycle, now):
        return
    config = process.server_config
    if has_enough(ctx.repo.count_reported(process.id, cycle.seq), config):
        if ctx.repo.update_cycle(process.id, cycle.seq, lambda c: c.begin_closing(now)):
            report.closed.append(label)  # the cycle trigger aggregates it
        return
    drop = config.on_expiry == "reset"
    deadline = deadline_for(now, config)
    reset = ctx.repo.update_cycle(
        process.id, cycle.seq, lambda c: c.reset(cycle, deadline, drop_unreported=drop)
    )
    if reset is None:  # another tick got there first
        return
    (report.reset if drop else report.extended).append(label)
    if drop:
        _drop_places(ctx, process.id, reset)
