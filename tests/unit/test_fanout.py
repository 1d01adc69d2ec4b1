"""Fan-out closing: a big cohort's diffs aggregated by groups, each exactly once, then
combined into the same checkpoint a single pass makes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from firegrid.domain import optimizers
from firegrid.domain.aggregation import Contribution, HeldDiffs, fedavg
from firegrid.domain.aggregation import Options as RuleOptions
from firegrid.domain.cycle import CycleStatus
from firegrid.domain.fanout import Group, GroupStatus, combine, partition
from firegrid.domain.optimizers import OptimizerState
from firegrid.services import cycles, fanout
from firegrid.services.context import Context
from tests.common import State, server_optimizer
from tests.unit.test_faults import diff_object
from tests.unit.test_services import checkpoint, host, join, send_report

T0 = datetime(2026, 1, 1, tzinfo=UTC)
Tiny = tuple[State, bytes]


def test_partition_is_the_same_for_the_same_reports_in_any_order() -> None:
    reported = [(f"w{i:02d}", float(i + 1)) for i in range(7)]
    groups = partition("p", 1, reported[::-1], 3, T0)

    assert [g.workers for g in groups] == [
        ("w00", "w01", "w02"),
        ("w03", "w04", "w05"),
        ("w06",),
    ]
    assert groups[1].weights == (4.0, 5.0, 6.0)
    assert partition("p", 1, reported, 3, T0) == groups


def test_a_group_is_completed_once_by_its_lease_holder() -> None:
    group = partition("p", 1, [("w", 1.0)], 3, T0)[0]
    taken = group.take_lease(T0, T0 + timedelta(seconds=60), "a")
    assert taken is not None and taken.take_lease(T0, T0, "b") is None
    overtaken = taken.take_lease(T0 + timedelta(seconds=60), T0 + timedelta(seconds=120), "b")
    assert overtaken is not None
    assert overtaken.complete("a", "x", None, {}) is None  # fenced out
    done = overtaken.complete("b", None, None, {"w": "missing_object"})
    assert done is not None and done.status is GroupStatus.DONE
    assert done.complete("b", None, None, {}) is None
    assert not done.needs_redrive(T0 + timedelta(days=1), timedelta(seconds=60))


def test_combining_group_averages_equals_the_single_pass_average() -> None:
    rng = np.random.default_rng(0)
    template = {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}
    contributions = [
        Contribution(
            diff={k: rng.normal(size=v.shape).astype(np.float32) for k, v in template.items()},
            weight=float(rng.integers(1, 100)),
        )
        for _ in range(11)
    ]
    single = fedavg(template, HeldDiffs(template, contributions), RuleOptions())
    partials: list[tuple[Group, dict[str, Any]]] = []
    for index, start in enumerate(range(0, 11, 4)):
        part = contributions[start : start + 4]
        step = fedavg(template, HeldDiffs(template, part), RuleOptions())
        group = Group(
            process_id="p", seq=1, index=index, workers=(), weights=(), created_at=T0,
            weight=step.total_weight, num_diffs=step.num_diffs,
        )  # fmt: skip
        partials.append((group, step.delta))

    combined = combine(template, partials)

    assert (combined.num_diffs, combined.total_weight) == (11, single.total_weight)
    for name in template:
        np.testing.assert_allclose(combined.delta[name], single.delta[name], rtol=1e-12)


def reported(ctx: Context, tiny: Tiny, count: int, **server: Any) -> tuple[str, list[str]]:
    """``count`` reports of different diffs and sample counts; the cycle marked closing."""
    process_id = host(ctx, tiny, max_diffs=count, **server)
    workers = []
    for i in range(count):
        worker_id, key = join(ctx)
        diff = {k: np.full_like(v, 0.01 * (i + 1)) for k, v in tiny[0].items()}
        send_report(ctx, worker_id, key, diff, num_samples=i + 1)
        workers.append(worker_id)
    assert cycles.on_report(ctx, process_id, 1)
    return process_id, workers


def expected_checkpoint(tiny: Tiny, count: int) -> State:
    """Checkpoint 2 of a clean single pass over those reports (LEAF's FedAvg)."""
    weights = np.arange(1, count + 1, dtype=np.float64)
    step = float((weights * 0.01 * weights).sum() / weights.sum())
    return {k: (v.astype(np.float64) - step).astype(v.dtype) for k, v in tiny[0].items()}


def assert_state_close(actual: State, expected: State) -> None:
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-6, atol=1e-7)


