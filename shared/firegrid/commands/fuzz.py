"""``firegrid fuzz``: schemathesis over every endpoint of the local stack."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from firegrid.commands._common import add_stack_dir


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "fuzz", help="run schemathesis against the local stack (every endpoint, every check)"
    )
    parser.add_argument("--examples", type=int, default=100, help="cases per operation")
    parser.add_argument("--seed", type=int, default=None, help="reproduce a run")
    parser.add_argument("--max-time", type=float, default=None, help="time budget in seconds")
    parser.add_argument("--report-dir", type=Path, default=None, help="keep the reports here")
    add_stack_dir(parser)
    parser.set_defaults(handler=fuzz_command)


def fuzz_command(args: argparse.Namespace) -> int:
    from firegrid.local.fuzz import run_fuzz, summary
    from firegrid.local.stack import load_stack

    result = run_fuzz(
        load_stack(args.dir),
        examples=args.examples,
        seed=args.seed,
        max_time_s=args.max_time,
        report_dir=args.report_dir,
        echo=True,
    )
    print(summary(result))
    return 0 if result.exit_code == 0 and result.server_errors == 0 else 1
