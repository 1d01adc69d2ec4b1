"""Per-round summaries of device metrics: what ``firegrid plot`` draws and the console
charts (the function ``admin`` serves them: ``GET admin/round-stats``).

The rows are ``GET admin/training-metrics``'s ``metrics`` list.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RoundStat:
    """What the devices reported on their local test sets for one cycle."""

    round: int
    devices: int
    samples: int
    weighted_accuracy: float
    """sum(n_k * acc_k) / sum(n_k): LEAF's headline number, the accuracy over all test samples."""
    p10: float
    """10th percentile of per-device accuracy: how the worst-served devices fare."""
    p90: float
    mean_loss: float | None
    """Sample-weighted over the devices that reported a loss; None when none did."""


def _round_stat(round_: int, rows: list[Mapping[str, Any]]) -> RoundStat:
    samples = np.array([row["num_samples"] for row in rows], dtype=np.float64)
    accuracy = np.array([row["accuracy"] for row in rows], dtype=np.float64)
    with_loss = [row for row in rows if row.get("loss") is not None]
    mean_loss = None
    if with_loss:
        loss_weights = [row["num_samples"] for row in with_loss]
        mean_loss = float(np.average([row["loss"] for row in with_loss], weights=loss_weights))
    p10, p90 = np.percentile(accuracy, [10, 90])
    return RoundStat(
        round=round_,
        devices=len({row["client_id"] for row in rows}),
        samples=int(samples.sum()),
        weighted_accuracy=float(np.average(accuracy, weights=samples)),
        p10=float(p10),
        p90=float(p90),
        mean_loss=mean_loss,
    )


def round_stats(rows: Sequence[Mapping[str, Any]]) -> list[RoundStat]:
    """One ``RoundStat`` per cycle with test-set metrics, in round order.

    Train-set rows are left out: accuracy on the data a device just fitted
    says little about the model.
    """
    by_round: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("set", "test") == "test":
            by_round[int(row["cycle_id"])].append(row)
    return [_round_stat(round_, by_round[round_]) for round_ in sorted(by_round)]


@dataclass(frozen=True, kw_only=True)
class RoundsPage:
    """The summaries of the rounds one bounded read of metric rows covers."""

    stats: list[RoundStat]
    through: int
    """The last round this page accounts for: the next page starts after it."""


def rounds_page(
    rows: Sequence[Mapping[str, Any]], *, after: int, last: int, full: bool
) -> RoundsPage:
    """Summarise rows read in round order for rounds ``after+1 .. last``; ``full``: the
    read stopped at its limit, so its last round may be cut short.

    A cut round is left to the next page, unless it is the page's only round (it has
    more rows than a page holds): then it is summarised from the rows read, a sample
    of its devices (the rows of a round come in pseudonym order), so paging always
    moves on."""
    if not full:
        return RoundsPage(stats=round_stats(rows), through=last)
    rounds = sorted({int(row["cycle_id"]) for row in rows})
    if len(rounds) > 1:
        rows = [row for row in rows if int(row["cycle_id"]) != rounds[-1]]
        return RoundsPage(stats=round_stats(rows), through=rounds[-2])
    return RoundsPage(stats=round_stats(rows), through=rounds[0] if rounds else after)
