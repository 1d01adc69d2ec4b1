"""The worker pool (registration, availability, invitations, lifecycle pushes) on fakes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from firegrid.domain.errors import BadRequest, Unauthorized
from firegrid.services import devices, hosting, operator, pool
from firegrid.services.context import Context
from firegrid.tensors import encode_state
from tests.common import State, b64
from tests.edge import call
from tests.unit.test_services import on_report, tick


def host(ctx: Context, tiny: tuple[State, bytes], **server: Any) -> str:
    state, plan = tiny
    body = {
        "model": b64(encode_state(state)),
        "plans": {"training_plan": b64(plan)},
        "client_config": {"name": "mnist", "version": "1.0"},
        "server_config": {"cycle_length": 60, "num_cycles": 3, "max_diffs": 1} | server,
    }
    return str(call(hosting.host_training, ctx, body)["process_id"])


def registered(ctx: Context, count: int, **profile: Any) -> list[str]:
    """``count`` new workers, each with token ``tok-<worker_id>``."""
    workers = []
    for _ in range(count):
        worker_id = call(devices.authenticate, ctx, {"model_name": "mnist"})["worker_id"]
        call(
            pool.register_token,
            ctx,
            {"worker_id": worker_id, "fcm_token": f"tok-{worker_id}"} | profile,
        )
        workers.append(worker_id)
    return workers


def tokens(messages: list[Any]) -> list[str]:
    return [m.token for m in messages]


def report_for(ctx: Context, tiny: tuple[State, bytes], worker_id: str) -> None:
    answer = call(devices.request_cycle, ctx, {"worker_id": worker_id, "model": "mnist"})
    assert answer["status"] == "accepted", answer
    diff = {k: np.full_like(v, 0.1) for k, v in tiny[0].items()}
    body = {
        "worker_id": worker_id,
        "request_key": answer["request_key"],
        "diff": b64(encode_state(diff)),
        "num_samples": 5,
    }
    call(devices.report, ctx, body)


# -- registration and availability --------------------------------------------


def test_register_token_puts_the_worker_in_the_pool(ctx, tiny) -> None:
    host(ctx, tiny, availability_ttl=300)
    worker_id = call(devices.authenticate, ctx, {"model_name": "mnist"})["worker_id"]

    profile = {"model": "mnist", "ram_gb": 1.5, "cpu_cores": 4}
    answer = call(
        pool.register_token, ctx, {"worker_id": worker_id, "fcm_device_token": "t1"} | profile
    )

    assert answer == {"status": "success"}
    worker = ctx.repo.get_worker(worker_id)
    assert (worker.fcm_token, worker.available, worker.slow) == ("t1", True, True)
    assert (worker.ram_gb, worker.cpu_cores) == (1.5, 4)
    assert worker.available_until == ctx.clock.now() + timedelta(seconds=300)
    assert worker.in_pool(ctx.clock.now())


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"worker_id": "nobody", "fcm_token": "t"}, Unauthorized),
        ({"worker_id": "0" * 32, "fcm_token": "t"}, Unauthorized),
        ({"worker_id": "{worker}", "fcm_token": "a b"}, BadRequest),
        ({"worker_id": "{worker}", "fcm_token": "t" * 1025}, BadRequest),
        ({"worker_id": "{worker}", "fcm_token": "t", "cpu_cores": 10**400}, BadRequest),
        ({"worker_id": "{worker}", "fcm_token": "t", "cpu_cores": 2.5}, BadRequest),
        ({"fcm_token": "t"}, BadRequest),
        ({"worker_id": "{worker}"}, BadRequest),
        ({"worker_id": "{worker}", "fcm_token": "t", "model": "cifar"}, BadRequest),
        ({"worker_id": "{worker}", "fcm_token": "t", "ram_gb": -1}, BadRequest),
    ],
)
def test_register_token_refuses_bad_requests(ctx, tiny, body, error) -> None:
    host(ctx, tiny)
    worker_id = call(devices.authenticate, ctx, {"model_name": "mnist"})["worker_id"]
    body = {k: worker_id if v == "{worker}" else v for k, v in body.items()}

    with pytest.raises(error):
        call(pool.register_token, ctx, body)

    assert ctx.repo.get_worker(worker_id).fcm_token is None


def test_a_token_registered_by_another_worker_leaves_the_first(ctx, tiny) -> None:
    host(ctx, tiny)
    old, new = (call(devices.authenticate, ctx, {"model_name": "mnist"})["worker_id"] for _ in "ab")
    call(pool.register_token, ctx, {"worker_id": old, "fcm_token": "same-device"})

    call(pool.register_token, ctx, {"worker_id": new, "fcm_token": "same-device"})

    assert ctx.repo.get_worker(old).fcm_token is None
    assert not ctx.repo.get_worker(old).available
    assert ctx.repo.get_worker(new).fcm_token == "same-device"


def test_worker_status_confirms_and_withdraws_availability(ctx, tiny) -> None:
    host(ctx, tiny, availability_ttl=100)
    (worker_id,) = registered(ctx, 1)
    ctx.clock.advance(90)

    call(pool.worker_status, ctx, {"worker_id": worker_id, "available": True})
    ctx.clock.advance(90)
    assert ctx.repo.get_worker(worker_id).in_pool(ctx.clock.now())

    call(pool.worker_status, ctx, {"worker_id": worker_id, "available": False})
    worker = ctx.repo.get_worker(worker_id)
    assert (worker.available, worker.available_until) == (False, None)
    with pytest.raises(BadRequest):
        call(pool.worker_status, ctx, {"worker_id": worker_id, "available": "yes"})


# -- invitations --------------------------------------------------------------


def test_nobody_is_invited_below_min_workers(ctx, tiny) -> None:
    process_id = host(ctx, tiny, min_workers=3, max_workers=4)
    registered(ctx, 2)

    assert pool.invite(ctx, process_id) == []
    assert ctx.notifier.sent == []

    registered(ctx, 1)
    invited = pool.invite(ctx, process_id)

    assert len(invited) == 3  # ceil(4 * 1.3) wanted, the whole pool of 3 available
    assert sorted(tokens(ctx.notifier.sent)) == sorted(f"tok-{w}" for w in invited)


def test_an_invitation_round_samples_goal_count_times_over_selection(ctx, tiny) -> None:
    process_id = host(ctx, tiny, max_workers=5, goal_count=2, over_selection=1.5)
    workers = registered(ctx, 10)

    invited = pool.invite(ctx, process_id)

    assert len(invited) == 3
    assert set(invited) <= set(workers)
    cycle = ctx.repo.get_cycle(process_id, 1)
    assert ctx.repo.invitations(process_id, 1) == {w: 0 for w in invited}
    for message in ctx.notifier.sent:
        assert dict(message.data) == {
            "type": "request_for_cycle",
            "model": "mnist",
            "version": "1.0",
            "cycle_id": "1",
            "cycle_start_request_key": cycle.start_key,
        }
    last_invited = ctx.repo.last_invited(process_id)
    assert all(last_invited[w] == ctx.clock.now() for w in invited)


def test_without_goal_count_or_max_workers_the_whole_pool_is_invited(ctx, tiny) -> None:
    process_id = host(ctx, tiny)
    workers = registered(ctx, 6)

    assert sorted(pool.invite(ctx, process_id)) == sorted(workers)


@pytest.mark.parametrize(("mode", "topped_up"), [(0, 0), (1, 1)])
def test_mode_0_invites_once_per_cycle_and_mode_1_tops_up(ctx, tiny, mode, topped_up) -> None:
    process_id = host(ctx, tiny, max_workers=4, over_selection=1.0, worker_participation_mode=mode)
    first = registered(ctx, 3)
    assert sorted(pool.invite(ctx, process_id)) == sorted(first)
    ctx.clock.advance(1)

    late = registered(ctx, 1)
    again = pool.invite(ctx, process_id)

    assert len(again) == topped_up
    assert set(again) <= set(late)
    assert len(ctx.notifier.of_type("request_for_cycle")) == 3 + topped_up


def test_rounds_at_the_same_instant_each_send_their_invitations(ctx, tiny) -> None:
    """Invited workers always get their push, even when two rounds share a timestamp."""
    process_id = host(ctx, tiny, max_workers=4, over_selection=1.0, worker_participation_mode=1)
    first = registered(ctx, 2)
    assert sorted(pool.invite(ctx, process_id)) == sorted(first)
    late = registered(ctx, 2)  # the clock does not move
    assert sorted(pool.invite(ctx, process_id)) == sorted(late)
    sent = sorted(tokens(ctx.notifier.of_type("request_for_cycle")))
    assert sent == sorted(f"tok-{w}" for w in first + late)


def test_a_worker_is_never_invited_twice_into_a_cycle(ctx, tiny) -> None:
    process_id = host(ctx, tiny, max_workers=10, worker_participation_mode=1)
    registered(ctx, 4)
    rounds = []
    for _ in range(4):
        rounds.append(pool.invite(ctx, process_id))
        ctx.clock.advance(1)
        registered(ctx, 2)

    everyone = [w for invited in rounds for w in invited]
    assert len(everyone) == len(set(everyone)) == 10
    assert len(tokens(ctx.notifier.sent)) == len(set(tokens(ctx.notifier.sent))) == 10
    assert ctx.repo.record_invitations(process_id, 1, 0, everyone, ctx.clock.now()) == []


def test_a_round_held_by_another_instance_invites_nobody_until_its_lock_lapses(ctx, tiny) -> None:
    process_id = host(ctx, tiny)
    registered(ctx, 2)
    now = ctx.clock.now()
    assert ctx.repo.try_lock(process_id, 1, pool.INVITE_LOCK, now, now + pool.INVITE_LOCK_TTL)

    assert pool.invite(ctx, process_id) == []
    ctx.clock.advance(pool.INVITE_LOCK_TTL.total_seconds())
    assert len(pool.invite(ctx, process_id)) == 2


def test_availability_lapses_with_the_clock(ctx, tiny) -> None:
    process_id = host(ctx, tiny, availability_ttl=100)
    first, _ = registered(ctx, 2)
    ctx.clock.advance(100)

    assert pool.invite(ctx, process_id) == []

    call(pool.worker_status, ctx, {"worker_id": first, "available": True})
    assert pool.invite(ctx, process_id) == [first]


def test_tokens_fcm_reports_unregistered_leave_the_pool(ctx, tiny) -> None:
    process_id = host(ctx, tiny)
    gone, kept = registered(ctx, 2)
    ctx.notifier.unregistered.add(f"tok-{gone}")

    pool.invite(ctx, process_id)

    assert tokens(ctx.notifier.sent) == [f"tok-{kept}"]
    assert ctx.repo.get_worker(gone).fcm_token is None
    assert not ctx.repo.get_worker(gone).in_pool(ctx.clock.now())
    assert ctx.repo.get_worker(kept).fcm_token == f"tok-{kept}"
    (send,) = ctx.repo.recent_pushes(process_id)
    assert (send["recipients"], send["sent"], send["unregistered"]) == (2, 1, 1)
    assert call(operator.status, ctx, {"name": "mnist"})["pool"]["registered"] == 1


# -- lifecycle pushes ---------------------------------------------------------


def test_a_completed_cycle_pushes_completion_availability_then_invitations_once(ctx, tiny) -> None:
    process_id = host(ctx, tiny, max_workers=2, max_diffs=1)
    workers = registered(ctx, 4)
    first_round = pool.invite(ctx, process_id)
    report_for(ctx, tiny, first_round[0])
    ctx.clock.advance(1)
    ctx.notifier.sent.clear()

    assert on_report(ctx, process_id)  # closes cycle 1 and pushes
    pool.after_cycle_completed(ctx, process_id, 1)  # a redelivered trigger

    assert ctx.notifier.types() == ["cycle_completed", "worker_online_status", "request_for_cycle"]
    next_cycle = ctx.repo.get_cycle(process_id, 2)
    all_tokens = sorted(f"tok-{w}" for w in workers)
    completed = ctx.notifier.of_type("cycle_completed")
    assert sorted(tokens(completed)) == all_tokens
    assert {(m.data["cycle_id"], m.data["cycle_start_request_key"]) for m in completed} == {
        ("2", "")
    }
    assert sorted(tokens(ctx.notifier.of_type("worker_online_status"))) == all_tokens
    invitations = ctx.notifier.of_type("request_for_cycle")
    assert len(invitations) == 3  # ceil(2 * 1.3) into cycle 2, once
    assert {m.data["cycle_start_request_key"] for m in invitations} == {next_cycle.start_key}


def test_a_worker_kept_out_by_do_not_reuse_gets_no_cycle_completed(ctx, tiny) -> None:
    process_id = host(ctx, tiny, max_diffs=1, do_not_reuse_workers_until_cycle=2)
    trained, other = registered(ctx, 2)
    report_for(ctx, tiny, trained)
    ctx.notifier.sent.clear()

    assert on_report(ctx, process_id)

    assert tokens(ctx.notifier.of_type("cycle_completed")) == [f"tok-{other}"]
    assert tokens(ctx.notifier.of_type("request_for_cycle")) == [f"tok-{other}"]
    assert sorted(tokens(ctx.notifier.of_type("worker_online_status"))) == sorted(
        [f"tok-{trained}", f"tok-{other}"]
    )


def test_the_last_cycle_pushes_fl_completed_to_every_registered_worker_once(ctx, tiny) -> None:
    process_id = host(ctx, tiny, num_cycles=1, max_diffs=1)
    workers = registered(ctx, 3)
    report_for(ctx, tiny, workers[0])
    ctx.clock.advance(10_000)  # availability lapsed: fl_completed still reaches everyone

    assert on_report(ctx, process_id)
    pool.after_cycle_completed(ctx, process_id, 1)

    assert ctx.notifier.types() == ["fl_completed"]
    assert sorted(tokens(ctx.notifier.sent)) == sorted(f"tok-{w}" for w in workers)
    assert {m.data["cycle_id"] for m in ctx.notifier.sent} == {""}


def test_a_reset_tells_the_dropped_and_the_pool_then_invites_again(ctx, tiny) -> None:
    process_id = host(ctx, tiny, max_workers=1, max_diffs=1, availability_ttl=10_000)
    idle, waiting = registered(ctx, 2)
    answer = call(devices.request_cycle, ctx, {"worker_id": idle, "model": "mnist"})
    assert answer["status"] == "accepted"
    call(pool.worker_status, ctx, {"worker_id": idle, "available": False})
    ctx.clock.advance(61)

    report = tick(ctx)

    assert report.reset == ["mnist:1.0#1"]
    assert ctx.notifier.types() == ["cycle_reset", "worker_online_status", "request_for_cycle"]
    assert sorted(tokens(ctx.notifier.of_type("cycle_reset"))) == sorted(
        [f"tok-{idle}", f"tok-{waiting}"]
    )
    assert {m.data["cycle_id"] for m in ctx.notifier.of_type("cycle_reset")} == {"1"}
    assert tokens(ctx.notifier.of_type("request_for_cycle")) == [f"tok-{waiting}"]
    assert ctx.repo.invitations(process_id, 1) == {waiting: 1}
