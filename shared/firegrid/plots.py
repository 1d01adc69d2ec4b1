"""LEAF's accuracy-vs-round plot and table of the per-round summaries
(``firegrid.domain.rounds``, re-exported here for the operator verbs and notebooks).

matplotlib is imported only when drawing, and ``plot_accuracy`` renders through the
Agg canvas directly, so it never changes pyplot's backend (a notebook keeps its inline
one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from firegrid.domain.rounds import RoundStat, round_stats

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "Heldout",
    "RoundStat",
    "draw_accuracy",
    "format_table",
    "plot_accuracy",
    "plot_accuracy_vs_time",
    "round_stats",
]

Heldout = Sequence[tuple[int, float]]
"""(round, accuracy of that round's checkpoint on the held-out set)."""


TABLE_HEADER = ("round", "devices", "samples", "weighted acc", "p10", "p90", "mean loss")


def format_table(stats: Sequence[RoundStat]) -> str:
    """Fixed-width columns, one line per round, for a terminal."""
    lines = ["{:>5}  {:>7}  {:>7}  {:>12}  {:>5}  {:>5}  {:>9}".format(*TABLE_HEADER)]
    for stat in stats:
        loss = "-" if stat.mean_loss is None else f"{stat.mean_loss:.4f}"
        lines.append(
            f"{stat.round:>5}  {stat.devices:>7}  {stat.samples:>7}  "
            f"{stat.weighted_accuracy:>12.4f}  {stat.p10:>5.3f}  {stat.p90:>5.3f}  {loss:>9}"
        )
    return "\n".join(lines)


def draw_accuracy(
    ax: Axes, stats: Sequence[RoundStat], *, title: str, heldout: Heldout | None = None
) -> None:
    """Draw the accuracy-vs-round plot on ``ax``; the notebook uses this with pyplot."""
    from matplotlib.ticker import MaxNLocator

    rounds = [stat.round for stat in stats]
    ax.fill_between(
        rounds,
        [stat.p10 for stat in stats],
        [stat.p90 for stat in stats],
        alpha=0.25,
        label="device accuracy, 10th-90th percentile",
    )
    ax.plot(
        rounds,
        [stat.weighted_accuracy for stat in stats],
        marker="o",
        label="device accuracy, sample-weighted",
    )
    if heldout:
        ax.plot(
            [round_ for round_, _ in heldout],
            [accuracy for _, accuracy in heldout],
            marker="s",
            linestyle="--",
            label="held-out accuracy of checkpoint",
        )
    ax.set(title=title, xlabel="round (cycle)", ylabel="accuracy", ylim=(0.0, 1.0))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")


def plot_accuracy(
    stats: Sequence[RoundStat], out: Path, *, title: str, heldout: Heldout | None = None
) -> Path:
    """Save the accuracy-vs-round plot as a PNG at ``out``; return ``out``."""
    figure = _figure((7, 4.5))
    draw_accuracy(figure.add_subplot(), stats, title=title, heldout=heldout)
    return _save(figure, out, dpi=120)


Curve = Sequence[tuple[float, float]]
"""(seconds since training started, held-out accuracy of the checkpoint seen then)."""


def plot_accuracy_vs_time(
    curves: Mapping[str, Curve], out: Path, *, title: str, target: float | None = None
) -> Path:
    """One line per setting, accuracy against wall time, as a small PNG at ``out``."""
    figure = _figure((6.4, 3.8))
    ax = figure.add_subplot()
    for label, curve in curves.items():
        ax.plot([t for t, _ in curve], [a for _, a in curve], marker=".", label=label)
    if target is not None:
        ax.axhline(target, color="grey", linestyle=":", linewidth=1, label=f"{target:.0%}")
    ax.set(title=title, xlabel="wall time since training started (s)", ylabel="held-out accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(figure, out, dpi=100)


def _figure(size: tuple[float, float]) -> Figure:
    """A figure on its own Agg canvas, so pyplot's backend is never touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, out: Path, *, dpi: int) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png", dpi=dpi)
    return out
