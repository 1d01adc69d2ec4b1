"""Differential privacy: the clipping bounds each diff, the noise has the stated scale,
the epsilon is dp-accounting's, and training stops before the budget is exceeded."""

from __future__ import annotations

from typing import Any

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from firegrid.domain import privacy
from firegrid.domain.aggregation import Contribution, clip_factor, combine
from firegrid.domain.config import ServerConfig
from firegrid.domain.cycle import ProcessStatus
from firegrid.domain.errors import BadRequest
from firegrid.services import operator
from firegrid.services.context import Context
from tests.common import State
from tests.edge import call
from tests.fakes import make_context
from tests.unit.test_server_optimizer_service import _overtaken_closing
from tests.unit.test_services import checkpoint, host, join, on_report, send_report

DP = {"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-5, "population": 10}
SERVER = {"max_diffs": 2, "max_workers": 2, "num_cycles": 0}


def _direct_epsilon(rates: list[float], z: float, delta: float) -> float:
    accountant = rdp_privacy_accountant.RdpAccountant()
    for q in rates:
        accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)))
    return float(accountant.get_epsilon(delta))


def _norm(diff: State) -> float:
    return float(np.sqrt(sum(np.sum(np.square(v.astype(np.float64))) for v in diff.values())))


# -- config -------------------------------------------------------------------


def _config(dp: Any, **server: Any) -> ServerConfig:
    return ServerConfig.parse({"cycle_length": 60} | SERVER | server | {"dp": dp})


