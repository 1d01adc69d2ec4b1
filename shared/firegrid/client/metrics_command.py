"""``firegrid metrics`` and ``firegrid plot``: what the devices reported, per round.

Both read ``GET admin/training-metrics``. The connection defaults to the local
stack (``.firegrid/stack.json``); ``--base-url`` and ``--token`` point them at
any deployment.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firegrid.local.stack import DEFAULT_DIR

if TYPE_CHECKING:
    import requests

    from firegrid.client.plots import RoundStat

HTTP_TIMEOUT_S = 30.0
DEFAULT_PLOT = Path("accuracy_vs_round.png")
TABLE_HEADER = ("round", "devices", "samples", "weighted acc", "p10", "p90", "mean loss")


class MetricsFetchError(Exception):
    """The metrics could not be fetched; the message is meant for the operator."""


@dataclass(frozen=True)
class Connection:
    base_url: str
    token: str


def register(subparsers: Any) -> None:
    """Both verbs, for a ``COMMANDS`` table that lists this module once."""
    register_metrics(subparsers)
    register_plot(subparsers)


def register_metrics(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "metrics", help="print device metrics per round (sample-weighted accuracy, percentiles)"
    )
    _add_process_arguments(parser)
    parser.add_argument(
        "--csv", action="store_true", help="print the server's LEAF CSV instead of the table"
    )
    parser.set_defaults(handler=metrics_command)


def register_plot(subparsers: Any) -> None:
    parser = subparsers.add_parser("plot", help="plot device accuracy vs round as a PNG")
    _add_process_arguments(parser)
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_PLOT, help=f"PNG to write (default {DEFAULT_PLOT})"
    )
    parser.set_defaults(handler=plot_command)


def _add_process_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="model name (client_config.name)")
    parser.add_argument("version", help="model version (client_config.version)")
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help="state directory (default .firegrid)"
    )
    parser.add_argument("--base-url", help="functions base URL (default: the local stack's)")
    parser.add_argument("--token", help="admin bearer token (default: the local stack's)")


def connection(args: argparse.Namespace) -> Connection:
    """Flags win; the local stack fills in whatever they leave out."""
    if args.base_url and args.token:
        return Connection(args.base_url.rstrip("/"), args.token)
    from firegrid.local.stack import load_stack

    info = load_stack(args.dir)
    return Connection((args.base_url or info.base_url).rstrip("/"), args.token or info.admin_token)


def _get_metrics(conn: Connection, params: dict[str, str]) -> requests.Response:
    """The successful ``requests.Response``; ``MetricsFetchError`` carries the server's reason."""
    import requests

    try:
        response = requests.get(
            f"{conn.base_url}/admin/training-metrics",
            params=params,
            headers={"Authorization": f"Bearer {conn.token}"},
            timeout=HTTP_TIMEOUT_S,
        )
    except requests.RequestException as error:
        raise MetricsFetchError(f"cannot reach {conn.base_url}: {error}") from error
    if not response.ok:
        raise MetricsFetchError(f"HTTP {response.status_code}: {_server_error(response)}")
    return response


def fetch_metrics(conn: Connection, name: str, version: str) -> list[dict[str, Any]]:
    response = _get_metrics(conn, {"name": name, "version": version})
    try:
        rows = response.json()["metrics"]
    except (ValueError, KeyError, TypeError):
        rows = None
    if not isinstance(rows, list):
        raise MetricsFetchError("the server's reply has no 'metrics' list")
    return rows


def fetch_metrics_csv(conn: Connection, name: str, version: str) -> str:
    """LEAF's CSV layout, as the server renders it."""
    return _get_metrics(conn, {"name": name, "version": version, "format": "csv"}).text


def _server_error(response: requests.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason


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


def _test_stats(args: argparse.Namespace) -> list[RoundStat]:
    """Round stats, or ``MetricsFetchError`` when there is nothing to show yet."""
    from firegrid.client.plots import round_stats

    stats = round_stats(fetch_metrics(connection(args), args.name, args.version))
    if not stats:
        raise MetricsFetchError(f"no test-set metrics for {args.name} {args.version} yet")
    return stats


def metrics_command(args: argparse.Namespace) -> int:
    try:
        if args.csv:
            print(fetch_metrics_csv(connection(args), args.name, args.version), end="")
        else:
            print(format_table(_test_stats(args)))
    except MetricsFetchError as error:
        print(f"firegrid: {error}", file=sys.stderr)
        return 1
    return 0


def plot_command(args: argparse.Namespace) -> int:
    from firegrid.client.plots import plot_accuracy

    try:
        stats = _test_stats(args)
    except MetricsFetchError as error:
        print(f"firegrid: {error}", file=sys.stderr)
        return 1
    title = f"{args.name} {args.version}: device accuracy per round"
    print(plot_accuracy(stats, args.out, title=title))
    return 0
