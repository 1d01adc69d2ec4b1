"""``firegrid tick``: fire the scheduled tick once, as Cloud Scheduler would."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from firegrid.local.stack import DEFAULT_DIR, load_stack


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("tick", help="POST the scheduled tick once and print the reply")
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help="state directory (default .firegrid)"
    )
    parser.set_defaults(handler=tick_command)


def tick_command(args: argparse.Namespace) -> int:
    from firegrid.local.scheduler import tick_once

    info = load_stack(args.dir)
    response = tick_once(f"{info.base_url}/tick", info.admin_token)
    try:
        print(json.dumps(response.json(), indent=2))
    except ValueError:
        print(response.text)
    return 0 if response.ok else 1
