"""Closing never jams: lost or corrupt diffs are left out and recorded, too few usable
ones reopen the cycle, other failures are retried a bounded number of times."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from google.api_core import exceptions as gexc

from firegrid.domain import blobs
from firegrid.domain.cycle import MAX_AGGREGATION_ATTEMPTS, CycleStatus
from firegrid.domain.errors import Conflict
from firegrid.services import cycles, devices, hosting, operator
from firegrid.services.context import Context
from firegrid.services.leases import Lease, LeaseLost
from firegrid.tensors import encode_state
from tests.common import State, checkpoint_writes
from tests.edge import call
from tests.fakes import fake_settings, make_context
from tests.unit.test_services import (
    ask,
    checkpoint,
    constant_diff,
    host,
    host_body,
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
        ("not_finite", "invalid_diff"),
        ("cut_short", "invalid_safetensors"),
    ],
)
@pytest.mark.parametrize("aggregation", ["fedavg", "median", "trimmed_mean"])
def test_an_unusable_diff_is_left_out_and_the_cycle_closes(
    ctx, tiny: Tiny, damage, reason, aggregation
):
    """The robust rules read diffs in slices: a header that does not fit is caught before
    aggregating, values that are not finite or missing while slicing (the object changed
    since its report) restart the rule without that diff."""
    process_id, workers = reported_cycle(ctx, tiny, 3, min_diffs=2, aggregation=aggregation)
    name = diff_object(ctx, process_id, workers[1])
    if damage == "delete":
        ctx.blobs.delete(name)
    elif damage == "garbage":
        ctx.blobs.put(name, b"\0garbage")
    elif damage == "wrong_shape":
        ctx.blobs.put(name, encode_state({"0.weight": np.zeros(3, np.float32)}))
    elif damage == "not_finite":
        ctx.blobs.put(name, encode_state(constant_diff(tiny, float("nan"))))
    else:
        ctx.blobs.put(name, ctx.blobs.get(name)[:-4])

    assert cycles.close_cycle(ctx, process_id, 1)

    closed = ctx.repo.get_cycle(process_id, 1)
    assert closed.status is CycleStatus.COMPLETED
    assert closed.summary.num_diffs == 2 and closed.summary.total_samples == 20
    assert closed.skipped == {reason: 1}
    old, new = checkpoint(ctx, process_id, 1), checkpoint(ctx, process_id, 2)
    for tensor in old:  # every rule: 0.2 from the usable diffs 0.1 and 0.3 (equal weights)
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
    assert checkpoint_writes(ctx, process_id, 2) == []
    assert ctx.repo.count_reported(process_id, 1) == 1  # the usable diff is kept
    if on_expiry == "reset":  # the lost diff's worker may take a place again
        assert ctx.repo.get_assignment(process_id, 1, workers[0]) is None
        assert ask(ctx, workers[0])["status"] == "accepted"


def test_a_failing_aggregation_is_retried_then_marked_failed(ctx, tiny: Tiny) -> None:
    process_id, _ = reported_cycle(ctx, tiny, 2, cycle_length=60)
    ctx.blobs.delete(blobs.checkpoint_object(process_id, 1))  # not a diff: nothing to leave out

    assert not cycles.close_cycle(ctx, process_id, 1)  # the cycle trigger's attempt
    for attempt in range(2, MAX_AGGREGATION_ATTEMPTS + 1):  # the tick's re-drives
        ctx.clock.advance(ctx.settings.redrive_grace_s + 1)
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
    assert checkpoint_writes(ctx, process_id, 2) == []


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


# -- leases: short, renewed, and fencing every write of a closing ------------------


def test_an_overtaken_aggregator_changes_nothing(ctx, tiny: Tiny) -> None:
    process_id, _workers = reported_cycle(ctx, tiny, 2)
    get = ctx.blobs.get
    overtaker: list[bool] = []

    def stalls_after_its_first_read(name: str, **kw: Any) -> bytes:
        data = get(name, **kw)
        if not overtaker and "/diffs/" in name:  # the first attempt stalls past its lease
            ctx.clock.advance(ctx.settings.closing_lease_s + 1)
            ctx.blobs.get = get
            overtaker.append(cycles.close_cycle(ctx, process_id, 1))
        return data

    ctx.blobs.get = stalls_after_its_first_read
    assert not cycles.close_cycle(ctx, process_id, 1)

    assert overtaker == [True]
    closed = ctx.repo.get_cycle(process_id, 1)
    assert (closed.status, closed.aggregation_runs) == (CycleStatus.COMPLETED, 2)
    assert len(checkpoint_writes(ctx, process_id, 2)) == 2  # both attempts wrote their own...
    kept = [name for name in checkpoint_writes(ctx, process_id, 2) if name in ctx.blobs.objects]
    assert kept == [closed.summary.checkpoint_object]  # ...the overtaken one deleted its copy
    old, new = checkpoint(ctx, process_id, 1), checkpoint(ctx, process_id, 2)
    for tensor in old:  # the FedAvg of 0.1 and 0.2, applied once
        np.testing.assert_allclose(new[tensor], old[tensor] - 0.15, rtol=1e-5, atol=1e-6)
    assert ctx.repo.get_process(process_id).current_cycle == 2
    assert ctx.repo.get_cycle(process_id, 3) is None


def test_the_lease_is_renewed_while_the_work_goes_on_and_lost_when_overtaken(tiny) -> None:
    ctx = make_context(settings=fake_settings(closing_lease_s=0.06))
    process_id, _ = reported_cycle(ctx, tiny, 1)
    lease = cycles.cycle_lease(ctx, process_id, 1)
    assert lease.take() is not None
    with lease.kept():
        ctx.clock.advance(10)
        lease_until = lambda: ctx.repo.get_cycle(process_id, 1).closing_lease_until  # noqa: E731
        assert wait_for(lambda: lease_until() > ctx.clock.now()), "the lease was not renewed"
        ctx.clock.advance(10)  # the renewer is starved past its lease; another attempt takes over
        now = ctx.clock.now()
        ctx.repo.update_cycle(process_id, 1, lambda c: c.take_lease(now, now, "other"))
        assert wait_for(lambda: lease_lost(lease)), "the overtaken lease was not noticed"
    assert ctx.repo.get_cycle(process_id, 1).closing_lease_holder == "other"


def test_a_redrive_does_not_hold_up_the_other_processes(ctx, tiny: Tiny) -> None:
    stuck, _ = reported_cycle(ctx, tiny, 1)
    other = call(
        hosting.host_training,
        ctx,
        host_body(tiny, cycle_length=60) | {"client_config": {"name": "other", "version": "1"}},
    )["process_id"]
    worker_id = call(devices.authenticate, ctx, {"model_name": "other"})["worker_id"]
    answer = call(devices.request_cycle, ctx, {"worker_id": worker_id, "model": "other"})
    worker_id, key = worker_id, answer["request_key"]
    send_report(ctx, worker_id, key, constant_diff(tiny, 0.1))
    ctx.clock.advance(61)  # the stuck closing needs its re-drive; the other's deadline passed
    get = ctx.blobs.get
    seen_meanwhile: list[bool] = []

    def slow(name: str, **kw: Any) -> bytes:
        if stuck in name and not seen_meanwhile:
            closing = lambda: ctx.repo.get_cycle(other, 1).status is CycleStatus.CLOSING  # noqa: E731
            seen_meanwhile.append(wait_for(closing))
        return get(name, **kw)

    ctx.blobs.get = slow
    report = cycles.tick(ctx)

    assert seen_meanwhile == [True]  # the other deadline was enforced during the re-drive
    assert report.redriven == ["mnist:1.0#1"] and report.closed == ["other:1#1"]


def lease_lost(lease: Lease[Any]) -> bool:
    try:
        lease.check()
    except LeaseLost:
        return True
    return False


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


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
