"""``firegrid demo``: the main job. A real federated training run on the local stack.

It starts the emulator stack, hosts a small CNN for scikit-learn's handwritten
digits, and lets simulated devices (threads speaking the HTTP protocol, each
with its own non-IID shard: Dirichlet label skew) train it for many cycles with
realistic availability. Every checkpoint is evaluated on a held-out test set no
device trained on; the run ends with a summary, the centralised baseline (same
model, same data, trained in one place) and ``accuracy_vs_round.png``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firegrid.local.stack import DEFAULT_DIR

if TYPE_CHECKING:
    import torch

    from firegrid.client.data import ClientData, FederatedDataset
    from firegrid.local.stack import StackInfo

MODEL_NAME = "digits-cnn"
CLIENT_CONFIG: dict[str, Any] = {
    "batch_size": 8,
    "lr": 0.05,
    "epochs": 5,
    "loss": "cross_entropy",
    "optimizer": "sgd",
    "momentum": 0.9,
}


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
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="stack state directory")
    parser.add_argument("--keep-stack", action="store_true", help="leave the stack running")
    parser.set_defaults(handler=demo_command)


def digits_model() -> torch.nn.Module:
    import torch

    from firegrid.client.models import DigitsCNN

    torch.manual_seed(0)
    return DigitsCNN()


def centralised_accuracy(dataset: FederatedDataset, holdout: ClientData, seed: int = 0) -> float:
    """The same model trained in one place on all the devices' training data."""
    import numpy as np
    import torch

    torch.manual_seed(seed)
    model = digits_model()
    x = torch.from_numpy(np.concatenate([dataset.train[u].x for u in dataset.users]))
    y = torch.from_numpy(np.concatenate([dataset.train[u].y for u in dataset.users]))
    optimizer = torch.optim.SGD(model.parameters(), lr=CLIENT_CONFIG["lr"], momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(40):
        for batch in torch.randperm(len(x), generator=generator).split(8):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    with torch.no_grad():
        predicted = model(torch.from_numpy(holdout.x)).argmax(dim=1).numpy()
    return float((predicted == holdout.y).mean())


def _host(stack: StackInfo, version: str, args: argparse.Namespace) -> bytes:
    import torch

    from firegrid.client.operator import OperatorClient
    from firegrid.plans import build_plan, state_of
    from firegrid.tensors import encode_state

    model = digits_model()
    plan = build_plan(model, torch.zeros(4, 64))
    OperatorClient(stack.base_url, stack.admin_token).host(
        encode_state(state_of(model)),
        {"training_plan": plan},
        {"name": MODEL_NAME, "version": version, **CLIENT_CONFIG},
        _server_config(args),
    )
    return plan


def _server_config(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {"cycle_length": args.cycle_length, "num_cycles": args.cycles}
    if args.mode == "poll":  # every online device takes part; the deadline closes the cycle
        return config | {"max_workers": args.devices, "min_diffs": min(5, args.devices)}
    # Push: invite a sample of the pool, let late joiners in, close once enough diffs are in.
    places = max(2, args.devices // 2)
    max_diffs = max(1, int(places * 0.8))
    return config | {
        "max_workers": places,
        "max_diffs": max_diffs,
        "min_diffs": min(5, max_diffs),
        "min_workers": min(10, args.devices),
        "over_selection": 1.3,
        "worker_participation_mode": 1,
    }


def run_demo(stack: StackInfo, args: argparse.Namespace) -> tuple[list[tuple[int, float]], float]:
    """Train; the held-out accuracy of each checkpoint and the centralised baseline."""
    import torch
    from tqdm import tqdm

    from firegrid.client.data import digits_federated
    from firegrid.client.inbox import LocalFcmInbox
    from firegrid.client.operator import OperatorClient
    from firegrid.client.plots import plot_accuracy, round_stats
    from firegrid.client.simulate_command import shards_of
    from firegrid.client.simulator import SimulationConfig, Simulator
    from firegrid.client.training import accuracy
    from firegrid.plans import load_plan

    torch.set_num_threads(1)  # devices are threads already; one torch thread each
    dataset, holdout = digits_federated(num_devices=args.devices, alpha=args.alpha, seed=args.seed)
    shards = shards_of(dataset)
    version = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    plan = _host(stack, version, args)
    operator = OperatorClient(stack.base_url, stack.admin_token)
    evaluator = load_plan(plan)
    print(
        f"hosted {MODEL_NAME} {version}: {args.devices} devices, Dirichlet alpha {args.alpha}, "
        f"{len(holdout)} held-out digits, {args.cycles} cycles of at most {args.cycle_length:g}s, "
        f"{'push-driven' if args.mode == 'push' else 'polling'} devices"
    )
    heldout = [
        (1, accuracy(evaluator, operator.checkpoint(MODEL_NAME, version, 1), holdout.x, holdout.y))
    ]

    def evaluate(cycle: int) -> float:
        checkpoint = operator.wait_for_checkpoint(MODEL_NAME, version, cycle + 1)
        score = accuracy(evaluator, checkpoint, holdout.x, holdout.y)
        heldout.append((cycle + 1, score))
        tqdm.write(f"cycle {cycle:>2} done: checkpoint {cycle + 1} held-out accuracy {score:.3f}")
        return score

    simulator = Simulator(
        stack.base_url,
        MODEL_NAME,
        shards,
        SimulationConfig(
            devices=args.devices,
            concurrency=args.concurrency,
            online_fraction=args.online,
            dropout=args.dropout,
            slow_fraction=args.slow,
            slow_delay_s=args.cycle_length,
            seed=args.seed,
            time_limit_s=max(600.0, args.cycles * args.cycle_length * 5),
        ),
        version=version,
        on_cycle_done=evaluate,
        expected_cycles=args.cycles,
        progress=sys.stderr.isatty(),
        inbox=LocalFcmInbox(stack.fcm_url) if args.mode == "push" else None,
    )
    summary = simulator.run()
    print(summary.table())
    baseline = centralised_accuracy(dataset, holdout, args.seed)
    stats = round_stats(operator.training_metrics(MODEL_NAME, version))
    plot_accuracy(
        stats, args.out, title=f"FireGrid demo: digits, {args.devices} devices", heldout=heldout
    )
    print(f"wrote {args.out}")
    return heldout, baseline


def demo_command(args: argparse.Namespace) -> int:
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
        heldout, baseline = run_demo(stack, args)
    finally:
        if started and not args.keep_stack:
            stop_stack(args.dir)
            print("stack stopped")
    final = heldout[-1][1]
    print(
        f"held-out accuracy {heldout[0][1]:.3f} -> {final:.3f} after {len(heldout) - 1} cycles; "
        f"centralised baseline {baseline:.3f}"
    )
    return 0 if len(heldout) - 1 == args.cycles else 1
