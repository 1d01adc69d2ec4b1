import numpy as np
import pytest

from firegrid.domain.aggregation import AggregationError, Contribution, aggregate


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

    new, count = aggregate(
        old, (Contribution(diff=d, num_samples=n) for d, n in zip(diffs, samples, strict=True))
    )

    total = sum(samples)
    for name in old:
        leaf = sum(n * w[name] for n, w in zip(samples, trained, strict=True)) / total
        np.testing.assert_allclose(new[name], leaf, atol=1e-6, rtol=0)
    assert count == 7


def test_fedavg_keeps_float32_within_tolerance() -> None:
    rng = np.random.default_rng(42)
    old = _random_model(rng, "float32")
    trained = [_random_model(rng, "float32") for _ in range(20)]
    samples = [int(n) for n in rng.integers(1, 1000, size=20)]
    contributions = [
        Contribution(diff={k: old[k] - w[k] for k in old}, num_samples=n)
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
        [Contribution(diff=d, num_samples=n) for d, n in zip(diffs, [1, 99], strict=True)],
        method="mean",
    )
    np.testing.assert_allclose(new["w"], [-2.0, -2.0, -2.0])


def test_server_lr_scales_the_step() -> None:
    old = {"w": np.ones(2)}
    new, _ = aggregate(old, [Contribution(diff={"w": np.ones(2)}, num_samples=3)], server_lr=0.5)
    np.testing.assert_allclose(new["w"], [0.5, 0.5])


def test_median_and_trimmed_mean_resist_an_outlier() -> None:
    old = {"w": np.zeros(1)}
    values = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.0, 1.0, 1000.0]
    contributions = [Contribution(diff={"w": np.array([v])}, num_samples=1) for v in values]
    median, _ = aggregate(old, contributions, method="median")
    trimmed, _ = aggregate(old, contributions, method="trimmed_mean", trim_fraction=0.1)
    assert abs(median["w"][0] + 1.0) < 0.05
    assert abs(trimmed["w"][0] + 1.0) < 0.05


def test_mismatched_keys_and_shapes_fail_loudly() -> None:
    old = {"w": np.zeros(2)}
    with pytest.raises(AggregationError, match="missing"):
        aggregate(old, [Contribution(diff={"v": np.zeros(2)}, num_samples=1)])
    with pytest.raises(AggregationError, match="shape"):
        aggregate(old, [Contribution(diff={"w": np.zeros(3)}, num_samples=1)])
    with pytest.raises(AggregationError, match="no diffs"):
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
            yield Contribution(diff=Tracked({"w": np.ones(4)}), num_samples=2)

    aggregate({"w": np.zeros(4)}, diffs())
    assert peak <= 2
