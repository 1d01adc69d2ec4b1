"""Federated datasets for simulated devices: non-IID digits, LEAF's Synthetic, LEAF JSON.

Everything here is numpy; a dataset is plain arrays per user so the simulator,
the plots and the tests need no framework. scikit-learn is imported only by
``digits_federated``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MIN_DEVICE_SAMPLES = 8
"""Fewest samples a digits device holds, so each has a local train and test split."""
SYNTHETIC_MAX_SAMPLES = 1000
"""Cap on LEAF's lognormal device size; its tail otherwise reaches tens of thousands."""
SYNTHETIC_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class ClientData:
    """One device's samples."""

    x: np.ndarray
    """float32 features, shape (n, d)."""
    y: np.ndarray
    """int64 labels, shape (n,)."""

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or self.y.ndim != 1 or len(self.x) != len(self.y):
            raise ValueError(
                f"ClientData needs x (n, d) and y (n,), got {self.x.shape} and {self.y.shape}"
            )

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class FederatedDataset:
    """Per-user train and local test splits, LEAF's layout in memory."""

    users: list[str]
    train: dict[str, ClientData]
    test: dict[str, ClientData]
    """Each user's local test split (may be empty)."""

    def num_samples(self, user: str) -> int:
        """Train samples: the weight of the user's diff in FedAvg."""
        return len(self.train[user])


def _client(x: np.ndarray, y: np.ndarray) -> ClientData:
    return ClientData(np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64))


def _user_name(index: int) -> str:
    return f"f_{index:05d}"


