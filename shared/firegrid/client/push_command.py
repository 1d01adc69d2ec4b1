"""``firegrid push NAME VERSION TYPE``: send a message type to a process's workers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PUSH_TYPES = (
    "request_for_cycle",
    "cycle_completed",
    "cycle_reset",
    "fl_completed",
    "worker_online_status",
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("push", help="push a message type to a process's workers")
    parser.add_argument("name", help="model name")
    parser.add_argument("version", help="model version")
    parser.add_argument("type", choices=PUSH_TYPES, help="message type")
    parser.add_argument("--base-url", help="FireGrid base URL (default: the local stack's)")
    parser.add_argument("--token", help="admin bearer token (default: the local stack's)")
    parser.add_argument("--dir", type=Path, default=Path(".firegrid"), help="local stack directory")
    parser.set_defaults(handler=push_command)


def push_command(args: argparse.Namespace) -> int:
    import sys

    from firegrid.client.operator import OperatorClient
    from firegrid.client.protocol import ServerError

    base_url, token = args.base_url, args.token
    if base_url is None or token is None:
        from firegrid.local.stack import load_stack

        stack = load_stack(args.dir)
        base_url, token = base_url or stack.base_url, token or stack.admin_token
    try:
        result = OperatorClient(base_url, token).push(args.name, args.version, args.type)
    except ServerError as error:
        print(f"firegrid: {error.status} {error.message}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0
