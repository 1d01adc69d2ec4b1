"""``firegrid metrics`` and ``firegrid plot``: what the devices reported, per round.

Both read ``GET admin/training-metrics`` through the operator client; the target
defaults to the local stack, ``--base-url`` and ``--token`` name a deployment.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firegrid.commands._common import CommandError, add_target_arguments, operator

if TYPE_CHECKING:
    from firegrid.plots import RoundStat

DEFAULT_PLOT = Path("accuracy_vs_round.png")


def register(subparsers: Any) -> None:
    metrics = subparsers.add_parser(
        "metrics", help="print device metrics per round (sample-weighted accuracy, percentiles)"
    )
    _process_arguments(metrics)
    metrics.add_argument(
        "--csv", action="store_true", help="print the server's LEAF CSV instead of the table"
    )
    metrics.set_defaults(handler=metrics_command)

    plot = subparsers.add_parser("plot", help="plot device accuracy vs round as a PNG")
    _process_arguments(plot)
    plot.add_argument(
        "--out", type=Path, default=DEFAULT_PLOT, help=f"PNG to write (default {DEFAULT_PLOT})"
    )
    plot.set_defaults(handler=plot_command)


def _process_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="model name (client_config.name)")
    parser.add_argument("version", help="model version (client_config.version)")
    add_target_arguments(parser)


def _test_stats(args: argparse.Namespace) -> list[RoundStat]:
    from firegrid.plots import round_stats

    stats = round_stats(operator(args).training_metrics(args.name, args.version))
    if not stats:
        raise CommandError(f"no test-set metrics for {args.name} {args.version} yet")
    return stats


def metrics_command(args: argparse.Namespace) -> int:
    from firegrid.plots import format_table

    if args.csv:
        print(operator(args).training_metrics_csv(args.name, args.version), end="")
    else:
        print(format_table(_test_stats(args)))
    return 0


def plot_command(args: argparse.Namespace) -> int:
    from firegrid.plots import plot_accuracy

    title = f"{args.name} {args.version}: device accuracy per round"
    print(plot_accuracy(_test_stats(args), args.out, title=title))
    return 0
