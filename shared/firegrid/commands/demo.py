"""``firegrid demo``: start the local stack (or use the running one) and train the digits
demo on it; see ``firegrid.demo``."""

from __future__ import annotations

import argparse
from enum import StrEnum
from pathlib import Path
from typing import Any

from firegrid.commands._common import CommandError, add_stack_dir
from firegrid.demo import DemoOptions, Mode, Privacy, Strategy, Wake


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="start the local stack and run a federated training demo (digits)"
    )
    parser.add_argument("--devices", type=int, default=50, help="simulated devices (default 50)")
    parser.add_argument(
        "--cycles", type=int, default=20, help="training cycles, or async checkpoints (default 20)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        metavar="SECONDS",
        help="train for this long instead of --cycles (the process is deleted after)",
    )
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="Dirichlet label skew (default 0.5)"
    )
    parser.add_argument("--online", type=float, default=0.8, help="online fraction (default 0.8)")
    parser.add_argument("--dropout", type=float, default=0.1, help="drop-out probability")
    parser.add_argument("--slow", type=float, default=0.1, help="fraction of slow devices")
    parser.add_argument(
        "--slow-delay", type=float, help="extra seconds a slow device takes (default: a cycle)"
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds every device adds to its training"
    )
    parser.add_argument("--cycle-length", type=float, default=6.0, help="seconds per cycle")
    _choice(parser, "--strategy", Strategy.FEDAVG, "server update: FedAvg, FedAdam or FedYogi")
    _choice(parser, "--mode", Mode.SYNC, "synchronous cycles or asynchronous FedBuff")
    _choice(parser, "--wake", Wake.PUSH, "devices act on FCM pushes or poll with cycle-request")
    parser.add_argument(
        "--dp",
        type=privacy,
        metavar="CLIP,NOISE[,DELTA]",
        help="differential privacy: clip norm, noise multiplier, delta (default 1e-3)",
    )
    parser.add_argument(
        "--places", type=int, help="devices training at once (default: half the devices)"
    )
    parser.add_argument(
        "--close-fraction",
        type=float,
        default=0.8,
        help="sync push: close a cycle when this fraction of its places reported (default 0.8)",
    )
    parser.add_argument(
        "--buffer-size", type=int, help="async: reports per checkpoint (default: half the places)"
    )
    parser.add_argument(
        "--max-staleness", type=int, default=10, help="async: refuse reports staler than this"
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


def _choice(parser: argparse.ArgumentParser, flag: str, default: StrEnum, text: str) -> None:
    """An option whose values are ``default``'s enum."""
    kind = type(default)
    help_text = f"{text} (default {default})"
    parser.add_argument(flag, type=kind, choices=list(kind), default=default, help=help_text)


def privacy(text: str) -> Privacy:
    """``CLIP,NOISE[,DELTA]``, e.g. ``1.0,0.5`` or ``1.0,0.5,1e-5``."""
    parts = text.split(",")
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (2, 3):
        raise argparse.ArgumentTypeError(f"expected CLIP,NOISE[,DELTA], got {text!r}")
    delta = {"delta": numbers[2]} if len(numbers) == 3 else {}
    return Privacy(clip_norm=numbers[0], noise_multiplier=numbers[1], **delta)


def options_of(args: argparse.Namespace) -> DemoOptions:
    return DemoOptions(
        devices=args.devices,
        cycles=args.cycles,
        budget_s=args.budget,
        alpha=args.alpha,
        online=args.online,
        dropout=args.dropout,
        slow=args.slow,
        slow_delay=args.slow_delay,
        latency=args.latency,
        cycle_length=args.cycle_length,
        strategy=args.strategy,
        mode=args.mode,
        wake=args.wake,
        dp=args.dp,
        places=args.places,
        close_fraction=args.close_fraction,
        buffer_size=args.buffer_size,
        max_staleness=args.max_staleness,
        concurrency=args.concurrency,
        seed=args.seed,
        out=args.out,
    )


def demo_command(args: argparse.Namespace) -> int:
    from firegrid.demo import centralised_accuracy, digits_data, run_demo
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
    options = options_of(args)
    try:
        run = run_demo(stack, options)
    finally:
        if started and not (args.keep_stack or args.console):
            stop_stack(args.dir)
            print("stack stopped")
    baseline = centralised_accuracy(*digits_data(options), options.seed)
    first, last = run.heldout[0], run.heldout[-1]
    print(
        f"held-out accuracy {first.accuracy:.3f} -> {last.accuracy:.3f} at checkpoint "
        f"{last.checkpoint}, {last.wall_s:.1f}s after training started; "
        f"centralised baseline {baseline:.3f}"
    )
    if run.epsilon is not None and options.dp is not None:
        print(f"privacy spent: epsilon {run.epsilon:.2f} at delta {options.dp.delta:g}")
    if args.console:
        from firegrid.commands.console import describe

        print(describe(stack))
    if not args.budget and last.checkpoint - 1 != args.cycles:
        raise CommandError(f"only {last.checkpoint - 1} of {args.cycles} checkpoints were made")
    return 0
