"""``firegrid demo``: start the local stack (or use the running one) and train the digits
demo on it; see ``firegrid.demo``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from firegrid.commands._common import CommandError, add_stack_dir
from firegrid.demo import DemoOptions


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="start the local stack and run a federated training demo (digits)"
    )
    parser.add_argument("--devices", type=int, default=50, help="simulated devices (default 50)")
    parser.add_argument("--cycles", type=int, default=20, help="training cycles (default 20)")
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="Dirichlet label skew (default 0.5)"
    )
    parser.add_argument("--online", type=float, default=0.8, help="online fraction (default 0.8)")
    parser.add_argument("--dropout", type=float, default=0.1, help="drop-out probability")
    parser.add_argument("--slow", type=float, default=0.1, help="fraction of slow devices")
    parser.add_argument("--cycle-length", type=float, default=6.0, help="seconds per cycle")
    parser.add_argument(
        "--mode",
        choices=("push", "poll"),
        default="push",
        help="devices act on FCM pushes (default) or poll with cycle-request",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="devices working at once")
    parser.add_argument("--seed", type=int, default=0, help="data, availability and training seed")
    parser.add_argument("--out", type=Path, default=Path("accuracy_vs_round.png"), help="plot file")
    parser.add_argument("--keep-stack", action="store_true", help="leave the stack running")
    parser.add_argument(
        "--console",
        action="store_true",
        help="leave the stack running and print the operator console's URL",
    )
    add_stack_dir(parser)
    parser.set_defaults(handler=demo_command)


def options_of(args: argparse.Namespace) -> DemoOptions:
    return DemoOptions(
        devices=args.devices,
        cycles=args.cycles,
        alpha=args.alpha,
        online=args.online,
        dropout=args.dropout,
        slow=args.slow,
        cycle_length=args.cycle_length,
        mode=args.mode,
        concurrency=args.concurrency,
        seed=args.seed,
        out=args.out,
    )


def demo_command(args: argparse.Namespace) -> int:
    from firegrid.demo import run_demo
    from firegrid.local.stack import StackError, load_stack, start_stack, stop_stack

    try:
        stack, started = load_stack(args.dir), False
        if not all(stack.alive().values()):
            raise StackError("stale stack file")
        print(f"using the running stack at {stack.base_url}")
    except StackError:
        print("starting the local emulator stack ...")
        stack, started = start_stack(args.dir, tick_seconds=1), True
        print(f"stack up at {stack.base_url}")
    try:
        heldout, baseline = run_demo(stack, options_of(args))
    finally:
        if started and not (args.keep_stack or args.console):
            stop_stack(args.dir)
            print("stack stopped")
    final = heldout[-1][1]
    print(
        f"held-out accuracy {heldout[0][1]:.3f} -> {final:.3f} after {len(heldout) - 1} cycles; "
        f"centralised baseline {baseline:.3f}"
    )
    if args.console:
        from firegrid.commands.console import describe

        print(describe(stack))
    if len(heldout) - 1 != args.cycles:
        raise CommandError(f"only {len(heldout) - 1} of {args.cycles} cycles completed")
    return 0
