"""The ``firegrid`` command.

Each verb lives in its own module, listed in ``COMMANDS``, with a
``register(subparsers)`` that adds its parser and sets ``handler``. Building
the parser imports every verb module, so those modules import heavy libraries
(torch, Google clients) inside their handlers, never at module level.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from firegrid import __version__

COMMANDS: dict[str, str] = {
    "stack": "firegrid.local.stack_command",
    "tick": "firegrid.local.tick_command",
    "demo": "firegrid.demo",
    "deploy": "firegrid.deploy",
    "metrics": "firegrid.client.metrics_command",
    "simulate": "firegrid.client.simulate_command",
    "push": "firegrid.client.push_command",
    "fuzz": "firegrid.local.fuzz",
}
"""Verb -> module that registers it."""


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
    from firegrid.local._process import StackError

    try:
        code: int = args.handler(args)
    except StackError as error:
        print(f"firegrid: {error}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
