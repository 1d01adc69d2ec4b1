"""Fan-out closing (``domain.fanout``): create a big closing's groups, aggregate one
group into its partial, and gather the partials once every group is done.

The group trigger aggregates each new group in its own invocation and, when a group
is done, calls the closing again, which combines once all are; the tick's re-drive
of the closing aggregates a group nobody took up itself. Each group is aggregated
exactly once, under its own lease, as a cycle is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import timedelta

import numpy as np

from firegrid.domain import aggregation, blobs
from firegrid.domain.aggregation import AggregationFailed, Step, Tensors
from firegrid.domain.cycle import ProcessStatus
from firegrid.domain.diffs import Schema
from firegrid.domain.fanout import Group, GroupStatus, combine, partition
from firegrid.domain.model import Assignment, Process
from firegrid.services.context import Context
from firegrid.services.leases import Lease, LeaseLost
from firegrid.services.stored_diffs import StoredDiffs
from firegrid.tensors import decode_state, encode_state

log = logging.getLogger(__name__)


def gather(
    ctx: Context,
    process: Process,
    seq: int,
    reported: Sequence[Assignment],
    weights: Sequence[float],
    skipped: dict[str, str],
) -> Step | None:
    """The cycle's step from its groups (created here first); None while a group is still
    being aggregated elsewhere. Diffs the groups left out are put in ``skipped``."""
    now = ctx.clock.now()
    pairs = [(a.worker_id, w) for a, w in zip(reported, weights, strict=True)]
    size = process.server_config.fanout_threshold
    groups = ctx.repo.create_groups(process.id, seq, partition(process.id, seq, pairs, size, now))
    grace = timedelta(seconds=ctx.settings.redrive_grace_s)
    for group in groups:
        if group.needs_redrive(now, grace):  # no trigger took it up: do it here
            aggregate_group(ctx, process.id, seq, group.index)
    groups = ctx.repo.groups(process.id, seq)
    if any(group.status is GroupStatus.PENDING for group in groups):
        return None
    for group in groups:
        skipped.update(group.skipped)
    done = [group for group in groups if group.partial_object is not None]
    partials = ((g, decode_state(ctx.blobs.get(g.partial_object or ""), "partial")) for g in done)
    return combine(_template(process.schema), partials)


def aggregate_group(ctx: Context, process_id: str, seq: int, index: int) -> bool:
    """Aggregate group ``index`` into its partial, once; True if this call did it."""
    process = ctx.repo.get_process(process_id)
    if process is None or process.status is not ProcessStatus.TRAINING:
        return False

    def update(change: Callable[[Group], Group | None]) -> Group | None:
        return ctx.repo.update_group(process_id, seq, index, change)

    lease: Lease[Group] = Lease(ctx, update, f"group {index} of cycle {process_id}/{seq}")
    group = lease.take()
    if group is None:
        return False
    with lease.kept():
        try:
            return _aggregate_group(ctx, process, group, lease)
        except LeaseLost:
            log.warning("%s overtaken: it changes nothing", lease.what)
            return False
        except Exception:
            lease.update(lambda g: g.release_lease(lease.holder))  # the next attempt, at once
            raise


def _aggregate_group(ctx: Context, process: Process, group: Group, lease: Lease[Group]) -> bool:
    config = process.server_config
    found = {
        a.worker_id: a
        for a in ctx.repo.assignments_of(process.id, group.seq, group.workers)
        if a.reported
    }
    skipped = {worker: "missing_object" for worker in group.workers if worker not in found}
    pairs = zip(group.workers, group.weights, strict=True)
    members = [(found[worker], weight) for worker, weight in pairs if worker in found]
    diffs = StoredDiffs(
        ctx.blobs,
        process.schema,
        [assignment for assignment, _ in members],
        [weight for _, weight in members],
        skipped,
    )
    step: Step | None
    try:
        step = aggregation.combine(
            _template(process.schema),
            diffs,
            method=config.aggregation,
            trim_fraction=config.trim_fraction,
        )
    except AggregationFailed:
        if not skipped:
            raise
        step = None  # every diff of the group was unusable
    lease.check()
    name = blobs.partial_object(process.id, group.seq, group.index, lease.holder)
    if step is not None:
        ctx.blobs.put(name, encode_state(step.delta))
    partial = name if step is not None else None
    done = lease.update(lambda g: g.complete(lease.holder, partial, step, skipped))
    if done is None:
        if partial is not None:
            ctx.blobs.delete(partial)
        raise LeaseLost
    log.info(
        "%s done: %d diffs, %d left out", lease.what, step.num_diffs if step else 0, len(skipped)
    )
    return True


def _template(schema: Schema) -> Tensors:
    """Zero-size stand-ins with the model's shapes (a rule reads only their shapes)."""
    return {
        name: np.broadcast_to(np.zeros((), dtype=np.float32), spec.shape)
        for name, spec in schema.items()
    }
