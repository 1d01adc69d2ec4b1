"""``firegrid delete-process NAME VERSION [--yes]``: delete a process with everything it owns.

Its documents (cycles, assignments, workers, metrics, pushes...) and its Cloud Storage
objects go; the name and version may then be hosted again. Running it again finishes
a deletion that died half-way. Without ``--yes`` it asks first.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from firegrid.commands._common import CommandError, add_target_arguments, operator


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "delete-process", help="delete a process, its documents and its objects"
    )
    parser.add_argument("name", help="model name (client_config.name)")
    parser.add_argument("version", help="model version (client_config.version)")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add_target_arguments(parser)
    parser.set_defaults(handler=delete_process_command)


def delete_process_command(args: argparse.Namespace) -> int:
    if not args.yes:
        _confirm(f"Delete model '{args.name}' version '{args.version}' and everything it owns?")
    print(json.dumps(operator(args).delete_process(args.name, args.version), indent=2))
    return 0


def _confirm(question: str) -> None:
    """Nothing is deleted unless the operator says yes (or passed ``--yes``)."""
    if not sys.stdin.isatty():
        raise CommandError("not deleted: pass --yes to delete without a terminal to ask on")
    if input(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise CommandError("not deleted")