def _split_local(
    x: np.ndarray, y: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[ClientData, ClientData]:
    """Shuffle, then cut a test split that always leaves at least one train sample."""
    order = rng.permutation(len(y))
    num_test = min(round(len(y) * test_fraction), len(y) - 1)
    test, train = order[:num_test], order[num_test:]
    return _client(x[train], y[train]), _client(x[test], y[test])


def _federate(
    parts: Iterable[tuple[np.ndarray, np.ndarray]], test_fraction: float, rng: np.random.Generator
) -> FederatedDataset:
    users: list[str] = []
    train: dict[str, ClientData] = {}
    test: dict[str, ClientData] = {}
    for index, (x, y) in enumerate(parts):
        user = _user_name(index)
        users.append(user)
        train[user], test[user] = _split_local(x, y, test_fraction, rng)
    return FederatedDataset(users, train, test)


# Digits with Dirichlet label skew.


def _stratified_holdout(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) indices; each class loses the same share, so the test set is balanced."""
    held: list[np.ndarray] = []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        held.append(members[: round(len(members) * fraction)])
    held_out = np.sort(np.concatenate(held))
    kept = np.setdiff1d(np.arange(len(y)), held_out)
    return kept, held_out


def dirichlet_partition(
    labels: np.ndarray,
    num_devices: int,
    alpha: float,
    rng: np.random.Generator,
    min_samples: int = MIN_DEVICE_SAMPLES,
) -> list[np.ndarray]:
    """Positions into ``labels`` per device: each class spread by Dirichlet(alpha) proportions.

    Small alpha gives each device few classes (the classic non-IID benchmark
    partition). Devices left below ``min_samples`` are topped up from the
    largest device, deterministically, instead of re-drawing: re-drawing can
    loop for a long time at small alpha with many devices.
    """
    if num_devices * min_samples > len(labels):
        raise ValueError(
            f"{len(labels)} samples cannot give {num_devices} devices {min_samples} each"
        )
    devices: list[list[int]] = [[] for _ in range(num_devices)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(num_devices, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
        for device, chunk in zip(devices, np.split(members, cuts), strict=True):
            device.extend(chunk.tolist())
    _top_up(devices, min_samples)
    return [np.array(sorted(device), dtype=np.int64) for device in devices]


def _top_up(devices: list[list[int]], min_samples: int) -> None:
    for device in devices:
        while len(device) < min_samples:
            largest = max(devices, key=len)
            device.append(largest.pop())


def digits_federated(
    num_devices: int = 50,
    alpha: float = 0.5,
    seed: int = 0,
    holdout_fraction: float = 0.2,
    local_test_fraction: float = 0.2,
) -> tuple[FederatedDataset, ClientData]:
    """scikit-learn's handwritten digits across devices with label skew, plus a held-out set.

    The held-out set (stratified, seen by no device) measures checkpoints; each
    device's own test split measures what federated evaluation reports. Every
    sample lands in exactly one place.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    kept, held_out = _stratified_holdout(y, holdout_fraction, rng)
    devices = dirichlet_partition(y[kept], num_devices, alpha, rng)
    parts = ((x[kept[positions]], y[kept[positions]]) for positions in devices)
    dataset = _federate(parts, local_test_fraction, rng)
    return dataset, _client(x[held_out], y[held_out])


# LEAF's Synthetic(alpha, beta).


def _synthetic_sizes(num_users: int, rng: np.random.Generator) -> np.ndarray:
    """LEAF's power law: lognormal(4, 2) + 50 samples, capped to keep simulations small."""
    sizes = rng.lognormal(4, 2, num_users).astype(np.int64) + 50
    return np.minimum(sizes, SYNTHETIC_MAX_SAMPLES)


def synthetic(
    alpha: float = 1.0,
    beta: float = 1.0,
    num_users: int = 30,
    seed: int = 0,
    num_features: int = 60,
    num_classes: int = 10,
    iid: bool = False,
) -> FederatedDataset:
    """Synthetic(alpha, beta) of the FedProx paper (Li et al. 2020, section 5.1).

    ``alpha`` controls how much the local models (W_k, b_k) differ between
    devices, ``beta`` how much their inputs do. As in the reference generator,
    alpha and beta are standard deviations. The iid variant shares one model
    and draws every device's inputs around zero.
    """
    rng = np.random.default_rng(seed)
    sizes = _synthetic_sizes(num_users, rng)
    std_x = np.arange(1, num_features + 1, dtype=np.float64) ** -0.6  # Sigma_jj = j^-1.2
    shared_w = rng.normal(0, 1, (num_features, num_classes))
    shared_b = rng.normal(0, 1, num_classes)
    model_means = rng.normal(0, alpha, num_users)
    input_centres = rng.normal(0, beta, num_users)
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    for user in range(num_users):
        if iid:
            w, b, v = shared_w, shared_b, np.zeros(num_features)
        else:
            w = rng.normal(model_means[user], 1, (num_features, num_classes))
            b = rng.normal(model_means[user], 1, num_classes)
            v = rng.normal(input_centres[user], 1, num_features)
        x = v + rng.standard_normal((sizes[user], num_features)) * std_x
        # argmax of softmax(z) is argmax of z; the softmax only matters for sampling.
        parts.append((x, np.argmax(x @ w + b, axis=1)))
    return _federate(parts, SYNTHETIC_TEST_FRACTION, rng)


# LEAF JSON files.


def _leaf_document(dataset: FederatedDataset, split: dict[str, ClientData]) -> dict[str, Any]:
    return {
        "users": list(dataset.users),
        "num_samples": [len(split[user]) for user in dataset.users],
        "user_data": {
            user: {"x": split[user].x.tolist(), "y": split[user].y.tolist()}
            for user in dataset.users
        },
    }


def write_leaf_json(dataset: FederatedDataset, directory: Path) -> tuple[Path, Path]:
    """Write ``train.json`` and ``test.json`` in LEAF's format; return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = (directory / "train.json", directory / "test.json")
    for path, split in zip(paths, (dataset.train, dataset.test), strict=True):
        path.write_text(json.dumps(_leaf_document(dataset, split)))
    return paths


def _as_matrix(raw: object, where: str) -> np.ndarray:
    if not isinstance(raw, list):
        raise ValueError(f"{where}: 'x' must be a list of rows")
    if not raw:
        return np.zeros((0, 0), dtype=np.float32)
    widths = {len(row) if isinstance(row, list) else -1 for row in raw}
    if len(widths) != 1 or -1 in widths:
        raise ValueError(f"{where}: 'x' is ragged (row lengths {sorted(widths)})")
    try:
        return np.array(raw, dtype=np.float32)
    except (ValueError, TypeError):
        raise ValueError(f"{where}: 'x' must hold numbers only") from None


def _as_labels(raw: object, where: str) -> np.ndarray:
    """LEAF writes labels as ints or as floats like 3.0; both are accepted, 2.5 is not."""
    if not isinstance(raw, list):
        raise ValueError(f"{where}: 'y' must be a list")
    try:
        values = np.array(raw, dtype=np.float64).reshape(-1)
    except (ValueError, TypeError):
        raise ValueError(f"{where}: 'y' must hold numbers only") from None
    if len(values) != len(raw) or not np.all(np.equal(np.mod(values, 1), 0)):
        raise ValueError(f"{where}: 'y' must hold integer class labels")
    return values.astype(np.int64)


def _parse_leaf(document: object, source: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if not isinstance(document, dict):
        raise ValueError(f"{source}: a LEAF file is a JSON object")
    missing = [key for key in ("users", "num_samples", "user_data") if key not in document]
    if missing:
        raise ValueError(f"{source}: missing key(s) {', '.join(missing)}")
    users, counts, user_data = document["users"], document["num_samples"], document["user_data"]
    if not isinstance(users, list) or not isinstance(counts, list) or len(users) != len(counts):
        raise ValueError(f"{source}: 'users' and 'num_samples' must be lists of equal length")
    if not isinstance(user_data, dict):
        raise ValueError(f"{source}: 'user_data' must be an object")
    parsed: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for user, count in zip(users, counts, strict=True):
        entry = user_data.get(user)
        if not isinstance(entry, dict) or "x" not in entry or "y" not in entry:
            raise ValueError(f"{source}: user_data[{user!r}] needs 'x' and 'y'")
        where = f"{source}: user {user!r}"
        x, y = _as_matrix(entry["x"], where), _as_labels(entry["y"], where)
        if not len(x) == len(y) == count:
            raise ValueError(
                f"{where}: num_samples says {count}, x has {len(x)} rows, y has {len(y)}"
            )
        parsed[str(user)] = (x, y)
    return parsed


def _leaf_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise ValueError(f"{path}: no .json files in this LEAF directory")
        return files
    return [path]


def _read_leaf(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One LEAF file, or a directory of shards (LEAF splits large datasets) merged."""
    merged: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for file in _leaf_files(Path(path)):
        try:
            document = json.loads(file.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{file}: not valid JSON ({error})") from None
        for user, data in _parse_leaf(document, file).items():
            if user in merged:
                raise ValueError(f"{file}: user {user!r} appears in more than one shard")
            merged[user] = data
    return merged


def _feature_width(*splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> int:
    widths = {x.shape[1] for split in splits for x, _ in split.values() if len(x)}
    if len(widths) > 1:
        raise ValueError(f"users disagree on the number of features: {sorted(widths)}")
    return widths.pop() if widths else 0


def load_leaf_json(train_path: Path, test_path: Path | None = None) -> FederatedDataset:
    """Load LEAF train (and test) data; each path is a JSON file or a directory of shards.

    A user present in only one split (LEAF's by-user split) gets an empty
    split on the other side, so every user has both.
    """
    train_raw = _read_leaf(train_path)
    test_raw = _read_leaf(test_path) if test_path is not None else {}
    width = _feature_width(train_raw, test_raw)
    users = list(train_raw) + [user for user in test_raw if user not in train_raw]
    return FederatedDataset(
        users,
        {user: _user_split(train_raw, user, width) for user in users},
        {user: _user_split(test_raw, user, width) for user in users},
    )


def _user_split(raw: dict[str, tuple[np.ndarray, np.ndarray]], user: str, width: int) -> ClientData:
    """Absent and empty users get a (0, width) x, so every split has the same feature width."""
    x, y = raw.get(user, (np.zeros((0, width)), np.zeros(0)))
    return _client(x if len(y) else np.zeros((0, width)), y)
