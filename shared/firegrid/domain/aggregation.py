"""Aggregating diffs into the next checkpoint: one pure rule per method, one signature.

A rule folds the cycle's contributions into a ``Step``: the averaged diff (float64)
and its totals. ``fedavg`` and ``mean`` stream: each diff is folded into a running
sum and dropped, so memory is O(model) however many devices report. ``median``
and ``trimmed_mean`` need every value per coordinate and hold all diffs
(O(diffs x model)); they exist for robustness, not for big cohorts.

With PyGrid's diff convention ``diff = before - after`` the update is
``new = old - server_lr * step``; with ``fedavg`` and ``server_lr = 1`` that is
exactly LEAF's ``sum(n_k * w_k) / sum(n_k)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from firegrid.domain.errors import FireGridError

StateDict = dict[str, npt.NDArray[np.generic]]
Tensors = Mapping[str, npt.NDArray[np.generic]]


class Aggregation(StrEnum):
    """``server_config.aggregation``."""

    FEDAVG = "fedavg"
    """LEAF's sample-weighted average."""
    MEAN = "mean"
    """PyGrid's plain average."""
    MEDIAN = "median"
    """Coordinate-wise median."""
    TRIMMED_MEAN = "trimmed_mean"
    """Coordinate-wise mean without ``trim_fraction`` of each end."""


@dataclass(frozen=True, kw_only=True)
class Contribution:
    diff: Tensors
    weight: float
    """The report's FedAvg weight: its sample count, capped by ``fedavg_weights``."""


@dataclass(frozen=True, kw_only=True)
class Step:
    """What a rule made of a cycle's contributions."""

    delta: dict[str, npt.NDArray[np.float64]]
    """The averaged diff, subtracted from the checkpoint (times ``server_lr``)."""
    num_diffs: int
    total_weight: float


@dataclass(frozen=True, kw_only=True)
class Options:
    trim_fraction: float = 0.1
    """``trimmed_mean``: fraction cut from each end."""


class AggregationFailed(FireGridError):
    """The diffs of a cycle could not be aggregated: a server-side failure, not the
    caller's (no device request ever aggregates)."""

    default_code = "aggregation_failed"


Rule = Callable[[Tensors, Iterable[Contribution], Options], Step]


def _check_keys(reference: Mapping[str, object], diff: Mapping[str, object]) -> None:
    if set(reference) != set(diff):
        missing = sorted(set(reference) - set(diff))
        extra = sorted(set(diff) - set(reference))
        raise AggregationFailed(f"diff keys differ: missing {missing}, unexpected {extra}")


def _weighted_sum(
    template: Tensors, contributions: Iterable[Contribution], weigh: Callable[[float], float]
) -> Step:
    """The running float64 sum of ``weigh(weight) * diff``, divided by the total weight."""
    total = {k: np.zeros(v.shape, dtype=np.float64) for k, v in template.items()}
    total_weight, count = 0.0, 0
    for contribution in contributions:
        _check_keys(total, contribution.diff)
        weight = weigh(contribution.weight)
        for name, acc in total.items():
            update = contribution.diff[name]
            if update.shape != acc.shape:
                raise AggregationFailed(f"diff '{name}' has shape {update.shape}, not {acc.shape}")
            acc += weight * update.astype(np.float64, copy=False)
        total_weight += weight
        count += 1
    if count == 0 or total_weight <= 0:
        raise AggregationFailed("no diffs to aggregate")
    delta = {k: v / total_weight for k, v in total.items()}
    return Step(delta=delta, num_diffs=count, total_weight=total_weight)


def fedavg(template: Tensors, contributions: Iterable[Contribution], options: Options) -> Step:
    return _weighted_sum(template, contributions, lambda weight: weight)


def mean(template: Tensors, contributions: Iterable[Contribution], options: Options) -> Step:
    return _weighted_sum(template, contributions, lambda weight: 1.0)


def _stacked(
    template: Tensors, contributions: Iterable[Contribution]
) -> tuple[dict[str, npt.NDArray[np.float64]], int]:
    columns: dict[str, list[npt.NDArray[np.float64]]] = {k: [] for k in template}
    count = 0
    for contribution in contributions:
        _check_keys(template, contribution.diff)
        for name, values in columns.items():
            values.append(contribution.diff[name].astype(np.float64))
        count += 1
    if count == 0:
        raise AggregationFailed("no diffs to aggregate")
    return {name: np.stack(values) for name, values in columns.items()}, count


def median(template: Tensors, contributions: Iterable[Contribution], options: Options) -> Step:
    stacked, count = _stacked(template, contributions)
    delta = {name: np.median(values, axis=0) for name, values in stacked.items()}
    return Step(delta=delta, num_diffs=count, total_weight=float(count))


def trimmed_mean(
    template: Tensors, contributions: Iterable[Contribution], options: Options
) -> Step:
    stacked, count = _stacked(template, contributions)
    cut = int(options.trim_fraction * count)
    delta = {
        name: np.sort(values, axis=0)[cut : count - cut].mean(axis=0)
        for name, values in stacked.items()
    }
    return Step(delta=delta, num_diffs=count, total_weight=float(count - 2 * cut))


RULES: Mapping[Aggregation, Rule] = {
    Aggregation.FEDAVG: fedavg,
    Aggregation.MEAN: mean,
    Aggregation.MEDIAN: median,
    Aggregation.TRIMMED_MEAN: trimmed_mean,
}


def apply_step(checkpoint: Tensors, step: Step, server_lr: float = 1.0) -> StateDict:
    """The next checkpoint, in the checkpoint's dtypes (values beyond the dtype become
    infinite; the closing refuses a checkpoint that is not finite)."""
    with np.errstate(over="ignore"):
        return {
            name: (old.astype(np.float64) - server_lr * step.delta[name]).astype(old.dtype)
            for name, old in checkpoint.items()
        }


def aggregate(
    checkpoint: Tensors,
    contributions: Iterable[Contribution],
    *,
    method: Aggregation = Aggregation.FEDAVG,
    server_lr: float = 1.0,
    trim_fraction: float = 0.1,
) -> tuple[StateDict, Step]:
    """The next checkpoint and the step that made it."""
    step = RULES[Aggregation(method)](
        checkpoint, contributions, Options(trim_fraction=trim_fraction)
    )
    return apply_step(checkpoint, step, server_lr), step


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
