import warnings

import numpy as np
import pytest

from firegrid.domain import aggregation
from firegrid.domain.aggregation import (
    RULES,
    Aggregation,
    AggregationFailed,
    Contribution,
    HeldDiffs,
    Options,
    aggregate,
    fedavg_weights,
    median,
)
from firegrid.wire import status_of


def _random_model(rng: np.random.Generator, dtype: str = "float64") -> dict[str, np.ndarray]:
    return {
        "conv.weight": rng.normal(size=(8, 1, 3, 3)).astype(dtype),
        "conv.bias": rng.normal(size=(8,)).astype(dtype),
        "fc.weight": rng.normal(size=(10, 32)).astype(dtype),
    }


@pytest.mark.parametrize("seed", range(5))
def test_fedavg_equals_leaf_full_weight_formula(seed: int) -> None:
    rng = np.random.default_rng(seed)
    old = _random_model(rng)
    trained = [_random_model(rng) for _ in range(7)]
    samples = [int(n) for n in rng.integers(1, 500, size=7)]
    diffs = [{k: old[k] - w[k] for k in old} for w in trained]

    new, step = aggregate(
        old, (Contribution(diff=d, weight=n) for d, n in zip(diffs, samples, strict=True))
    )

    total = sum(samples)
    for name in old:
        leaf = sum(n * w[name] for n, w in zip(samples, trained, strict=True)) / total
        np.testing.assert_allclose(new[name], leaf, atol=1e-6, rtol=0)
    assert (step.num_diffs, step.total_weight) == (7, total)


def test_fedavg_keeps_float32_within_tolerance() -> None:
    rng = np.random.default_rng(42)
    old = _random_model(rng, "float32")
    trained = [_random_model(rng, "float32") for _ in range(20)]
    samples = [int(n) for n in rng.integers(1, 1000, size=20)]
    contributions = [
        Contribution(diff={k: old[k] - w[k] for k in old}, weight=n)
        for w, n in zip(trained, samples, strict=True)
    ]
    new, _ = aggregate(old, contributions)
    for name in old:
        leaf = sum(n * w[name].astype(np.float64) for n, w in zip(samples, trained, strict=True))
        assert new[name].dtype == np.float32
        np.testing.assert_allclose(new[name], leaf / sum(samples), atol=1e-6, rtol=0)


def test_mean_ignores_sample_counts_like_pygrid() -> None:
    old = {"w": np.zeros(3)}
    diffs = [{"w": np.array([1.0, 2.0, 3.0])}, {"w": np.array([3.0, 2.0, 1.0])}]
    new, _ = aggregate(
        old,
        [Contribution(diff=d, weight=n) for d, n in zip(diffs, [1, 99], strict=True)],
        method="mean",
    )
    np.testing.assert_allclose(new["w"], [-2.0, -2.0, -2.0])


def test_server_lr_scales_the_step() -> None:
    old = {"w": np.ones(2)}
    new, _ = aggregate(old, [Contribution(diff={"w": np.ones(2)}, weight=3)], server_lr=0.5)
    np.testing.assert_allclose(new["w"], [0.5, 0.5])


def test_median_and_trimmed_mean_resist_an_outlier() -> None:
    old = {"w": np.zeros(1)}
    values = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.0, 1.0, 1000.0]
    contributions = [Contribution(diff={"w": np.array([v])}, weight=1) for v in values]
    median, _ = aggregate(old, contributions, method="median")
    trimmed, _ = aggregate(old, contributions, method="trimmed_mean", trim_fraction=0.1)
    assert abs(median["w"][0] + 1.0) < 0.05
    assert abs(trimmed["w"][0] + 1.0) < 0.05


def test_mismatched_keys_and_shapes_fail_loudly() -> None:
    old = {"w": np.zeros(2)}
    with pytest.raises(AggregationFailed, match="missing"):
        aggregate(old, [Contribution(diff={"v": np.zeros(2)}, weight=1)])
    with pytest.raises(AggregationFailed, match="shape"):
        aggregate(old, [Contribution(diff={"w": np.zeros(3)}, weight=1)])
    with pytest.raises(AggregationFailed, match="no diffs"):
        aggregate(old, [])


def test_streaming_reads_one_diff_at_a_time() -> None:
    """fedavg consumes a generator without materialising it (memory O(model))."""
    alive = 0
    peak = 0

    class Tracked(dict):  # counts how many diffs exist at once
        def __init__(self, *args: object) -> None:
            nonlocal alive, peak
            super().__init__(*args)
            alive += 1
            peak = max(peak, alive)

        def __del__(self) -> None:
            nonlocal alive
            alive -= 1

    def diffs():
        for _ in range(50):
            yield Contribution(diff=Tracked({"w": np.ones(4)}), weight=2)

    aggregate({"w": np.zeros(4)}, diffs())
    assert peak == 1  # the previous diff is dropped before the next one is read


