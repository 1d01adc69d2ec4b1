"""Aggregating diffs into the next checkpoint: one pure rule per method, one signature.

A rule folds a cycle's diffs into a ``Step``: the averaged diff (float64) and its
totals. The diffs come as ``DiffSources`` (the service reads them from storage;
``held`` wraps diffs already in memory), so no rule does I/O and none holds every
diff at once:

* ``fedavg`` and ``mean`` stream: each diff is read whole, folded into a running
  float64 sum and dropped, so memory is O(model) however many devices report: the
  sum (2x a float32 model), the one diff being folded (1x, numpy views over the
  bytes as received) and a small scratch. The fold goes ``FOLD_CHUNK`` coordinates
  at a time, so that the scratch, the piece of the sum and the piece of the diff
  stay in a core's cache and each byte of the sum crosses the memory bus once per
  diff (``bench/aggregation.py`` measures it against plain numpy loops and Flower).
* ``median`` and ``trimmed_mean`` need every diff's value per coordinate. They go
  through the model in slices of coordinates (tensors in order, a large tensor cut
  in pieces), reading only that slice of every diff, so memory is
  O(K x slice + model) with ``K x slice x 8 bytes <= SLICE_BUDGET_BYTES``, whatever
  K is. Per coordinate the arithmetic is the whole-array one, so the result is
  exactly numpy's median / trimmed mean of the stacked diffs.

With PyGrid's diff convention ``diff = before - after`` the update is
``new = old - server_lr * step``; with ``fedavg`` and ``server_lr = 1`` that is
exactly LEAF's ``sum(n_k * w_k) / sum(n_k)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from firegrid.domain.errors import FireGridError

StateDict = dict[str, npt.NDArray[np.generic]]
Tensors = Mapping[str, npt.NDArray[np.generic]]
Floats = npt.NDArray[np.float64]

FOLD_CHUNK = 2**15
"""Coordinates folded at a time: a 256 KiB float64 scratch, which with the matching
pieces of the sum and of the diff fits a core's L2 cache."""

SLICE_BUDGET_BYTES = 64 * 2**20
"""The robust rules' float64 stack of one slice (K diffs x slice coordinates x 8 bytes);
their working set is about twice that (the sort or partition copy)."""


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

    @property
    def streams(self) -> bool:
        """Reads each diff once, whole (memory O(model)); else in coordinate slices."""
        return self in (Aggregation.FEDAVG, Aggregation.MEAN)


@dataclass(frozen=True, kw_only=True)
class Contribution:
    diff: Tensors
    weight: float
    """The report's FedAvg weight: its sample count, capped by ``fedavg_weights``."""


@dataclass(frozen=True)
class Piece:
    """Coordinates ``[start, stop)`` of one tensor, flattened (C order)."""

    name: str
    start: int
    stop: int


Slice = tuple[Piece, ...]


class DiffReader(Protocol):
    """One usable diff, read a slice at a time."""

    @property
    def weight(self) -> float: ...

    def read(self, pieces: Slice) -> Floats:
        """The pieces' values, one after the other, as float64; ``UnusableDiff`` if the
        diff can no longer be read there or is not finite there."""
        ...


@runtime_checkable
class DiffSources(Protocol):
    """A cycle's diffs, for a rule to read one way or the other."""

    def whole(self) -> Iterable[Contribution]:
        """Each usable diff, whole, one at a time (the streaming rules)."""
        ...

    def sliced(self) -> Sequence[DiffReader]:
        """Every usable diff as a slice reader (the robust rules). After a reader raised
        ``UnusableDiff``, the next call leaves that diff out."""
        ...


@dataclass(frozen=True, kw_only=True)
class Step:
    """What a rule made of a cycle's contributions."""

    delta: dict[str, Floats]
    """The averaged diff, subtracted from the checkpoint (times ``server_lr``)."""
    num_diffs: int
    total_weight: float
    within_clip: int | None = None
    """``clip_norm``: the diffs whose norm was at most it (adaptive clipping's count)."""