def test_a_big_closing_fans_out_and_combines_to_the_single_pass_result(ctx, tiny) -> None:
    process_id, _ = reported(ctx, tiny, 7, fanout_threshold=3)

    assert not cycles.close_cycle(ctx, process_id, 1)  # makes the groups, leaves them to run
    groups = ctx.repo.groups(process_id, 1)
    assert [len(g.workers) for g in groups] == [3, 3, 1]
    assert ctx.repo.get_cycle(process_id, 1).closing_lease_holder is None
    for group in groups:
        assert fanout.aggregate_group(ctx, process_id, 1, group.index)
        assert not fanout.aggregate_group(ctx, process_id, 1, group.index)  # a redelivery
    assert cycles.close_cycle(ctx, process_id, 1)  # the last group's completion
    assert not cycles.close_cycle(ctx, process_id, 1)  # ...delivered twice

    closed = ctx.repo.get_cycle(process_id, 1)
    assert closed.status is CycleStatus.COMPLETED
    assert (closed.summary.num_diffs, closed.summary.total_samples) == (7, 28)
    assert_state_close(checkpoint(ctx, process_id, 2), expected_checkpoint(tiny, 7))


def test_a_fanned_out_closing_feeds_the_server_optimizer_the_combined_step(ctx, tiny) -> None:
    adagrad = {"name": "fedadagrad", "eta": 0.2}
    process_id, _ = reported(ctx, tiny, 5, fanout_threshold=2, server_optimizer=adagrad)
    assert not cycles.close_cycle(ctx, process_id, 1)
    for group in ctx.repo.groups(process_id, 1):
        assert fanout.aggregate_group(ctx, process_id, 1, group.index)
    assert cycles.close_cycle(ctx, process_id, 1)

    fedavg_step = expected_checkpoint(tiny, 5)
    delta = {k: v.astype(np.float64) - fedavg_step[k] for k, v in tiny[0].items()}
    expected, _ = optimizers.step(tiny[0], delta, server_optimizer(adagrad), OptimizerState())
    assert_state_close(checkpoint(ctx, process_id, 2), expected)
    assert ctx.repo.get_cycle(process_id, 1).summary.optimizer_state_object is not None


def test_groups_nobody_took_up_are_aggregated_by_the_tick(ctx, tiny) -> None:
    process_id, workers = reported(ctx, tiny, 5, fanout_threshold=2)
    ctx.blobs.put(diff_object(ctx, process_id, workers[0]), b"\0garbage")
    assert not cycles.close_cycle(ctx, process_id, 1)  # the group events are all lost

    ctx.clock.advance(ctx.settings.redrive_grace_s + 1)
    report = cycles.tick(ctx)

    assert report.redriven == ["mnist:1.0#1"]
    closed = ctx.repo.get_cycle(process_id, 1)
    assert closed.status is CycleStatus.COMPLETED and closed.summary.num_diffs == 4
    assert closed.skipped == {"invalid_safetensors": 1}
    assert ctx.repo.get_assignment(process_id, 1, workers[0]).skipped == "invalid_safetensors"
    weights = np.arange(2, 6, dtype=np.float64)  # the first report (1 sample) left out
    step = float((weights * 0.01 * weights).sum() / weights.sum())
    expected = {k: (v.astype(np.float64) - step).astype(v.dtype) for k, v in tiny[0].items()}
    assert_state_close(checkpoint(ctx, process_id, 2), expected)


@pytest.mark.parametrize("aggregation", ["median", "trimmed_mean"])
def test_robust_rules_never_fan_out(ctx, tiny, aggregation) -> None:
    process_id, _ = reported(ctx, tiny, 5, fanout_threshold=2, aggregation=aggregation)

    assert cycles.close_cycle(ctx, process_id, 1)
    assert ctx.repo.groups(process_id, 1) == []
