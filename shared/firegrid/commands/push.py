"""``firegrid push NAME VERSION TYPE``: send a message type to a process's workers."""

from __future__ import annotations

import argparse
import json
from typing import Any

from firegrid.commands._common import add_target_arguments, operator
from firegrid.domain.push import PushType


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("push", help="push a message type to a process's workers")
    parser.add_argument("name", help="model name")
    parser.add_argument("version", help="model version")
    parser.add_argument("type", choices=[t.value for t in PushType], help="message type")
    add_target_arguments(parser)
    parser.set_defaults(handler=push_command)


def push_command(args: argparse.Namespace) -> int:
    print(json.dumps(operator(args).push(args.name, args.version, args.type), indent=2))
    return 0