@pytest.mark.parametrize("method", ["fedavg", "mean"])
def test_the_chunked_fold_is_numpys_float64_formula_bit_for_bit(monkeypatch, method) -> None:
    """Chunk edges inside and across tensors; float16, float32, int and empty tensors."""
    monkeypatch.setattr(aggregation, "FOLD_CHUNK", 7)
    rng = np.random.default_rng(7)
    model = {
        "w": rng.normal(size=(3, 5)).astype(np.float32),
        "h": rng.normal(size=16).astype(np.float16),
        "n": rng.integers(-9, 9, size=(2, 2)).astype(np.int32),
        "e": np.zeros((0, 3), np.float32),
    }
    diffs = [{k: (rng.normal(size=v.shape) * 9).astype(v.dtype) for k, v in model.items()}]
    diffs += [{k: rng.normal(size=v.shape).astype(v.dtype) for k, v in model.items()}] * 3
    weights = [float(n) for n in rng.integers(1, 1000, size=len(diffs))]

    new, step = aggregate(
        model,
        [Contribution(diff=d, weight=n) for d, n in zip(diffs, weights, strict=True)],
        method=method,
        server_lr=0.3,
    )

    used = weights if method == "fedavg" else [1.0] * len(diffs)
    for name, old in model.items():
        total = np.zeros(old.shape)
        for diff, weight in zip(diffs, used, strict=True):
            total += weight * diff[name].astype(np.float64)
        delta = total / sum(used)
        assert np.array_equal(step.delta[name], delta)
        assert np.array_equal(new[name], (old.astype(np.float64) - 0.3 * delta).astype(old.dtype))
        assert new[name].dtype == old.dtype


def test_a_step_beyond_the_dtype_makes_an_infinite_checkpoint_quietly(monkeypatch) -> None:
    monkeypatch.setattr(aggregation, "FOLD_CHUNK", 2)
    old = {"h": np.array([60000.0, 1.0, -60000.0], np.float16)}
    diff = {"h": np.array([-60000.0, 0.5, 60000.0], np.float16)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new, _ = aggregate(old, [Contribution(diff=diff, weight=1)])
    assert new["h"].tolist() == [np.inf, 0.5, -np.inf]


def test_fedavg_weights_are_the_counts_without_a_cap() -> None:
    assert fedavg_weights([3, 1, 2**62]) == [3.0, 1.0, float(2**62)]


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.25, 0.5, 0.9])
def test_no_report_weighs_more_than_the_cap(fraction: float) -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        counts = [int(c) for c in rng.integers(1, 10**6, size=int(rng.integers(1, 40)))]
        counts[0] = 10**12  # one device claims a huge count
        weights = fedavg_weights(counts, fraction)
        total = sum(weights)
        if len(counts) * fraction < 1:  # the cap cannot hold: everyone weighs the same
            assert weights == [1.0] * len(counts)
            continue
        assert max(weights) <= fraction * total * (1 + 1e-9)
        # Reports below the level keep their counts; capped ones share one level.
        level = max(weights)
        for count, weight in zip(counts, weights, strict=True):
            assert weight == count or weight == pytest.approx(level)


def test_the_cap_changes_nothing_when_no_report_exceeds_it() -> None:
    assert fedavg_weights([10, 10, 10, 10], 0.25) == [10.0] * 4
    assert fedavg_weights([1, 2, 3], 1.0) == [1.0, 2.0, 3.0]


def test_one_huge_count_no_longer_owns_the_average() -> None:
    old = {"w": np.zeros(1)}
    honest = [Contribution(diff={"w": np.array([1.0])}, weight=w) for w in (10.0, 10.0, 10.0)]
    counts = [10, 10, 10, 10**9]
    weights = fedavg_weights(counts, 0.5)
    hostile = Contribution(diff={"w": np.array([-100.0])}, weight=weights[-1])
    new, _ = aggregate(old, [*honest, hostile])
    # Capped at half the weight: the average is (1 + -100) / 2 instead of -100.
    assert new["w"][0] == pytest.approx(-(1.0 - 100.0) / 2)


def test_every_method_has_one_rule_with_one_signature() -> None:
    old = {"w": np.zeros(2)}
    contributions = [Contribution(diff={"w": np.array([v, -v])}, weight=2) for v in (1.0, 3.0)]
    assert set(RULES) == set(Aggregation)
    for method, rule in RULES.items():
        step = rule(old, HeldDiffs(old, iter(contributions)), Options())
        assert step.num_diffs == 2, method
        np.testing.assert_allclose(step.delta["w"], [2.0, -2.0])


def test_methods_are_validated_at_hosting() -> None:
    from firegrid.domain.config import ServerConfig
    from firegrid.domain.errors import BadRequest

    parsed = ServerConfig.parse({"cycle_length": 5, "num_cycles": 1, "aggregation": "median"})
    assert parsed.aggregation is Aggregation.MEDIAN
    assert ServerConfig.from_dict(parsed.to_dict()).aggregation is Aggregation.MEDIAN
    with pytest.raises(BadRequest, match="'aggregation' must be one of fedavg, mean"):
        ServerConfig.parse({"cycle_length": 5, "num_cycles": 1, "aggregation": "sum"})


