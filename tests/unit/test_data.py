"""Federated datasets: the digits split, LEAF's Synthetic and LEAF JSON files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from firegrid.client.data import (
    MIN_DEVICE_SAMPLES,
    SYNTHETIC_MAX_SAMPLES,
    ClientData,
    FederatedDataset,
    digits_federated,
    load_leaf_json,
    synthetic,
    write_leaf_json,
)

DIGITS_SAMPLES = 1797


def _all_rows(dataset: FederatedDataset, heldout: ClientData) -> np.ndarray:
    parts = [heldout.x]
    for user in dataset.users:
        parts += [dataset.train[user].x, dataset.test[user].x]
    return np.concatenate(parts)


def _label_entropy(labels: np.ndarray) -> float:
    counts = np.bincount(labels, minlength=10)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _mean_device_entropy(dataset: FederatedDataset) -> float:
    return float(
        np.mean(
            [
                _label_entropy(np.concatenate([dataset.train[u].y, dataset.test[u].y]))
                for u in dataset.users
            ]
        )
    )


def test_digits_uses_every_sample_exactly_once() -> None:
    from sklearn.datasets import load_digits

    dataset, heldout = digits_federated(num_devices=20, alpha=0.5, seed=1)

    rows = _all_rows(dataset, heldout)
    assert len(rows) == DIGITS_SAMPLES
    expected = (load_digits().data / 16.0).astype(np.float32)
    assert sorted(map(bytes, rows)) == sorted(map(bytes, expected))


def test_digits_heldout_is_stratified_and_disjoint_from_devices() -> None:
    dataset, heldout = digits_federated(num_devices=20, seed=2, holdout_fraction=0.2)

    assert abs(len(heldout) - 0.2 * DIGITS_SAMPLES) <= 10
    assert set(np.bincount(heldout.y)) <= {35, 36, 37}
    device_rows = {bytes(row) for u in dataset.users for row in dataset.train[u].x}
    device_rows |= {bytes(row) for u in dataset.users for row in dataset.test[u].x}
    held_rows = {bytes(row) for row in heldout.x}
    device_count = sum(len(dataset.train[u]) + len(dataset.test[u]) for u in dataset.users)
    assert device_count + len(heldout) == DIGITS_SAMPLES
    assert not held_rows & device_rows


def test_digits_types_and_shapes() -> None:
    dataset, heldout = digits_federated(num_devices=10)

    client = dataset.train[dataset.users[0]]
    assert client.x.dtype == np.float32 and client.x.shape[1] == 64
    assert client.y.dtype == np.int64
    assert heldout.x.min() >= 0.0 and heldout.x.max() <= 1.0
    assert dataset.num_samples(dataset.users[0]) == len(client)


def test_small_alpha_skews_labels_more_than_near_iid() -> None:
    skewed, _ = digits_federated(num_devices=30, alpha=0.1, seed=3)
    near_iid, _ = digits_federated(num_devices=30, alpha=1000.0, seed=3)

    assert _mean_device_entropy(skewed) < 0.6 * _mean_device_entropy(near_iid)


def test_every_device_gets_the_minimum_and_a_train_split() -> None:
    dataset, _ = digits_federated(num_devices=100, alpha=0.05, seed=4)

    assert len(dataset.users) == 100
    for user in dataset.users:
        assert len(dataset.train[user]) + len(dataset.test[user]) >= MIN_DEVICE_SAMPLES
        assert len(dataset.train[user]) >= 1


def test_digits_is_reproducible_with_a_seed() -> None:
    first, first_heldout = digits_federated(num_devices=15, seed=7)
    again, again_heldout = digits_federated(num_devices=15, seed=7)
    other, _ = digits_federated(num_devices=15, seed=8)

    assert np.array_equal(first_heldout.x, again_heldout.x)
    for user in first.users:
        assert np.array_equal(first.train[user].x, again.train[user].x)
        assert np.array_equal(first.test[user].y, again.test[user].y)
    assert any(not np.array_equal(first.train[u].y, other.train[u].y) for u in first.users)


def test_too_many_devices_for_the_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot give 500 devices"):
        digits_federated(num_devices=500)


def test_synthetic_shapes_and_labels() -> None:
    dataset = synthetic(alpha=0.5, beta=0.5, num_users=12, seed=1)

    assert len(dataset.users) == 12
    for user in dataset.users:
        train, test = dataset.train[user], dataset.test[user]
        assert train.x.shape[1] == test.x.shape[1] == 60
        assert train.x.dtype == np.float32 and train.y.dtype == np.int64
        assert train.y.min() >= 0 and train.y.max() < 10
        total = len(train) + len(test)
        assert len(test) == round(0.2 * total)


def test_synthetic_sizes_follow_a_capped_power_law() -> None:
    dataset = synthetic(num_users=200, seed=2)

    sizes = np.array([len(dataset.train[u]) + len(dataset.test[u]) for u in dataset.users])
    assert sizes.min() >= 50 and sizes.max() <= SYNTHETIC_MAX_SAMPLES
    # Heavy tail: the median device is small, a few are many times larger.
    assert np.median(sizes) < 200
    assert sizes.max() >= 5 * np.median(sizes)


def test_synthetic_is_reproducible_with_a_seed() -> None:
    first, again = synthetic(seed=5, num_users=5), synthetic(seed=5, num_users=5)
    other = synthetic(seed=6, num_users=5)

    for user in first.users:
        assert np.array_equal(first.train[user].x, again.train[user].x)
        assert np.array_equal(first.test[user].y, again.test[user].y)
    assert not np.array_equal(first.train[first.users[0]].x, other.train[other.users[0]].x)


def test_synthetic_heterogeneity_shows_in_labels() -> None:
    """Per-device models make each device's labels concentrate on a few classes."""
    heterogeneous = synthetic(alpha=1.0, beta=1.0, num_users=20, seed=3)
    iid = synthetic(num_users=20, seed=3, iid=True)

    assert _mean_device_entropy(heterogeneous) < _mean_device_entropy(iid)


