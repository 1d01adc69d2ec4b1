"""Asynchronous mode (FedBuff): the pure rules, then the use cases on in-memory fakes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from firegrid.domain import buffered
from firegrid.domain.aggregation import Step
from firegrid.domain.config import ServerConfig
from firegrid.domain.cycle import CycleStatus, ProcessStatus
from firegrid.domain.errors import BadRequest, Conflict
from firegrid.domain.selection import RoundState, invitations_wanted
from firegrid.services import cycles, devices
from firegrid.services.context import Context
from tests.common import published
from tests.edge import call
from tests.unit.test_services import checkpoint, constant_diff, host, login, send_report

ASYNC = {"mode": "async", "buffer_size": 2, "max_concurrency": 3, "num_cycles": 5}
"""Buffers of 2 reports, 3 devices training at once, 5 checkpoints aggregated."""


def config(**server: Any) -> ServerConfig:
    return ServerConfig.parse({"cycle_length": 60, "num_cycles": 3} | ASYNC | server)


# -- the rules ----------------------------------------------------------------


def test_staleness_counts_the_checkpoints_published_since_training_began() -> None:
    assert buffered.staleness(latest_checkpoint=5, trained_from=5) == 0
    assert buffered.staleness(latest_checkpoint=7, trained_from=4) == 3


@pytest.mark.parametrize(
    ("stale", "exponent", "weight"), [(0, 0.5, 1.0), (3, 0.5, 0.5), (1, 2, 0.25), (9, 0, 1.0)]
)
def test_damping_is_one_over_one_plus_staleness_to_the_exponent(stale, exponent, weight) -> None:
    assert buffered.damping(stale, exponent) == pytest.approx(weight)


def test_a_report_staler_than_max_staleness_is_refused_naming_both() -> None:
    buffered.check_staleness(2, config(max_staleness=2))
    buffered.check_staleness(50, config())  # no limit
    with pytest.raises(Conflict) as refused:
        buffered.check_staleness(3, config(max_staleness=2))
    assert refused.value.code == "too_stale"
    assert "3 checkpoints old" in refused.value.message
    assert "max_staleness is 2" in refused.value.message


def test_the_step_is_damped_but_divided_by_the_undamped_total() -> None:
    """``sum(n_k w_k d_k) / sum(n_k)``: a rule divided by ``sum(n_k w_k)``, rescaled."""
    counts, stale = [10.0, 30.0], [0, 3]
    damped = buffered.damped_weights(counts, stale, 0.5)
    assert damped == pytest.approx([10.0, 15.0])
    diffs = [np.array([1.0, 2.0]), np.array([-3.0, 4.0])]
    rule = sum(w * d for w, d in zip(damped, diffs, strict=True)) / sum(damped)
    step = Step(delta={"w": rule.copy()}, num_diffs=2, total_weight=sum(damped))
    buffered.undamp(step, sum(counts))
    expected = (10 * diffs[0] + 30 * 0.5 * diffs[1]) / 40
    np.testing.assert_allclose(step.delta["w"], expected, rtol=1e-12)


def test_a_buffer_is_full_at_buffer_size() -> None:
    assert not buffered.is_full(1, config())
    assert buffered.is_full(2, config())
    assert buffered.is_full(3, config())


@pytest.mark.parametrize(
    ("server", "names"),
    [
        ({"max_workers": 3}, "max_workers"),
        ({"max_diffs": 2}, "max_diffs"),
        ({"dp": {"clip_norm": 1, "noise_multiplier": 1, "delta": 1e-5}}, "dp"),
        ({"aggregation": "median"}, "fedavg"),
        ({"buffer_size": None}, "buffer_size"),
        ({"max_concurrency": None}, "max_concurrency"),
        ({"cycle_length": None}, "cycle_length"),
        ({"staleness_exponent": -1}, "staleness_exponent"),
        ({"max_staleness": -1}, "max_staleness"),
        ({"mode": "sync", "max_diffs": 2}, "buffer_size"),
        ({"mode": "later"}, "mode"),
    ],
)
def test_unsupported_async_configurations_are_refused_naming_the_key(server, names) -> None:
    raw = {"cycle_length": 60, "num_cycles": 3} | ASYNC | server
    with pytest.raises(BadRequest) as refused:
        ServerConfig.parse({k: v for k, v in raw.items() if v is not None})
    assert names in refused.value.message
    assert refused.value.code == "invalid_config"


def test_sync_configurations_parse_as_before() -> None:
    parsed = ServerConfig.parse({"cycle_length": 60, "num_cycles": 3, "max_diffs": 2})
    assert parsed.mode == "sync" and not parsed.is_async
    assert parsed.invitation_goal is None


# -- the use cases on fakes ---------------------------------------------------


def ask(ctx: Context, worker_id: str) -> dict[str, Any]:
    return call(devices.request_cycle, ctx, {"worker_id": worker_id, "model": "mnist"})


def join(ctx: Context) -> tuple[str, dict[str, Any]]:
    worker_id = login(ctx)
    answer = ask(ctx, worker_id)
    assert answer["status"] == "accepted", answer
    return worker_id, answer


def deliver(ctx: Context, process_id: str) -> None:
    """What the triggers do after reports: close each full buffer, aggregate in order."""
    process = ctx.repo.get_process(process_id)
    for seq in range(1, process.current_cycle + 1):
        cycles.on_report(ctx, process_id, seq)
    for seq in range(1, ctx.repo.get_process(process_id).current_cycle + 1):
        cycles.close_cycle(ctx, process_id, seq)


def model_of(ctx: Context, worker_id: str, key: str, process_id: str) -> bytes:
    body = {"worker_id": worker_id, "request_key": key, "model_id": process_id}
    return call(devices.get_model, ctx, body)


def test_hosting_async_opens_the_lobby_and_buffer_one_without_a_deadline(ctx, tiny) -> None:
    process_id = host(ctx, tiny, **ASYNC, max_diffs=None)
    lobby = ctx.repo.get_cycle(process_id, buffered.LOBBY)
    first = ctx.repo.get_cycle(process_id, 1)
    assert lobby.status is CycleStatus.OPEN and first.status is CycleStatus.OPEN
    assert first.deadline is None


def test_the_accepted_reply_names_the_checkpoint_and_the_place_deadline(ctx, tiny) -> None:
    process_id = host(ctx, tiny, **ASYNC, max_diffs=None)
    _, answer = join(ctx)
    assert answer["checkpoint"] == 1 and answer["mode"] == "async" and answer["cycle_id"] == 1
    assert answer["deadline"] == (ctx.clock.now() + timedelta(seconds=60)).isoformat()
    assert ctx.repo.count_assigned(process_id, buffered.LOBBY) == 1


def test_places_are_capped_for_the_whole_process(ctx, tiny) -> None:
    host(ctx, tiny, **ASYNC, max_diffs=None)
    for _ in range(3):
        join(ctx)
    refused = ask(ctx, login(ctx))
    assert refused == {"status": "rejected", "reason": "concurrency_full", "timeout": 60}


def test_reports_fill_buffers_and_each_checkpoint_is_the_damped_average(ctx, tiny) -> None:
    """Three devices train from checkpoint 1; two reports make checkpoint 2; the third,
    one checkpoint stale, goes into buffer 2 with a fresh one and is damped."""
    process_id = host(ctx, tiny, **ASYNC, max_diffs=None)
    joined = [join(ctx) for _ in range(3)]
    (a, ka), (b, kb), (c, kc) = [(w, answer["request_key"]) for w, answer in joined]
    send_report(ctx, a, ka, constant_diff(tiny, 1.0), num_samples=1)
    send_report(ctx, b, kb, constant_diff(tiny, 3.0), num_samples=3)
    deliver(ctx, process_id)
    one, two = checkpoint(ctx, process_id, 1), checkpoint(ctx, process_id, 2)
    for name in one:
        np.testing.assert_allclose(two[name], one[name] - (1 * 1.0 + 3 * 3.0) / 4, rtol=1e-6)

    d, answer = join(ctx)
    assert answer["checkpoint"] == 2
    send_report(ctx, c, kc, constant_diff(tiny, 2.0), num_samples=2)  # trained from 1
    send_report(ctx, d, answer["request_key"], constant_diff(tiny, -1.0), num_samples=2)
    deliver(ctx, process_id)
    entries = {e.worker_id: e.staleness for e in ctx.repo.reported_assignments(process_id, 2)}
    assert entries == {c: 1, d: 0}
    three = checkpoint(ctx, process_id, 3)
    expected = (2 * 2.0 * 2**-0.5 + 2 * -1.0) / 4
    for name in one:
        np.testing.assert_allclose(three[name], two[name] - expected, rtol=1e-6)
    assert ctx.repo.get_cycle(process_id, 2).summary.mean_staleness == 0.5


def test_get_model_serves_the_checkpoint_the_place_trains_from(ctx, tiny) -> None:
    process_id = host(ctx, tiny, **ASYNC, max_diffs=None)
    (a, first), (b, second), (late, third) = [join(ctx) for _ in range(3)]
    send_report(ctx, a, first["request_key"], constant_diff(tiny, 1.0))
    send_report(ctx, b, second["request_key"], constant_diff(tiny, 1.0))
    deliver(ctx, process_id)
    assert ctx.repo.get_process(process_id).latest_checkpoint == 2
    served = model_of(ctx, late, third["request_key"], process_id)
    assert served == ctx.blobs.get(published(ctx, process_id, 1))


def test_a_report_too_stale_is_409_and_frees_its_place(ctx, tiny) -> None:
    process_id = host(ctx, tiny, **ASYNC, max_diffs=None, max_staleness=0)
    (a, first), (b, second), (late, third) = [join(ctx) for _ in range(3)]
    for worker, answer in ((a, first), (b, second)):
        send_report(ctx, worker, answer["request_key"], constant_diff(tiny, 1.0))
    deliver(ctx, process_id)
    with pytest.raises(Conflict) as refused:
        send_report(ctx, late, third["request_key"], constant_diff(tiny, 1.0))
    assert refused.value.code == "too_stale"
    assert ctx.repo.count_assigned(process_id, buffered.LOBBY) == 0
    assert ask(ctx, late)["checkpoint"] == 2  # it may ask again


def test_a_report_racing_a_full_buffer_lands_in_the_next(ctx, tiny) -> None:
    """The buffer is marked full (and the next opened) between the report's read of the
    process and its transaction: it is counted once, in buffer 2."""
    process_id = host(ctx, tiny, **ASYNC, max_diffs=None)
    (a, first), (b, second), (c, third) = [join(ctx) for _ in range(3)]
    send_report(ctx, a, first["request_key"], constant_diff(tiny, 1.0))
    send_report(ctx, b, second["request_key"], constant_diff(tiny, 1.0))
    stale_view = ctx.repo.get_process(process_id)
    cycles.on_report(ctx, process_id, 1)  # buffer 1 full: closing, buffer 2 open
    real_get = ctx.repo.get_process
    views = iter([stale_view])
    ctx.repo.get_process = lambda pid: next(views, None) or real_get(pid)  # type: ignore[method-assign]
    send_report(ctx, c, third["request_key"], constant_diff(tiny, 1.0))
    ctx.repo.get_process = real_get  # type: ignore[method-assign]
    assert [e.worker_id for e in ctx.repo.reported_assignments(process_id, 2)] == [c]
    assert ctx.repo.count_reported(process_id, 1) == 2
    assert ctx.repo.get_cycle(process_id, 1).status is CycleStatus.CLOSING


def test_a_device_reports_once_per_buffer_and_twins_count_once(ctx, tiny) -> None:
    process_id = host(ctx, tiny, **ASYNC, max_diffs=None)
    a, answer = join(ctx)
    send_report(ctx, a, answer["request_key"], constant_diff(tiny, 1.0))
    with pytest.raises(Conflict) as twin:
        send_report(ctx, a, answer["request_key"], constant_diff(tiny, 1.0))
    assert twin.value.code == "assignment_dropped"
    assert ask(ctx, a) == {"status": "rejected", "reason": "already_reported", "timeout": 60}
    assert ctx.repo.count_reported(process_id, 1) == 1


def test_the_tick_frees_abandoned_places_and_their_late_report_is_409(ctx, tiny) -> None:
    process_id = host(ctx, tiny, **ASYNC, max_diffs=None)
    (a, first), _, _ = [join(ctx) for _ in range(3)]
    ctx.clock.advance(61)
    report = cycles.tick(ctx)
    assert report.freed == ["mnist:1.0#1"]
    assert ctx.repo.count_assigned(process_id, buffered.LOBBY) == 0
    with pytest.raises(Conflict) as late:
        send_report(ctx, a, first["request_key"], constant_diff(tiny, 1.0))
    assert late.value.code == "assignment_dropped"


def test_training_completes_after_num_cycles_checkpoints(ctx, tiny) -> None:
    process_id = host(ctx, tiny, **(ASYNC | {"num_cycles": 2}), max_diffs=None)
    for _ in range(2):
        (a, first), (b, second) = join(ctx), join(ctx)
        send_report(ctx, a, first["request_key"], constant_diff(tiny, 0.5))
        send_report(ctx, b, second["request_key"], constant_diff(tiny, 0.5))
        deliver(ctx, process_id)
    process = ctx.repo.get_process(process_id)
    assert process.status is ProcessStatus.COMPLETED and process.latest_checkpoint == 3
    assert ask(ctx, login(ctx)) == {"status": "rejected", "reason": "fl_completed"}


def test_a_buffer_full_before_its_checkpoint_waits_then_follows(ctx, tiny) -> None:
    """Buffer 2 fills while buffer 1 is still closing: its closing waits for checkpoint
    2, and the closing of buffer 1 aggregates it next."""
    process_id = host(ctx, tiny, **(ASYNC | {"max_concurrency": 4}), max_diffs=None)
    joined = [join(ctx) for _ in range(4)]
    for worker, answer in joined[:2]:
        send_report(ctx, worker, answer["request_key"], constant_diff(tiny, 1.0))
    cycles.on_report(ctx, process_id, 1)
    for worker, answer in joined[2:]:
        send_report(ctx, worker, answer["request_key"], constant_diff(tiny, 1.0))
    cycles.on_report(ctx, process_id, 2)
    assert not cycles.close_cycle(ctx, process_id, 2)  # checkpoint 2 is not out yet
    assert cycles.close_cycle(ctx, process_id, 1)
    assert ctx.repo.get_cycle(process_id, 2).status is CycleStatus.COMPLETED
    assert ctx.repo.get_process(process_id).latest_checkpoint == 3


def test_the_buffer_step_goes_through_the_server_optimizer_with_its_stored_state(ctx, tiny) -> None:
    """FedAvgM (momentum 0.9): checkpoint 3 = 2 - (0.9 m_1 + d_2), the momentum read
    from what buffer 1's closing stored."""
    fedavgm = {"name": "fedavgm", "server_momentum": 0.9}
    process_id = host(ctx, tiny, **ASYNC, max_diffs=None, server_optimizer=fedavgm)
    for value in (1.0, 2.0):
        for worker, answer in [join(ctx), join(ctx)]:
            send_report(ctx, worker, answer["request_key"], constant_diff(tiny, value))
        deliver(ctx, process_id)
    one, three = checkpoint(ctx, process_id, 1), checkpoint(ctx, process_id, 3)
    for name in one:
        np.testing.assert_allclose(three[name], one[name] - (1.0 + 0.9 * 1.0 + 2.0), rtol=1e-6)


def test_invitations_top_up_the_free_places() -> None:
    async_config = config(max_concurrency=5, over_selection=1.3)
    state = RoundState(assigned=3, invited=0, invited_and_assigned=0)
    assert invitations_wanted(async_config, state, pool=10) == 3  # ceil(2 * 1.3)
    busy = RoundState(assigned=3, invited=3, invited_and_assigned=1)
    assert invitations_wanted(async_config, busy, pool=10) == 1  # 2 still outstanding
    full = RoundState(assigned=5, invited=0, invited_and_assigned=0)
    assert invitations_wanted(async_config, full, pool=10) == 0
