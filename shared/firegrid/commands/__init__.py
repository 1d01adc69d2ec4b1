"""The ``firegrid`` command: one module per verb in this package.

Each verb module has a ``register(subparsers)`` that adds its parser and sets
``handler``. Building the parser imports every verb module, so those modules import
heavy libraries (torch, Google clients) inside their handlers, never at module
level. A verb fails by raising ``CommandError``; ``main`` prints it and exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from firegrid import __version__
from firegrid.commands._common import CommandError, failures_as_command_errors

COMMANDS: dict[str, str] = {
    "stack": "firegrid.commands.stack",
    "tick": "firegrid.commands.tick",
    "demo": "firegrid.commands.demo",
    "console": "firegrid.commands.console",
    "deploy": "firegrid.commands.deploy",
    "metrics": "firegrid.commands.metrics",
    "simulate": "firegrid.commands.simulate",
    "push": "firegrid.commands.push",
    "delete-process": "firegrid.commands.delete_process",
    "fuzz": "firegrid.commands.fuzz",
    "bench": "firegrid.commands.bench",
}
"""Verb -> module that registers it (``metrics`` registers ``plot`` too)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="firegrid", description="PyGrid-style federated learning on Google Cloud functions"
    )
    parser.add_argument("--version", action="version", version=f"firegrid {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with failures_as_command_errors():
            return int(args.handler(args))
    except CommandError as error:
        print(f"firegrid: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