def test_dp_config_round_trips_and_names_each_bad_key() -> None:
    config = _config(DP | {"max_epsilon": 3.0})
    assert config.dp is not None and config.dp.max_epsilon == 3.0
    assert ServerConfig.from_dict(config.to_dict()) == config
    for dp, message in [
        ({"clip_norm": 1.0, "delta": 1e-5}, "'dp.noise_multiplier' is required"),
        (DP | {"clip_norm": 0}, "'dp.clip_norm' must be > 0"),
        (DP | {"delta": 1.0}, "'dp.delta' must be below 1"),
        (DP | {"max_epsilon": -1}, "'dp.max_epsilon' must not be negative"),
        (DP | {"max_epsilon": 0}, "'dp.max_epsilon' must be > 0"),
        (DP | {"population": 0}, "'dp.population'"),
        (DP | {"seed": 1}, "unknown dp keys: seed"),
        ("on", "'dp' must be a JSON object"),
    ]:
        with pytest.raises(BadRequest, match=message):
            _config(dp)


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"aggregation": "median"}, "'dp' needs 'aggregation' 'fedavg' or 'mean'"),
        ({"max_weight_fraction": 0.5}, "every diff weighs 1/m"),
        ({"max_workers": None}, "'max_workers' at most 'fanout_threshold'"),
        ({"max_workers": 50, "fanout_threshold": 10}, "not fanned out"),
    ],
)
def test_dp_is_refused_where_it_cannot_hold(server: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        _config(DP, **server)


# -- clipping and noise ---------------------------------------------------------


def test_clipping_bounds_each_diff_and_averages_uniformly(tiny) -> None:
    rng = np.random.default_rng(1)
    big = {k: (10 * rng.normal(size=v.shape)).astype(v.dtype) for k, v in tiny[0].items()}
    small = {k: np.full_like(v, 1e-3) for k, v in tiny[0].items()}
    assert _norm(big) > 10 and _norm(small) < 0.5
    assert clip_factor(small, 0.5) == 1.0
    np.testing.assert_allclose(_norm(big) * clip_factor(big, 0.5), 0.5, rtol=1e-9)

    # Sample counts do not weigh: the uniform mean of the clipped diffs.
    contributions = [Contribution(diff=big, weight=1000.0), Contribution(diff=small, weight=1.0)]
    step = combine(tiny[0], contributions, clip_norm=0.5)
    factor = clip_factor(big, 0.5)
    for name, values in step.delta.items():
        expected = (factor * big[name].astype(np.float64) + small[name]) / 2
        np.testing.assert_allclose(values, expected, rtol=1e-6)
    # Swapping the small diff for the big one moves the mean by at most (S + |small|) / m,
    # however large the big one was (with 1000x the samples, unclipped, it would be ~|big|).
    alone = combine(tiny[0], [Contribution(diff=small, weight=1.0)] * 2, clip_norm=0.5)
    moved = {k: step.delta[k] - alone.delta[k] for k in step.delta}
    assert _norm(moved) <= (0.5 + _norm(small)) / 2 + 1e-9


def test_the_noise_has_std_z_times_s_over_m() -> None:
    config = privacy.DpConfig(clip_norm=2.0, noise_multiplier=1.5, delta=1e-5)
    delta = {"w": np.zeros((400, 500)), "b": np.zeros(1000)}
    privacy.add_noise(delta, config.noise_std(10, 2.0), np.random.default_rng(12345))
    values = np.concatenate([v.reshape(-1) for v in delta.values()])
    assert abs(values.std() / (1.5 * 2.0 / 10) - 1) < 0.01
    assert abs(values.mean()) < 0.01 * 0.3


def test_the_production_generator_is_seeded_afresh() -> None:
    first, second = privacy.noise_generator(), privacy.noise_generator()
    assert first.normal(size=4).tolist() != second.normal(size=4).tolist()


# -- accountant ---------------------------------------------------------------


def test_epsilon_is_dp_accountings_for_the_cycles_sampling_rates() -> None:
    spent: dict[str, int] = {}
    for num_diffs in (20, 20, 5, 20, 100):
        spent = privacy.spend(spent, num_diffs, 100)
    assert spent == {"20/100": 3, "5/100": 1, "100/100": 1}
    expected = _direct_epsilon([0.2, 0.2, 0.05, 0.2, 1.0], 1.1, 1e-6)
    assert privacy.epsilon(spent, 1.1, 1e-6) == pytest.approx(expected, rel=1e-9)
    assert privacy.sampling_rate("30/10") == 1.0  # more diffs than the population names


def test_the_budget_counts_the_next_cycle_at_its_most_diffs() -> None:
    config = privacy.DpConfig(clip_norm=1.0, noise_multiplier=1.0, delta=1e-5, max_epsilon=4.0)
    after_one = privacy.account(config, {}, 2, 10, next_diffs=2)
    assert after_one.epsilon == pytest.approx(_direct_epsilon([0.2], 1.0, 1e-5))
    assert not after_one.exhausted
    # A next cycle of all 10 would sample at rate 1: far over budget.
    assert privacy.account(config, {}, 2, 10, next_diffs=10).exhausted


# -- the closing, on the fakes ----------------------------------------------------


def _seeded(seed: int) -> Context:
    return make_context(noise=lambda: np.random.default_rng(seed))


def test_a_closing_adds_the_seeded_noise_to_the_clipped_mean(tiny) -> None:
    ctx = _seeded(99)
    process_id = host(ctx, tiny, dp=DP, **SERVER)
    rng = np.random.default_rng(2)
    diffs = [{k: (5 * rng.normal(size=v.shape)).astype(v.dtype) for k, v in tiny[0].items()}]
    diffs.append({k: np.full_like(v, 0.01) for k, v in tiny[0].items()})
    for diff, samples in zip(diffs, (100, 1), strict=True):
        worker_id, key = join(ctx)
        send_report(ctx, worker_id, key, diff, num_samples=samples)
    assert on_report(ctx, process_id, 1)

    mean = combine(tiny[0], [Contribution(diff=d, weight=1.0) for d in diffs], clip_norm=1.0)
    privacy.add_noise(mean.delta, 1.0 * 1.0 / 2, np.random.default_rng(99))
    new = checkpoint(ctx, process_id, 2)
    for name, old in tiny[0].items():
        np.testing.assert_allclose(new[name], old - mean.delta[name], rtol=1e-5, atol=1e-6)


def test_training_completes_before_the_budget_would_be_exceeded(tiny) -> None:
    per_cycle = [_direct_epsilon([0.2] * n, 1.0, 1e-5) for n in range(1, 6)]
    budget = (per_cycle[2] + per_cycle[3]) / 2  # three cycles fit, a fourth would not
    ctx = _seeded(0)
    process_id = host(ctx, tiny, dp=DP | {"max_epsilon": budget}, **SERVER)
    seq = 0
    while ctx.repo.get_process(process_id).status is ProcessStatus.TRAINING:
        seq += 1
        assert seq <= 5, "training did not stop at the budget"
        for _ in range(2):
            worker_id, key = join(ctx)
            send_report(ctx, worker_id, key, {k: np.full_like(v, 0.1) for k, v in tiny[0].items()})
        assert on_report(ctx, process_id, seq)

    assert seq == 3
    epsilons = [ctx.repo.get_cycle(process_id, s).summary.epsilon for s in (1, 2, 3)]
    assert epsilons == pytest.approx(per_cycle[:3], rel=1e-9)
    assert epsilons[-1] <= budget
    status = call(operator.status, ctx, {"name": "mnist"})
    assert status["status"] == "completed"
    assert status["previous_cycle"]["epsilon"] == pytest.approx(per_cycle[1])
    assert status["privacy"] == {
        "epsilon": pytest.approx(per_cycle[2]),
        "delta": 1e-5,
        "noise_multiplier": 1.0,
        "clip_norm": 1.0,
        "max_epsilon": budget,
        "target_quantile": None,
    }


def test_an_overtaken_closing_counts_its_cycle_once(tiny) -> None:
    ctx = _seeded(5)
    process_id = host(ctx, tiny, dp=DP, **SERVER)
    for seq in (1, 2):
        for _ in range(2):
            worker_id, key = join(ctx)
            send_report(ctx, worker_id, key, {k: np.full_like(v, 0.1) for k, v in tiny[0].items()})
        if seq == 1:
            _overtaken_closing(ctx, process_id, seq)
        else:
            assert on_report(ctx, process_id, seq)

    summary = ctx.repo.get_cycle(process_id, 2).summary
    assert summary.privacy_spent == {"2/10": 2}
    assert summary.epsilon == pytest.approx(_direct_epsilon([0.2, 0.2], 1.0, 1e-5), rel=1e-9)
    # The overtaken attempt's noised checkpoint was deleted: only the published ones remain.
    stored = [n for n in ctx.blobs.writes if "/checkpoints/" in n and n in ctx.blobs.objects]
    published = [ctx.repo.get_cycle(process_id, s).summary.checkpoint_object for s in (1, 2)]
    assert stored[1:] == published and sum("/checkpoints/2-" in n for n in ctx.blobs.writes) == 2


def test_a_budget_one_cycle_would_exceed_is_refused_at_hosting() -> None:
    one_cycle = _direct_epsilon([0.2], 1.0, 1e-5)  # max_workers 2 of a population of 10
    _config(DP | {"max_epsilon": one_cycle * 1.01})
    with pytest.raises(BadRequest, match=r"'dp\.max_epsilon' is below one cycle's epsilon"):
        _config(DP | {"max_epsilon": one_cycle * 0.99})
    # Without a population the pool decides the rate: the closing checks it.
    _config(DP | {"max_epsilon": one_cycle * 0.99, "population": None})
