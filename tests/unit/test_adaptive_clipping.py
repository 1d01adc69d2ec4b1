"""Adaptive clipping (Andrew et al. 2021): the parsing, the noise split, the count's
noise, and the clip norm following the target quantile over closings on the fakes,
exactly once under re-drives."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from google.api_core import exceptions as gexc

from firegrid.domain import privacy
from firegrid.domain.config import ServerConfig
from firegrid.domain.errors import BadRequest
from firegrid.services import cycles, operator
from firegrid.services.context import Context
from tests.common import State
from tests.edge import call
from tests.fakes import make_context
from tests.unit.test_services import host, join, on_report, send_report

ADAPTIVE = {
    "clip_norm": 10.0,
    "noise_multiplier": 0.05,
    "delta": 1e-5,
    "population": 100,
    "target_quantile": 0.5,
    "clipped_count_stddev": 0.05,
}


def _config(dp: Any, **server: Any) -> ServerConfig:
    base = {"cycle_length": 60, "max_workers": 40, "num_cycles": 0}
    return ServerConfig.parse(base | server | {"dp": dp})


def test_adaptive_keys_parse_with_the_papers_defaults_and_name_each_bad_value() -> None:
    dp = {"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-5, "target_quantile": 0.5}
    config = _config(dp, max_diffs=30)
    assert config.dp is not None
    assert config.dp.clip_learning_rate == 0.2
    assert config.dp.clipped_count_stddev == pytest.approx(30 / 20)  # m: max_diffs
    assert _config(dp).dp.clipped_count_stddev == pytest.approx(40 / 20)  # else max_workers
    assert ServerConfig.from_dict(config.to_dict()) == config
    for bad, message in [
        (dp | {"target_quantile": 0}, "'dp.target_quantile' must be > 0"),
        (dp | {"target_quantile": 1}, "'dp.target_quantile' must be below 1"),
        (dp | {"clip_learning_rate": -0.1}, "'dp.clip_learning_rate'"),
        (dp | {"clipped_count_stddev": 0}, "'dp.clipped_count_stddev' must be > 0"),
        (
            {"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-5, "clip_learning_rate": 0.2},
            "'dp.clip_learning_rate' needs 'dp.target_quantile'",
        ),
    ]:
        with pytest.raises(BadRequest, match=message):
            _config(bad)


def test_a_count_noise_that_leaves_no_noise_for_the_sum_is_refused() -> None:
    dp = {"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-5, "target_quantile": 0.5}
    # m = 10: sigma_b = 0.5, 2 * sigma_b = z: (2 sigma_b)^-2 = z^-2 leaves nothing.
    with pytest.raises(BadRequest, match=r"needs 2 \* clipped_count_stddev > z \(1\)"):
        _config(dp, max_workers=10)
    _config(dp | {"clipped_count_stddev": 0.51}, max_workers=10)


def test_the_sum_takes_the_papers_share_of_the_noise_multiplier() -> None:
    z, sigma_b = 1.0, 2.0
    z_delta = privacy.split_noise_multiplier(z, sigma_b)
    assert z_delta is not None and z_delta > z
    assert z_delta**-2 + (2 * sigma_b) ** -2 == pytest.approx(z**-2, rel=1e-12)
    assert privacy.split_noise_multiplier(1.0, 0.5) is None
    config = privacy.DpConfig(
        clip_norm=3.0, noise_multiplier=z, delta=1e-5, target_quantile=0.5,
        clip_learning_rate=0.2, clipped_count_stddev=sigma_b,
    )  # fmt: skip
    assert config.noise_std(10, 2.5) == pytest.approx(z_delta * 2.5 / 10)  # the current C


def test_the_count_noise_has_std_sigma_b() -> None:
    config = privacy.DpConfig(
        clip_norm=1.0, noise_multiplier=1.0, delta=1e-5, target_quantile=0.5,
        clip_learning_rate=0.2, clipped_count_stddev=3.0,
    )  # fmt: skip
    rng = np.random.default_rng(2024)
    moved = np.array([config.next_clip_norm(1.0, 60, 100, rng) for _ in range(20000)])
    # C' = C exp(-eta (b~ - gamma)) gives back b~ = (60 + noise) / 100.
    noise = 100 * (0.5 - np.log(moved) / 0.2) - 60
    assert abs(noise.std() / 3.0 - 1) < 0.02
    assert abs(noise.mean()) < 0.05


# -- over closings, on the fakes ------------------------------------------------


def _diff_of_norm(tiny: tuple[State, bytes], norm: float) -> State:
    size = sum(v.size for v in tiny[0].values())
    return {k: np.full_like(v, norm / math.sqrt(size)) for k, v in tiny[0].items()}


def _run(ctx: Context, tiny: tuple[State, bytes], process_id: str, seq: int, norms: list[float]):
    for norm in norms:
        worker_id, key = join(ctx)
        send_report(ctx, worker_id, key, _diff_of_norm(tiny, norm))
    assert on_report(ctx, process_id, seq)
    return ctx.repo.get_cycle(process_id, seq).summary.next_clip_norm


def _seeded_noise(seeds: list[int]) -> Context:
    """Each noise generator seeded with the number of generators made before it."""

    def noise() -> np.random.Generator:
        seeds.append(len(seeds))
        return np.random.default_rng(seeds[-1])

    return make_context(noise=noise)


def _dp(dp: dict[str, Any]) -> privacy.DpConfig:
    return privacy.DpConfig(**{"clip_learning_rate": 0.2} | dp)


def test_all_diffs_within_the_clip_norm_shrink_it_geometrically(tiny) -> None:
    seeds: list[int] = []
    ctx = _seeded_noise(seeds)
    process_id = host(ctx, tiny, dp=ADAPTIVE, max_diffs=2, max_workers=2, num_cycles=0)
    config, clip = _dp(ADAPTIVE), 10.0
    for seq in (1, 2, 3, 4):
        stored = _run(ctx, tiny, process_id, seq, [1.0, 1.0])
        # Each closing draws the sum's noise, then the count's, from its own generators.
        expected = config.next_clip_norm(clip, 2, 2, np.random.default_rng(seeds[-1]))
        assert stored == pytest.approx(expected, rel=1e-12)
        assert stored / clip == pytest.approx(math.exp(-0.2 * (1 - 0.5)), rel=0.03)
        clip = stored
    status = call(operator.status, ctx, {"name": "mnist"})
    assert status["privacy"]["clip_norm"] == clip and status["privacy"]["target_quantile"] == 0.5
    assert status["previous_cycle"]["next_clip_norm"] == clip


def test_the_clip_norm_approaches_the_median_of_spread_norms(tiny) -> None:
    ctx = make_context(noise=lambda: np.random.default_rng(7))
    dp = ADAPTIVE | {"clip_norm": 8.0, "clip_learning_rate": 0.5}
    process_id = host(ctx, tiny, dp=dp, max_diffs=5, max_workers=5, num_cycles=0)
    clips = [_run(ctx, tiny, process_id, seq, [1.0, 2.0, 3.0, 4.0, 5.0]) for seq in range(1, 16)]
    assert clips[0] < 8.0
    # Once near 3 (the median), above it 3 of 5 fit and C falls, below it 2 do and it rises.
    assert all(2.8 < clip < 3.2 for clip in clips[-4:])


def test_a_redriven_closing_stores_the_completed_attempts_clip_norm_once(tiny) -> None:
    seeds: list[int] = []
    ctx = _seeded_noise(seeds)
    process_id = host(ctx, tiny, dp=ADAPTIVE, max_diffs=2, max_workers=2, num_cycles=0)
    complete = ctx.repo.complete_cycle

    def dies(*args: Any, **kw: Any) -> Any:
        ctx.repo.complete_cycle = complete
        raise gexc.ServiceUnavailable("the store is restarting")

    ctx.repo.complete_cycle = dies  # the first attempt computes a next C, then dies
    for _ in range(2):
        worker_id, key = join(ctx)
        send_report(ctx, worker_id, key, _diff_of_norm(tiny, 1.0))
    assert cycles.on_report(ctx, process_id, 1)
    with pytest.raises(gexc.ServiceUnavailable):
        cycles.close_cycle(ctx, process_id, 1)
    died_with = seeds[-1]
    assert cycles.close_cycle(ctx, process_id, 1)  # the re-drive
    config = _dp(ADAPTIVE)
    first = ctx.repo.get_cycle(process_id, 1).summary.next_clip_norm
    assert first == config.next_clip_norm(10.0, 2, 2, np.random.default_rng(seeds[-1]))
    assert first != config.next_clip_norm(10.0, 2, 2, np.random.default_rng(died_with))

    # Cycle 2 clips to, and moves from, the C the completed attempt stored.
    second = _run(ctx, tiny, process_id, 2, [1.0, 1.0])
    assert second == config.next_clip_norm(first, 2, 2, np.random.default_rng(seeds[-1]))