def test_leaf_json_round_trip(tmp_path: Path) -> None:
    dataset = synthetic(num_users=4, seed=9)

    train_path, test_path = write_leaf_json(dataset, tmp_path / "leaf")
    loaded = load_leaf_json(train_path, test_path)

    assert loaded.users == dataset.users
    for user in dataset.users:
        assert np.array_equal(loaded.train[user].x, dataset.train[user].x)
        assert np.array_equal(loaded.train[user].y, dataset.train[user].y)
        assert np.array_equal(loaded.test[user].x, dataset.test[user].x)
    document = json.loads(train_path.read_text())
    assert set(document) == {"users", "num_samples", "user_data"}
    assert document["num_samples"] == [dataset.num_samples(u) for u in dataset.users]


def _leaf(users: dict[str, tuple[list[list[float]], list[float]]]) -> dict[str, object]:
    return {
        "users": list(users),
        "num_samples": [len(y) for _, y in users.values()],
        "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()},
    }


def test_a_leaf_directory_of_shards_is_merged(tmp_path: Path) -> None:
    shards = tmp_path / "train"
    shards.mkdir()
    (shards / "a.json").write_text(json.dumps(_leaf({"f_0": ([[0.0, 1.0]], [3.0])})))
    (shards / "b.json").write_text(json.dumps(_leaf({"f_1": ([[2.0, 3.0], [4.0, 5.0]], [1, 2])})))

    loaded = load_leaf_json(shards)

    assert loaded.users == ["f_0", "f_1"]
    assert loaded.train["f_1"].y.tolist() == [1, 2]
    assert loaded.train["f_0"].y.tolist() == [3]
    assert loaded.test["f_0"].x.shape == (0, 2)


def test_users_in_only_one_split_get_an_empty_other_split(tmp_path: Path) -> None:
    train, test = tmp_path / "train.json", tmp_path / "test.json"
    train.write_text(json.dumps(_leaf({"a": ([[1.0]], [0])})))
    test.write_text(json.dumps(_leaf({"b": ([[2.0]], [1])})))

    loaded = load_leaf_json(train, test)

    assert loaded.users == ["a", "b"]
    assert len(loaded.train["b"]) == 0 and loaded.train["b"].x.shape == (0, 1)
    assert len(loaded.test["a"]) == 0


GOOD = _leaf({"a": ([[1.0, 2.0], [3.0, 4.0]], [0, 1])})


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"users": ["a"], "num_samples": [1]}, "missing key"),
        (GOOD | {"num_samples": [3]}, "num_samples says 3"),
        (GOOD | {"num_samples": [2, 2]}, "equal length"),
        (GOOD | {"user_data": {"a": {"x": [[1.0, 2.0], [3.0]], "y": [0, 1]}}}, "ragged"),
        (GOOD | {"user_data": {"a": {"x": [[1.0], [2.0]]}}}, "needs 'x' and 'y'"),
        (GOOD | {"user_data": {}}, "needs 'x' and 'y'"),
        (GOOD | {"user_data": {"a": {"x": [["p"], ["q"]], "y": [0, 1]}}}, "numbers only"),
        (GOOD | {"user_data": {"a": {"x": [[1.0], [2.0]], "y": [0.5, 1]}}}, "integer class"),
        ([1, 2], "JSON object"),
    ],
)
def test_malformed_leaf_files_are_refused(tmp_path: Path, document: object, message: str) -> None:
    path = tmp_path / "train.json"
    path.write_text(json.dumps(document))

    with pytest.raises(ValueError, match=message):
        load_leaf_json(path)


def test_invalid_json_and_empty_directories_are_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    empty = tmp_path / "empty"
    empty.mkdir()

    with pytest.raises(ValueError, match="not valid JSON"):
        load_leaf_json(broken)
    with pytest.raises(ValueError, match=r"no \.json files"):
        load_leaf_json(empty)
