"""Closing never jams: lost or corrupt diffs are left out and recorded, too few usable
ones reopen the cycle, other failures are retried a bounded number of times."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from google.api_core import exceptions as gexc

from firegrid.domain import blobs
from firegrid.domain.cycle import MAX_AGGREGATION_ATTEMPTS, CycleStatus
from firegrid.domain.errors import Conflict
from firegrid.services import cycles, devices, operator
from firegrid.services.context import Context
from firegrid.tensors import encode_state
from tests.common import State
from tests.edge import call
from tests.unit.test_services import (
    ask,
    checkpoint,
    constant_diff,
    host,
    join,
    login,
    send_report,
)

Tiny = tuple[State, bytes]


def reported_cycle(ctx: Context, tiny: Tiny, count: int, **server: Any) -> tuple[str, list]:
    """A process whose cycle 1 holds ``count`` reports of 0.1, 0.2, ... and is closing."""
    process_id = host(ctx, tiny, max_diffs=count, **server)
    workers = []
    for i in range(count):
        worker_id, key = join(ctx)
        send_report(ctx, worker_id, key, constant_diff(tiny, 0.1 * (i + 1)), num_samples=10)
        workers.append(worker_id)
    assert cycles.on_report(ctx, process_id, 1)  # marked closing; not aggregated yet
    return process_id, workers


def diff_object(ctx: Context, process_id: str, worker_id: str) -> str:
    name = ctx.repo.get_assignment(process_id, 1, worker_id).diff_object
    assert name is not None
    return name


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("delete", "missing_object"),
        ("garbage", "invalid_safetensors"),
        ("wrong_shape", "invalid_diff"),
    ],
)
def test_an_unusable_diff_is_left_out_and_the_cycle_closes(ctx, tiny: Tiny, damage, reason):
    process_id, workers = reported_cycle(ctx, tiny, 3, min_diffs=2)
    name = diff_object(ctx, process_id, workers[1])
    if damage == "delete":
        ctx.blobs.delete(name)
    elif damage == "garbage":
        ctx.blobs.put(name, b"\0garbage")
    else:
        ctx.blobs.put(name, encode_state({"0.weight": np.zeros(3, np.float32)}))

    assert cycles.close_cycle(ctx, process_id, 1)

    closed = ctx.repo.get_cycle(process_id, 1)
    assert closed.status is CycleStatus.COMPLETED
    assert closed.summary.num_diffs == 2 and closed.summary.total_samples == 20
    assert closed.skipped == {reason: 1}
    old, new = checkpoint(ctx, process_id, 1), checkpoint(ctx, process_id, 2)
    for tensor in old:  # the FedAvg of the two usable diffs (0.1 and 0.3, equal weights)
        np.testing.assert_allclose(new[tensor], old[tensor] - 0.2, rtol=1e-5, atol=1e-6)
    assert ctx.repo.get_assignment(process_id, 1, workers[1]).skipped == reason
    status = call(operator.status, ctx, {"name": "mnist"})
    assert status["previous_cycle"]["skipped"] == {reason: 1}


def test_a_device_whose_diff_was_left_out_is_told_so(ctx, tiny: Tiny) -> None:
    process_id = host(ctx, tiny, max_diffs=3, min_diffs=1, cycle_length=600)
    first, key = join(ctx)
    send_report(ctx, first, key, constant_diff(tiny, 0.1))
    ctx.repo.update_assignment(process_id, 1, first, lambda a: a.skip("missing_object"))

    with pytest.raises(Conflict) as again:
        send_report(ctx, first, key, constant_diff(tiny, 0.1))
    assert again.value.code == "diff_skipped"
    assert ctx.repo.count_reported(process_id, 1) == 0


@pytest.mark.parametrize(("on_expiry", "epoch"), [("reset", 1), ("extend", 0)])
def test_too_few_usable_diffs_reopen_the_cycle(ctx, tiny: Tiny, on_expiry, epoch) -> None:
    process_id, workers = reported_cycle(ctx, tiny, 2, min_diffs=2, on_expiry=on_expiry)
    ctx.blobs.delete(diff_object(ctx, process_id, workers[0]))

    assert not cycles.close_cycle(ctx, process_id, 1)

    reopened = ctx.repo.get_cycle(process_id, 1)
    assert (reopened.status, reopened.epoch) == (CycleStatus.OPEN, epoch)
    assert reopened.skipped == {"missing_object": 1}
    assert reopened.deadline == ctx.clock.now() + timedelta(seconds=60)
    assert blobs.checkpoint_object(process_id, 2) not in ctx.blobs.objects
    assert ctx.repo.count_reported(process_id, 1) == 1  # the usable diff is kept
    if on_expiry == "reset":  # the lost diff's worker may take a place again
        assert ctx.repo.get_assignment(process_id, 1, workers[0]) is None
        assert ask(ctx, workers[0])["status"] == "accepted"


def test_a_failing_aggregation_is_retried_then_marked_failed(ctx, tiny: Tiny) -> None:
    process_id, _ = reported_cycle(ctx, tiny, 2, cycle_length=60)
    ctx.blobs.delete(blobs.checkpoint_object(process_id, 1))  # not a diff: nothing to leave out

    assert not cycles.close_cycle(ctx, process_id, 1)  # the cycle trigger's attempt
    for attempt in range(2, MAX_AGGREGATION_ATTEMPTS + 1):  # the tick's re-drives
        ctx.clock.advance(cycles.REDRIVE_GRACE.total_seconds() + 1)
        assert cycles.tick(ctx).failed == ["mnist:1.0#1"]
        assert ctx.repo.get_cycle(process_id, 1).aggregation_runs == attempt

    failed = ctx.repo.get_cycle(process_id, 1)
    assert failed.status is CycleStatus.FAILED
    assert "checkpoints/1.safetensors not found" in failed.last_error
    ctx.clock.advance(3600)
    assert cycles.tick(ctx).failed == []  # a failed cycle is no longer re-driven
    assert ctx.repo.get_cycle(process_id, 1).aggregation_runs == MAX_AGGREGATION_ATTEMPTS
    status = call(operator.status, ctx, {"name": "mnist"})["current_cycle"]
    assert status["status"] == "failed" and status["last_error"]
    rejected = ask(ctx, join_only(ctx))
    assert rejected == {"status": "rejected", "reason": "cycle_failed", "timeout": 60}


def join_only(ctx: Context) -> str:
    return str(call(devices.authenticate, ctx, {"model_name": "mnist"})["worker_id"])


def test_a_checkpoint_that_is_not_finite_is_refused(ctx, tiny: Tiny) -> None:
    process_id = host(ctx, tiny, max_diffs=1, server_lr=1000.0)
    worker_id, key = join(ctx)
    huge = {k: np.full_like(v, np.finfo(np.float32).max) for k, v in tiny[0].items()}
    send_report(ctx, worker_id, key, huge)
    assert cycles.on_report(ctx, process_id, 1)

    assert not cycles.close_cycle(ctx, process_id, 1)

    stored = ctx.repo.get_cycle(process_id, 1)
    assert stored.status is CycleStatus.CLOSING and "not finite" in stored.last_error
    assert blobs.checkpoint_object(process_id, 2) not in ctx.blobs.objects


def test_a_transient_failure_releases_the_lease_for_the_retry(ctx, tiny: Tiny) -> None:
    process_id, _ = reported_cycle(ctx, tiny, 2)
    get = ctx.blobs.get

    def unavailable(name: str, **kw: Any) -> bytes:
        raise gexc.ServiceUnavailable("storage is restarting")

    ctx.blobs.get = unavailable
    with pytest.raises(gexc.ServiceUnavailable):
        cycles.close_cycle(ctx, process_id, 1)
    stored = ctx.repo.get_cycle(process_id, 1)
    assert stored.closing_lease_until is None and stored.last_error is None

    ctx.blobs.get = get  # the platform redelivers the event: the retry takes the lease at once
    assert cycles.close_cycle(ctx, process_id, 1)
    assert ctx.repo.get_cycle(process_id, 1).aggregation_runs == 2


class Killed(BaseException):
    """The instance stopped mid-call: no ``except Exception`` runs."""


def test_a_reset_that_died_before_freeing_the_places_is_finished_by_the_next_tick(
    ctx, tiny
) -> None:
    process_id = host(ctx, tiny, max_workers=1, max_diffs=1)
    late_worker, late_key = join(ctx)
    newcomer = login(ctx)
    assert ask(ctx, newcomer)["reason"] == "cycle_full"
    drop = ctx.repo.drop_assignments

    def killed(*args: Any) -> list[str]:
        raise Killed

    ctx.repo.drop_assignments = killed
    ctx.clock.advance(61)
    with pytest.raises(Killed):
        cycles.tick(ctx)  # the epoch moved on, the place was not freed
    ctx.repo.drop_assignments = drop
    assert ctx.repo.get_cycle(process_id, 1).drop_pending
    assert ask(ctx, newcomer)["reason"] == "cycle_full"

    cycles.tick(ctx)

    cycle = ctx.repo.get_cycle(process_id, 1)
    assert (cycle.epoch, cycle.drop_pending) == (1, False)
    assert ask(ctx, newcomer)["status"] == "accepted"
    with pytest.raises(Conflict) as dropped:
        send_report(ctx, late_worker, late_key, constant_diff(tiny, 0.1))
    assert dropped.value.code == "assignment_dropped"
    cycles.tick(ctx)
    assert ctx.repo.get_assignment(process_id, 1, newcomer) is not None