def test_an_aggregation_failure_is_the_servers_not_a_400() -> None:
    with pytest.raises(AggregationFailed) as failed:
        aggregate({"w": np.zeros(2)}, [])
    assert (status_of(failed.value), failed.value.code) == (500, "aggregation_failed")


def _stack_of(diffs: list[dict[str, np.ndarray]], name: str) -> np.ndarray:
    return np.stack([d[name].astype(np.float64) for d in diffs])


@pytest.mark.parametrize("budget", [8 * 7 * 5, 8 * 7 * 64, 2**26])
@pytest.mark.parametrize("count", [1, 2, 7, 10])
def test_sliced_robust_rules_equal_numpy_on_the_whole_stack(monkeypatch, budget, count) -> None:
    """Slices of 5, 64 or every coordinate (7 diffs): the same numbers as numpy on all diffs."""
    monkeypatch.setattr(aggregation, "SLICE_BUDGET_BYTES", budget)
    rng = np.random.default_rng(count)
    old = _random_model(rng, "float32")
    diffs = [_random_model(rng, "float32") for _ in range(count)]
    contributions = [Contribution(diff=d, weight=1) for d in diffs]
    _, by_median = aggregate(old, contributions, method="median")
    _, by_trimmed = aggregate(old, contributions, method="trimmed_mean", trim_fraction=0.2)
    cut = int(0.2 * count)
    for name in old:
        stack = _stack_of(diffs, name)
        np.testing.assert_allclose(by_median.delta[name], np.median(stack, axis=0), rtol=1e-15)
        trimmed = np.sort(stack, axis=0)[cut : count - cut].mean(axis=0)
        np.testing.assert_allclose(by_trimmed.delta[name], trimmed, rtol=1e-12, atol=1e-15)
    assert by_trimmed.total_weight == count - 2 * cut


def test_slices_cover_every_coordinate_once_within_the_width() -> None:
    template = {"a": np.zeros((3, 4)), "b": np.zeros(1), "c": np.zeros(9)}
    for width in (1, 2, 5, 22, 100):
        runs = list(aggregation.slices(template, width))
        assert all(sum(p.stop - p.start for p in run) <= width for run in runs)
        covered = [(p.name, i) for run in runs for p in run for i in range(p.start, p.stop)]
        assert covered == [(n, i) for n, t in template.items() for i in range(t.size)]


class _CountingSources:
    """Held diffs whose readers record the widest read; one reader may fail once."""

    def __init__(self, diffs: list[dict[str, np.ndarray]], failing: int | None = None) -> None:
        self.held = [Contribution(diff=d, weight=1) for d in diffs]
        self.failing = failing
        self.left_out: list[int] = []
        self.widest = 0

    def whole(self):
        return iter(self.held)

    def sliced(self):
        sources = self

        class Reader:
            weight = 1.0

            def __init__(self, index: int) -> None:
                self.index = index

            def read(self, pieces):
                sources.widest = max(sources.widest, sum(p.stop - p.start for p in pieces))
                if self.index == sources.failing:
                    sources.left_out.append(self.index)
                    sources.failing = None
                    raise aggregation.UnusableDiff("changed since it was checked")
                diff = sources.held[self.index].diff
                return np.concatenate([diff[p.name].reshape(-1)[p.start : p.stop] for p in pieces])

        return [Reader(i) for i in range(len(self.held)) if i not in self.left_out]


def test_robust_rules_read_slices_bounded_by_the_budget(monkeypatch) -> None:
    monkeypatch.setattr(aggregation, "SLICE_BUDGET_BYTES", 8 * 40 * 10)
    diffs = [{"w": np.full(1000, float(k))} for k in range(40)]
    sources = _CountingSources(diffs)
    step = median({"w": np.zeros(1000)}, sources, Options())
    assert sources.widest == 10  # 40 diffs x 10 coordinates x 8 bytes
    np.testing.assert_allclose(step.delta["w"], 19.5)


def test_a_diff_unusable_half_way_is_left_out_and_the_rule_starts_again(monkeypatch) -> None:
    monkeypatch.setattr(aggregation, "SLICE_BUDGET_BYTES", 8 * 3 * 2)
    diffs = [{"w": np.full(6, v)} for v in (1.0, 2.0, 100.0)]
    sources = _CountingSources(diffs, failing=2)
    step = median({"w": np.zeros(6)}, sources, Options())
    assert (step.num_diffs, sources.left_out) == (2, [2])
    np.testing.assert_allclose(step.delta["w"], 1.5)


def test_a_diff_that_keeps_failing_fails_the_aggregation() -> None:
    class Stubborn(_CountingSources):
        def sliced(self):
            self.left_out.clear()  # never leaves the failing diff out
            self.failing = 0
            return super().sliced()

    with pytest.raises(AggregationFailed, match="not left out"):
        median({"w": np.zeros(2)}, Stubborn([{"w": np.ones(2)}] * 2, failing=0), Options())
