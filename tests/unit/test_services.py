"""The use cases (hosting, device API, closing, tick) on in-memory fakes, the clock held still."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from firegrid.domain import blobs
from firegrid.domain.cycle import CycleStatus, ProcessStatus
from firegrid.domain.errors import BadRequest, Conflict, NotFound, Unauthorized
from firegrid.services import cycles, devices, hosting
from firegrid.services.context import Context
from firegrid.tensors import decode_state, encode_state
from firegrid.wire import status_of
from tests.common import State, b64, checkpoint_writes, published
from tests.edge import call
from tests.fakes import fake_settings

LEASE = timedelta(seconds=fake_settings().closing_lease_s)


def host_body(tiny: tuple[State, bytes], **server: Any) -> dict[str, Any]:
    state, plan = tiny
    return {
        "model": b64(encode_state(state)),
        "plans": {"training_plan": b64(plan)},
        "client_config": {"name": "mnist", "version": "1.0", "batch_size": 4, "lr": 0.1},
        "server_config": {"cycle_length": 60, "num_cycles": 3, "max_diffs": 2} | server,
    }


def host(ctx: Context, tiny: tuple[State, bytes], **server: Any) -> str:
    return str(call(hosting.host_training, ctx, host_body(tiny, **server))["process_id"])


def login(ctx: Context, token: str | None = None) -> str:
    body = {"model_name": "mnist"} | ({"auth_token": token} if token else {})
    return str(call(devices.authenticate, ctx, body)["worker_id"])


def ask(ctx: Context, worker_id: str) -> dict[str, Any]:
    return call(devices.request_cycle, ctx, {"worker_id": worker_id, "model": "mnist"})


def join(ctx: Context) -> tuple[str, str]:
    """A new worker with a place in the open cycle: (worker_id, request_key)."""
    worker_id = login(ctx)
    answer = ask(ctx, worker_id)
    assert answer["status"] == "accepted", answer
    return worker_id, answer["request_key"]


def constant_diff(tiny: tuple[State, bytes], value: float) -> State:
    return {k: np.full_like(v, value) for k, v in tiny[0].items()}


def send_report(
    ctx: Context, worker_id: str, key: str, diff: State, num_samples: int = 1
) -> dict[str, Any]:
    body = {
        "worker_id": worker_id,
        "request_key": key,
        "diff": b64(encode_state(diff)),
        "num_samples": num_samples,
    }
    return call(devices.report, ctx, body)


def on_report(ctx: Context, process_id: str, seq: int = 1) -> bool:
    """What a report sets off: the report trigger marks a full cycle closing, then the
    cycle trigger aggregates it. True if the cycle closed."""
    return cycles.on_report(ctx, process_id, seq) and cycles.close_cycle(ctx, process_id, seq)


def tick(ctx: Context) -> cycles.TickReport:
    """The tick, then the cycle trigger of every cycle it marked closing."""
    report = cycles.tick(ctx)
    for (process_id, seq), record in list(ctx.repo.cycles.items()):
        closing = record.cycle.status is CycleStatus.CLOSING
        if closing and record.cycle.closing_lease_until is None:
            cycles.close_cycle(ctx, process_id, seq)
    return report


def begin_closing(ctx: Context, process_id: str, seq: int) -> bool:
    """``open -> closing``, as a full cycle or an expired deadline does it."""
    closing = ctx.repo.update_cycle(process_id, seq, lambda c: c.begin_closing(ctx.clock.now()))
    return closing is not None


def checkpoint(ctx: Context, process_id: str, number: int) -> State:
    return decode_state(ctx.blobs.get(published(ctx, process_id, number)))


# -- hosting ------------------------------------------------------------------


def test_hosting_stores_checkpoint_one_the_plan_and_opens_cycle_one(ctx, tiny) -> None:
    state, plan = tiny

    process_id = host(ctx, tiny)

    assert ctx.blobs.get(blobs.checkpoint_object(process_id, 1)) == encode_state(state)
    assert ctx.blobs.get(blobs.plan_object(process_id, "training_plan")) == plan
    process = ctx.repo.get_process(process_id)
    assert process.status is ProcessStatus.TRAINING
    assert (process.current_cycle, process.latest_checkpoint) == (1, 1)
    assert process.plans == {"training_plan": "training_plan"}
    cycle = ctx.repo.get_cycle(process_id, 1)
    assert cycle.status is CycleStatus.OPEN
    assert cycle.epoch == 0
    assert cycle.deadline == ctx.clock.now() + timedelta(seconds=60)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"server_config": {"cycle_length": 60, "num_cycles": 1, "max_dif": 2}}, "invalid_config"),
        (
            {
                "server_config": {
                    "cycle_length": 60,
                    "num_cycles": 1,
                    "min_diffs": 3,
                    "max_diffs": 2,
                }
            },
            "invalid_config",
        ),
        ({"plans": {"training_plan": b64(b"not a torch.export archive")}}, "invalid_plan"),
        ({"model": b64(b"not safetensors")}, "invalid_safetensors"),
    ],
)
def test_an_invalid_hosting_request_creates_nothing(ctx, tiny, change, code) -> None:
    with pytest.raises(BadRequest) as refused:
        call(hosting.host_training, ctx, host_body(tiny) | change)

    assert refused.value.code == code
    assert ctx.repo.processes == {}
    assert ctx.repo.cycles == {}
    assert ctx.blobs.objects == {}


def test_hosting_the_same_name_and_version_twice_is_409_and_changes_nothing(ctx, tiny) -> None:
    process_id = host(ctx, tiny)
    stored = dict(ctx.blobs.objects)

    with pytest.raises(Conflict) as duplicate:
        host(ctx, tiny, num_cycles=9)

    assert (status_of(duplicate.value), duplicate.value.code) == (409, "duplicate_process")
    assert ctx.blobs.objects == stored
    assert ctx.repo.get_process(process_id).server_config.num_cycles == 3


def test_a_failure_after_the_process_document_is_created_is_rolled_back(ctx, tiny) -> None:
    def broken_start(process, first_cycle) -> None:
        raise RuntimeError("store unavailable")

    ctx.repo.start_training = broken_start

    with pytest.raises(RuntimeError):
        host(ctx, tiny)

    assert ctx.repo.processes == {}
    assert ctx.blobs.objects == {}


# -- authenticate -------------------------------------------------------------


def test_an_open_process_makes_a_new_worker_at_every_login(ctx, tiny) -> None:
    process_id = host(ctx, tiny)

    first, second = login(ctx), login(ctx)

    assert first != second
    assert len(ctx.repo.process_workers(process_id)) == 2


def test_a_secret_auth_process_gives_a_subject_the_same_worker_every_time(ctx, tiny) -> None:
    process_id = host(ctx, tiny, authentication={"secret": "abc"})

    alice, alice_again, bob = (
        login(ctx, "valid:alice"),
        login(ctx, "valid:alice"),
        login(ctx, "valid:bob"),
    )

    assert alice == alice_again != bob
    assert len(ctx.repo.process_workers(process_id)) == 2
    answer = call(devices.authenticate, ctx, {"model_name": "mnist", "auth_token": "valid:alice"})
    assert answer == {"status": "success", "worker_id": alice, "requires_speed_test": False}


@pytest.mark.parametrize(("token", "code"), [(None, "auth_required"), ("forged", "invalid_token")])
def test_a_secret_auth_process_refuses_a_missing_or_invalid_token(ctx, tiny, token, code) -> None:
    process_id = host(ctx, tiny, authentication={"secret": "abc"})

    with pytest.raises(Unauthorized) as refused:
        login(ctx, token)

    assert refused.value.code == code
    assert len(ctx.repo.process_workers(process_id)) == 0


def test_authenticating_for_an_unknown_model_is_404(ctx, tiny) -> None:
    host(ctx, tiny)

    with pytest.raises(NotFound):
        call(devices.authenticate, ctx, {"model_name": "cifar"})


# -- cycle-request ------------------------------------------------------------


def test_an_accepted_cycle_request_carries_the_protocol_payload(ctx, tiny) -> None:
    process_id = host(ctx, tiny)
    worker_id = login(ctx)

    answer = ask(ctx, worker_id)

    assert answer.pop("request_key").startswith("1.0.")
    assert answer == {
        "status": "accepted",
        "cycle_id": 1,
        "model": "mnist",
        "version": "1.0",
        "model_id": process_id,
        "plans": {"training_plan": "training_plan"},
        "protocols": {},
        "client_config": {"name": "mnist", "version": "1.0", "batch_size": 4, "lr": 0.1},
        "deadline": (ctx.clock.now() + timedelta(seconds=60)).isoformat(),
    }


def test_a_repeated_cycle_request_returns_the_same_assignment(ctx, tiny) -> None:
    process_id = host(ctx, tiny, max_workers=2)
    worker_id = login(ctx)

    first = ask(ctx, worker_id)
    ctx.clock.advance(5)
    again = ask(ctx, worker_id)

    assert again == first
    assert ctx.repo.count_assigned(process_id, 1) == 1


def test_max_workers_is_a_hard_cap_with_the_time_to_the_deadline(ctx, tiny) -> None:
    process_id = host(ctx, tiny, max_workers=2)
    for _ in range(2):
        join(ctx)
    late = login(ctx)
    ctx.clock.advance(20)

    answer = ask(ctx, late)

    assert answer == {"status": "rejected", "reason": "cycle_full", "timeout": 40}
    assert ctx.repo.count_assigned(process_id, 1) == 2


def test_concurrent_requests_never_exceed_max_workers(ctx, tiny) -> None:
    process_id = host(ctx, tiny, max_workers=5)
    workers = [login(ctx) for _ in range(20)]
    answers: list[dict[str, Any]] = []
    threads = [threading.Thread(target=lambda w=w: answers.append(ask(ctx, w))) for w in workers]

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(a["status"] for a in answers) == ["accepted"] * 5 + ["rejected"] * 15
    assert ctx.repo.count_assigned(process_id, 1) == 5


def test_a_worker_that_reported_is_rejected_until_the_next_cycle(ctx, tiny) -> None:
    host(ctx, tiny, max_diffs=2)
    worker_id, key = join(ctx)
    send_report(ctx, worker_id, key, constant_diff(tiny, 0.1))

    answer = ask(ctx, worker_id)

    assert answer == {"status": "rejected", "reason": "already_reported", "timeout": 60}


def test_after_the_last_cycle_the_rejection_has_no_timeout(ctx, tiny) -> None:
    process_id = host(ctx, tiny, num_cycles=1, max_diffs=1)
    worker_id, key = join(ctx)
    send_report(ctx, worker_id, key, constant_diff(tiny, 0.1))
    assert on_report(ctx, process_id)

    answer = ask(ctx, login(ctx))

    assert answer == {"status": "rejected", "reason": "fl_completed"}
    assert ctx.repo.get_process(process_id).status is ProcessStatus.COMPLETED
    assert ctx.repo.get_cycle(process_id, 2) is None


# -- report and closing -------------------------------------------------------


def test_the_cycle_closes_at_max_diffs_with_the_sample_weighted_average(ctx, tiny) -> None:
    process_id = host(ctx, tiny, max_diffs=2, max_workers=3)
    (w1, k1), (w2, k2) = join(ctx), join(ctx)
    d1, d2 = constant_diff(tiny, 0.1), constant_diff(tiny, -0.3)

    send_report(ctx, w1, k1, d1, num_samples=30)
    assert not on_report(ctx, process_id)  # one diff of two: stays open
    send_report(ctx, w2, k2, d2, num_samples=10)
    closed = on_report(ctx, process_id)

    assert closed
    before, after = checkpoint(ctx, process_id, 1), checkpoint(ctx, process_id, 2)
    for name, old in before.items():
        expected = old.astype(np.float64) - (30 * d1[name] + 10 * d2[name]) / 40
        np.testing.assert_allclose(after[name], expected, rtol=1e-6, atol=1e-7)
        assert after[name].dtype == old.dtype
    record = ctx.repo.get_cycle(process_id, 1)
    assert record.status is CycleStatus.COMPLETED
    assert (record.summary.num_diffs, record.summary.total_samples) == (2, 40)
    assert record.aggregation_runs == 1
    process = ctx.repo.get_process(process_id)
    assert (process.current_cycle, process.latest_checkpoint) == (2, 2)
    assert ctx.repo.get_cycle(process_id, 2).status is CycleStatus.OPEN
    assert ctx.repo.get_worker(w1).last_cycle == 1


def test_a_late_report_after_the_close_is_409_and_changes_nothing(ctx, tiny) -> None:
    process_id = host(ctx, tiny, max_diffs=2, max_workers=3)
    (w1, k1), (w2, k2), (late, late_key) = join(ctx), join(ctx), join(ctx)
    send_report(ctx, w1, k1, constant_diff(tiny, 0.1))
    send_report(ctx, w2, k2, constant_diff(tiny, 0.2))
    assert on_report(ctx, process_id)
    objects = dict(ctx.blobs.objects)

    with pytest.raises(Conflict) as refused:
        send_report(ctx, late, late_key, constant_diff(tiny, 5.0))

    assert (status_of(refused.value), refused.value.code) == (409, "cycle_closed")
    assert ctx.blobs.objects == objects
    assert ctx.repo.get_cycle(process_id, 1).summary.num_diffs == 2
    assert not ctx.repo.get_assignment(process_id, 1, late).reported
    assert not on_report(ctx, process_id)


def test_a_second_report_from_the_same_worker_is_409(ctx, tiny) -> None:
    process_id = host(ctx, tiny, max_diffs=2)
    worker_id, key = join(ctx)
    send_report(ctx, worker_id, key, constant_diff(tiny, 0.1), num_samples=3)

    with pytest.raises(Conflict) as refused:
        send_report(ctx, worker_id, key, constant_diff(tiny, 0.9), num_samples=7)

    assert refused.value.code == "already_reported"
    assert ctx.repo.get_assignment(process_id, 1, worker_id).num_samples == 3


def test_closing_the_same_cycle_twice_aggregates_once(ctx, tiny) -> None:
    process_id = host(ctx, tiny, max_diffs=2)
    worker_id, key = join(ctx)
    send_report(ctx, worker_id, key, constant_diff(tiny, 0.1))
    assert begin_closing(ctx, process_id, 1)

    first, second = cycles.close_cycle(ctx, process_id, 1), cycles.close_cycle(ctx, process_id, 1)

    assert (first, second) == (True, False)
    assert ctx.repo.get_cycle(process_id, 1).aggregation_runs == 1
    assert len(checkpoint_writes(ctx, process_id, 2)) == 1
    assert ctx.repo.get_cycle(process_id, 3) is None
    assert ctx.repo.get_process(process_id).current_cycle == 2


def test_while_an_aggregator_holds_the_lease_nobody_else_closes(ctx, tiny) -> None:
    process_id = host(ctx, tiny, max_diffs=2)
    worker_id, key = join(ctx)
    send_report(ctx, worker_id, key, constant_diff(tiny, 0.1))
    now = ctx.clock.now()
    assert begin_closing(ctx, process_id, 1)
    assert ctx.repo.update_cycle(process_id, 1, lambda c: c.take_lease(now, now + LEASE, "other"))

    ctx.clock.advance(LEASE.total_seconds() - 1)
    assert not cycles.close_cycle(ctx, process_id, 1)
    assert checkpoint_writes(ctx, process_id, 2) == []

    ctx.clock.advance(1)
    assert cycles.close_cycle(ctx, process_id, 1)
    assert ctx.repo.get_cycle(process_id, 1).aggregation_runs == 2


def test_concurrent_closers_aggregate_once(ctx, tiny) -> None:
    process_id = host(ctx, tiny, max_diffs=2)
    worker_id, key = join(ctx)
    send_report(ctx, worker_id, key, constant_diff(tiny, 0.1))
    assert begin_closing(ctx, process_id, 1)
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(cycles.close_cycle(ctx, process_id, 1)))
        for _ in range(8)
    ]

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == [False] * 7 + [True]
    assert ctx.repo.get_cycle(process_id, 1).aggregation_runs == 1


# -- tick ---------------------------------------------------------------------


def test_the_tick_does_nothing_before_the_deadline(ctx, tiny) -> None:
    process_id = host(ctx, tiny, max_diffs=3)
    worker_id, key = join(ctx)
    send_report(ctx, worker_id, key, constant_diff(tiny, 0.1))
    ctx.clock.advance(59)

    report = tick(ctx)

    assert (report.closed, report.reset, report.failed) == ([], [], [])
    assert ctx.repo.get_cycle(process_id, 1).status is CycleStatus.OPEN


def test_the_tick_closes_an_expired_cycle_with_enough_diffs(ctx, tiny) -> None:
    process_id = host(ctx, tiny, min_diffs=1, max_diffs=3)
    (w1, k1), _ = join(ctx), join(ctx)
    send_report(ctx, w1, k1, constant_diff(tiny, 0.1), num_samples=4)
    ctx.clock.advance(60)

    report = tick(ctx)

    assert report.closed == ["mnist:1.0#1"]
    record = ctx.repo.get_cycle(process_id, 1)
    assert record.status is CycleStatus.COMPLETED
    assert (record.summary.num_diffs, record.summary.total_samples) == (1, 4)
    next_cycle = ctx.repo.get_cycle(process_id, 2)
    assert next_cycle.deadline == ctx.clock.now() + timedelta(seconds=60)


def test_the_tick_resets_an_expired_cycle_with_too_few_diffs(ctx, tiny) -> None:
    process_id = host(ctx, tiny, min_diffs=2, max_diffs=2, max_workers=2)
    (kept, kept_key), (idle, idle_key) = join(ctx), join(ctx)
    send_report(ctx, kept, kept_key, constant_diff(tiny, 0.1))
    newcomer = login(ctx)
    assert ask(ctx, newcomer)["reason"] == "cycle_full"
    ctx.clock.advance(61)

    report = tick(ctx)

    assert report.reset == ["mnist:1.0#1"]
    cycle = ctx.repo.get_cycle(process_id, 1)
    assert (cycle.status, cycle.epoch) == (CycleStatus.OPEN, 1)
    assert cycle.deadline == ctx.clock.now() + timedelta(seconds=60)
    assert ctx.repo.get_assignment(process_id, 1, idle) is None
    assert ctx.repo.get_assignment(process_id, 1, kept).reported  # the diff is kept
    assert ctx.repo.count_reported(process_id, 1) == 1
    with pytest.raises(Conflict) as dropped:
        send_report(ctx, idle, idle_key, constant_diff(tiny, 0.1))
    assert dropped.value.code == "assignment_dropped"
    # The dropped place is free again; the kept diff counts towards closing.
    answer = ask(ctx, newcomer)
    assert answer["status"] == "accepted"
    assert answer["request_key"].startswith("1.1.")
    send_report(ctx, newcomer, answer["request_key"], constant_diff(tiny, 0.3))
    assert on_report(ctx, process_id)
    assert ctx.repo.get_cycle(process_id, 1).summary.num_diffs == 2


def test_on_expiry_extend_keeps_the_assignments(ctx, tiny) -> None:
    process_id = host(ctx, tiny, min_diffs=1, max_diffs=2, on_expiry="extend")
    worker_id, key = join(ctx)
    ctx.clock.advance(61)

    report = tick(ctx)

    assert (report.extended, report.reset) == (["mnist:1.0#1"], [])
    assert ctx.repo.get_cycle(process_id, 1).epoch == 0
    assert send_report(ctx, worker_id, key, constant_diff(tiny, 0.1)) == {"status": "success"}


def test_the_tick_redrives_a_closing_cycle_once_its_lease_expired(ctx, tiny) -> None:
    process_id = host(ctx, tiny, max_diffs=2)
    worker_id, key = join(ctx)
    send_report(ctx, worker_id, key, constant_diff(tiny, 0.1))
    # An aggregator took the lease and died.
    now = ctx.clock.now()
    assert begin_closing(ctx, process_id, 1)
    assert ctx.repo.update_cycle(process_id, 1, lambda c: c.take_lease(now, now + LEASE, "dead"))

    ctx.clock.advance(LEASE.total_seconds() - 1)
    assert tick(ctx).redriven == []
    assert ctx.repo.get_cycle(process_id, 1).status is CycleStatus.CLOSING
    ctx.clock.advance(1)
    report = tick(ctx)

    assert report.redriven == ["mnist:1.0#1"]
    record = ctx.repo.get_cycle(process_id, 1)
    assert record.status is CycleStatus.COMPLETED
    assert record.aggregation_runs == 2
    assert ctx.repo.get_process(process_id).current_cycle == 2


def test_one_broken_process_does_not_stop_the_tick_for_the_others(ctx, tiny) -> None:
    good = host(ctx, tiny, min_diffs=1, max_diffs=3)
    worker_id, key = join(ctx)
    send_report(ctx, worker_id, key, constant_diff(tiny, 0.1))
    broken = call(
        hosting.host_training,
        ctx,
        host_body(tiny) | {"client_config": {"name": "broken", "version": "1"}},
    )["process_id"]
    ctx.blobs.delete(blobs.checkpoint_object(broken, 1))
    begin_closing(ctx, broken, 1)
    ctx.clock.advance(61)

    report = tick(ctx)

    assert report.failed == ["broken:1#1"]
    assert report.closed == ["mnist:1.0#1"]
    assert ctx.repo.get_cycle(good, 1).status is CycleStatus.COMPLETED
