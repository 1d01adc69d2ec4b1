"""``firegrid tick``: fire the scheduled tick once, as Cloud Scheduler would."""

from __future__ import annotations

import argparse
import json
from typing import Any

from firegrid.commands._common import add_target_arguments, operator


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("tick", help="run the scheduled tick once and print the reply")
    add_target_arguments(parser)
    parser.set_defaults(handler=tick_command)


def tick_command(args: argparse.Namespace) -> int:
    print(json.dumps(operator(args).tick(), indent=2))
    return 0
