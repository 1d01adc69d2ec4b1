"""Aggregating diffs into the next checkpoint.

``fedavg`` and ``mean`` stream: each diff is folded into a float64 running
sum and dropped, so memory is O(model) however many devices report.
``median`` and ``trimmed_mean`` need every value per coordinate and hold all
diffs (O(diffs x model)); they exist for robustness, not for big cohorts.

With PyGrid's diff convention ``diff = before - after`` the step is
``new = old - server_lr * sum(n_k * diff_k) / sum(n_k)``; with ``server_lr = 1``
that is exactly LEAF's ``sum(n_k * w_k) / sum(n_k)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from firegrid.domain.errors import BadRequest

StateDict = dict[str, npt.NDArray[np.generic]]


@dataclass(frozen=True, kw_only=True)
class Contribution:
    diff: Mapping[str, npt.NDArray[np.generic]]
    weight: float
    """The report's FedAvg weight: its sample count, capped by ``fedavg_weights``."""


def fedavg_weights(counts: Sequence[int], max_fraction: float | None = None) -> list[float]:
    """LEAF's weights (the sample counts, as float64), none above ``max_fraction`` of the total.

    The cap is a water-filling: the largest counts are lowered to a common level ``c``
    with ``c = max_fraction * sum(min(n_k, c))``, so after capping no report holds more
    than that share and the others keep their relative weights. When no such level
    exists (fewer than ``1 / max_fraction`` reports), every report weighs the same,
    which is as close as the cap can get.
    """
    weights = [float(n) for n in counts]
    if max_fraction is None or not weights or max_fraction >= 1.0:
        return weights
    ordered = sorted(weights, reverse=True)
    rest = sum(ordered)
    for capped in range(len(ordered)):
        # The ``capped`` largest sit at level c; the others keep their counts.
        if capped > 0:
            rest -= ordered[capped - 1]
        share_left = 1.0 - capped * max_fraction
        if share_left <= 0:
            break
        level = max_fraction * rest / share_left
        below = ordered[capped] <= level
        above = capped == 0 or ordered[capped - 1] >= level
        if below and above:
            return [min(w, level) for w in weights]
    return [1.0] * len(weights)


class AggregationError(BadRequest):
    default_code = "aggregation_failed"


def _check_keys(reference: Mapping[str, object], diff: Mapping[str, object]) -> None:
    if set(reference) != set(diff):
        missing = sorted(set(reference) - set(diff))
        extra = sorted(set(diff) - set(reference))
        raise AggregationError(f"diff keys differ: missing {missing}, unexpected {extra}")


class StreamingSum:
    """Running float64 sum of weighted diffs."""

    def __init__(self, checkpoint: Mapping[str, npt.NDArray[np.generic]]) -> None:
        self._sum = {k: np.zeros(v.shape, dtype=np.float64) for k, v in checkpoint.items()}
        self.total_weight = 0.0
        self.count = 0

    def add(self, diff: Mapping[str, npt.NDArray[np.generic]], weight: float) -> None:
        _check_keys(self._sum, diff)
        for name, acc in self._sum.items():
            update = diff[name]
            if update.shape != acc.shape:
                raise AggregationError(f"diff '{name}' has shape {update.shape}, not {acc.shape}")
            acc += weight * update.astype(np.float64, copy=False)
        self.total_weight += weight
        self.count += 1

    def mean(self) -> dict[str, npt.NDArray[np.float64]]:
        if self.count == 0 or self.total_weight <= 0:
            raise AggregationError("no diffs to aggregate")
        return {k: v / self.total_weight for k, v in self._sum.items()}


def _robust_mean(
    checkpoint: Mapping[str, npt.NDArray[np.generic]],
    contributions: Iterable[Contribution],
    method: str,
    trim_fraction: float,
) -> dict[str, npt.NDArray[np.float64]]:
    stacks: dict[str, list[npt.NDArray[np.float64]]] = {k: [] for k in checkpoint}
    for contribution in contributions:
        _check_keys(checkpoint, contribution.diff)
        for name, values in stacks.items():
            values.append(contribution.diff[name].astype(np.float64))
    if not any(stacks.values()):
        raise AggregationError("no diffs to aggregate")
    result: dict[str, npt.NDArray[np.float64]] = {}
    for name, values in stacks.items():
        stacked = np.stack(values)
        if method == "median":
            result[name] = np.median(stacked, axis=0)
        else:
            cut = int(trim_fraction * len(values))
            ordered = np.sort(stacked, axis=0)
            result[name] = ordered[cut : len(values) - cut].mean(axis=0)
    return result


def aggregate(
    checkpoint: Mapping[str, npt.NDArray[np.generic]],
    contributions: Iterable[Contribution],
    *,
    method: str = "fedavg",
    server_lr: float = 1.0,
    trim_fraction: float = 0.1,
) -> tuple[StateDict, int]:
    """The next checkpoint (in the checkpoint's dtypes) and how many diffs went in."""
    if method in ("fedavg", "mean"):
        running = StreamingSum(checkpoint)
        for contribution in contributions:
            weight = contribution.weight if method == "fedavg" else 1.0
            running.add(contribution.diff, weight)
        step, count = running.mean(), running.count
    elif method in ("median", "trimmed_mean"):
        materialised = list(contributions)
        step, count = (
            _robust_mean(checkpoint, materialised, method, trim_fraction),
            len(materialised),
        )
    else:
        raise AggregationError(f"unknown aggregation '{method}'")
    updated: StateDict = {
        name: (old.astype(np.float64) - server_lr * step[name]).astype(old.dtype)
        for name, old in checkpoint.items()
    }
    return updated, count