@dataclass(frozen=True, kw_only=True)
class Options:
    trim_fraction: float = 0.1
    """``trimmed_mean``: fraction cut from each end."""


class AggregationFailed(FireGridError):
    """The diffs of a cycle could not be aggregated: a server-side failure, not the
    caller's (no device request ever aggregates)."""

    default_code = "aggregation_failed"


class UnusableDiff(FireGridError):
    """A diff found unusable half-way through a sliced rule (its object changed or
    vanished since it was checked): the rule starts again without it."""

    default_code = "invalid_diff"


Rule = Callable[[Tensors, DiffSources, Options], Step]


def _check_keys(reference: Mapping[str, object], diff: Mapping[str, object]) -> None:
    if set(reference) != set(diff):
        missing = sorted(set(reference) - set(diff))
        extra = sorted(set(diff) - set(reference))
        raise AggregationFailed(f"diff keys differ: missing {missing}, unexpected {extra}")


def _check_shape(name: str, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if shape != expected:
        raise AggregationFailed(f"diff '{name}' has shape {shape}, not {expected}")


def _chunks(size: int) -> Iterator[slice]:
    """``[0, size)`` in runs of ``FOLD_CHUNK``."""
    return (slice(start, start + FOLD_CHUNK) for start in range(0, size, FOLD_CHUNK))


def _scratch(template: Tensors) -> Floats:
    return np.empty(min(FOLD_CHUNK, max((t.size for t in template.values()), default=0)))


def _fold(total: Floats, values: npt.NDArray[np.generic], weight: float, scratch: Floats) -> None:
    """``total += weight * values`` in float64 (flat arrays), without temporaries: numpy's
    one-liner allocates the product (twice the tensor's float32 bytes) for every diff."""
    for run in _chunks(total.size):
        part = total[run]
        product = scratch[: part.size]
        np.copyto(product, values[run])  # a plain cast, faster than the ufunc's buffered one
        np.multiply(product, weight, out=product)
        np.add(part, product, out=part)


def _fold_diff(
    total: dict[str, Floats], diff: Tensors, weight: float, template: Tensors, scratch: Floats
) -> None:
    _check_keys(total, diff)
    for name, acc in total.items():
        values = diff[name]
        _check_shape(name, values.shape, template[name].shape)
        _fold(acc, values.reshape(-1), weight, scratch)


Weigh = Callable[[Contribution], tuple[float, float]]
"""A diff's factor in the sum and its share of the total weight divided by."""


def _weighted_sum(template: Tensors, contributions: Iterable[Contribution], weigh: Weigh) -> Step:
    """The running float64 sum of ``factor * diff``, divided by the total weight."""
    total = {k: np.zeros(v.size, dtype=np.float64) for k, v in template.items()}
    scratch = _scratch(template)
    total_weight, count = 0.0, 0
    for contribution in contributions:
        factor, weight = weigh(contribution)
        _fold_diff(total, contribution.diff, factor, template, scratch)
        total_weight += weight
        count += 1
        del contribution  # the loop fetches the next diff before it rebinds this name
    if count == 0 or total_weight <= 0:
        raise AggregationFailed("no diffs to aggregate")
    delta = {}
    for name, acc in total.items():
        np.divide(acc, total_weight, out=acc)
        delta[name] = acc.reshape(template[name].shape)
    return Step(delta=delta, num_diffs=count, total_weight=total_weight)


def fedavg(template: Tensors, sources: DiffSources, options: Options) -> Step:
    return _weighted_sum(template, sources.whole(), lambda c: (c.weight, c.weight))


def mean(template: Tensors, sources: DiffSources, options: Options) -> Step:
    return _weighted_sum(template, sources.whole(), lambda c: (1.0, 1.0))


def clipped_mean(template: Tensors, sources: DiffSources, clip_norm: float) -> Step:
    """DP-FedAvg's average: each diff scaled to L2 norm at most ``clip_norm`` (over all its
    tensors), then the uniform mean, so one diff moves it by at most ``clip_norm / m``.
    Counts the diffs left as they were, for adaptive clipping's quantile estimate."""
    within = 0

    def weigh(contribution: Contribution) -> tuple[float, float]:
        nonlocal within
        factor = clip_factor(contribution.diff, clip_norm)
        within += factor == 1.0
        return factor, 1.0

    step = _weighted_sum(template, sources.whole(), weigh)
    return replace(step, within_clip=within)


def clip_factor(diff: Tensors, clip_norm: float) -> float:
    """The scale that brings the diff's L2 norm (over every tensor) to at most ``clip_norm``."""
    squares = 0.0
    for tensor in diff.values():
        flat = tensor.reshape(-1)
        for run in _chunks(flat.size):  # float64 a chunk at a time: no model-sized copy
            part = flat[run].astype(np.float64)
            squares += float(np.dot(part, part))
    norm = math.sqrt(squares)
    return 1.0 if norm <= clip_norm else clip_norm / norm


def slices(template: Tensors, width: int) -> Iterator[Slice]:
    """The model's coordinates in runs of at most ``width``: tensors in order, small
    ones sharing a run, a large one cut across several."""
    pieces: list[Piece] = []
    room = width
    for name, tensor in template.items():
        start = 0
        while start < tensor.size:
            stop = min(tensor.size, start + room)
            pieces.append(Piece(name, start, stop))
            room -= stop - start
            start = stop
            if room == 0:
                yield tuple(pieces)
                pieces, room = [], width
    if pieces:
        yield tuple(pieces)


def slice_width(num_diffs: int) -> int:
    """Coordinates per slice so that the float64 stack of ``num_diffs`` diffs fits the budget."""
    return max(1, SLICE_BUDGET_BYTES // (8 * max(1, num_diffs)))


Reduce = Callable[[Floats], Floats]
"""Coordinate-wise: a (diffs x coordinates) stack to one value per coordinate."""


def _reduce_in_slices(template: Tensors, readers: Sequence[DiffReader], reduce: Reduce) -> Step:
    flat = {name: np.empty(t.size, dtype=np.float64) for name, t in template.items()}
    for run in slices(template, slice_width(len(readers))):
        stack = np.empty((len(readers), sum(p.stop - p.start for p in run)), dtype=np.float64)
        for row, reader in zip(stack, readers, strict=True):
            row[:] = reader.read(run)
        values, offset = reduce(stack), 0
        for piece in run:
            end = offset + piece.stop - piece.start
            flat[piece.name][piece.start : piece.stop] = values[offset:end]
            offset = end
    delta = {name: flat[name].reshape(t.shape) for name, t in template.items()}
    return Step(delta=delta, num_diffs=len(readers), total_weight=float(len(readers)))


def _coordinatewise(template: Tensors, sources: DiffSources, reduce: Reduce) -> Step:
    """``reduce`` over every coordinate; started again without a diff found unusable
    half-way (each restart has one diff fewer, so it ends)."""
    failed_with: int | None = None
    while True:
        readers = sources.sliced()
        if not readers:
            raise AggregationFailed("no diffs to aggregate")
        if failed_with is not None and len(readers) >= failed_with:
            raise AggregationFailed("an unusable diff was not left out")
        try:
            return _reduce_in_slices(template, readers, reduce)
        except UnusableDiff:
            failed_with = len(readers)


def _median(stack: Floats) -> Floats:
    return np.median(stack, axis=0)


def median(template: Tensors, sources: DiffSources, options: Options) -> Step:
    return _coordinatewise(template, sources, _median)


def trimmed_cut(num_diffs: int, trim_fraction: float) -> int:
    """Values cut from each end of every coordinate."""
    return int(trim_fraction * num_diffs)


def trimmed_mean(template: Tensors, sources: DiffSources, options: Options) -> Step:
    def reduce(stack: Floats) -> Floats:
        count = len(stack)
        cut = trimmed_cut(count, options.trim_fraction)
        kept: Floats = np.sort(stack, axis=0)[cut : count - cut].mean(axis=0)
        return kept

    step = _coordinatewise(template, sources, reduce)
    cut = trimmed_cut(step.num_diffs, options.trim_fraction)
    return Step(
        delta=step.delta, num_diffs=step.num_diffs, total_weight=float(step.num_diffs - 2 * cut)
    )


@dataclass(frozen=True)
class _HeldReader:
    diff: Tensors
    weight: float

    def read(self, pieces: Slice) -> Floats:
        return np.concatenate(
            [self.diff[p.name].reshape(-1)[p.start : p.stop].astype(np.float64) for p in pieces]
        )


class HeldDiffs:
    """Diffs already in memory as ``DiffSources`` (tests, benchmarks): ``whole`` consumes
    the iterable lazily, so a generator still streams."""

    def __init__(self, template: Tensors, contributions: Iterable[Contribution]) -> None:
        self._template = template
        self._contributions = contributions
        self._held: list[_HeldReader] | None = None

    def whole(self) -> Iterable[Contribution]:
        return self._contributions

    def sliced(self) -> Sequence[DiffReader]:
        if self._held is None:
            self._held = []
            for contribution in self._contributions:
                _check_keys(self._template, contribution.diff)
                for name, tensor in self._template.items():
                    _check_shape(name, contribution.diff[name].shape, tensor.shape)
                self._held.append(_HeldReader(contribution.diff, contribution.weight))
        return self._held


RULES: Mapping[Aggregation, Rule] = {
    Aggregation.FEDAVG: fedavg,
    Aggregation.MEAN: mean,
    Aggregation.MEDIAN: median,
    Aggregation.TRIMMED_MEAN: trimmed_mean,
}


def apply_step(checkpoint: Tensors, step: Step, server_lr: float = 1.0) -> StateDict:
    """The next checkpoint, in the checkpoint's dtypes (values beyond the dtype become
    infinite; the closing refuses a checkpoint that is not finite). Computed a chunk at
    a time, so the new checkpoint is the only allocation of the model's size."""
    scratch = _scratch(checkpoint)
    updated: StateDict = {}
    with np.errstate(over="ignore"):
        for name, old in checkpoint.items():
            new = np.empty(old.shape, dtype=old.dtype)
            flat_old, flat_new = old.reshape(-1), new.reshape(-1)
            delta = step.delta[name].reshape(-1)
            for run in _chunks(old.size):
                values = scratch[: flat_new[run].size]
                np.multiply(delta[run], server_lr, out=values)
                np.subtract(flat_old[run], values, out=values, dtype=np.float64)
                flat_new[run] = values
            updated[name] = new
    return updated


def aggregate(
    checkpoint: Tensors,
    diffs: DiffSources | Iterable[Contribution],
    *,
    method: Aggregation = Aggregation.FEDAVG,
    server_lr: float = 1.0,
    trim_fraction: float = 0.1,
) -> tuple[StateDict, Step]:
    """The next checkpoint and the step that made it; ``diffs`` may be contributions
    held in memory."""
    step = combine(checkpoint, diffs, method=method, trim_fraction=trim_fraction)
    return apply_step(checkpoint, step, server_lr), step


def combine(
    checkpoint: Tensors,
    diffs: DiffSources | Iterable[Contribution],
    *,
    method: Aggregation = Aggregation.FEDAVG,
    trim_fraction: float = 0.1,
    clip_norm: float | None = None,
) -> Step:
    """The step ``method`` makes of the diffs, for ``apply_step`` or a server optimizer;
    with ``clip_norm`` (differential privacy) the clipped uniform mean instead."""
    sources = diffs if isinstance(diffs, DiffSources) else HeldDiffs(checkpoint, diffs)
    if clip_norm is not None:
        return clipped_mean(checkpoint, sources, clip_norm)
    return RULES[Aggregation(method)](checkpoint, sources, Options(trim_fraction=trim_fraction))


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
