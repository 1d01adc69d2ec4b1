"""``firegrid simulate``: N simulated devices against any FireGrid base URL."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firegrid.commands._common import CommandError, add_target_arguments, target

if TYPE_CHECKING:
    from firegrid.client.data import FederatedDataset


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate", help="run simulated devices against a FireGrid deployment or the local stack"
    )
    parser.add_argument("model", help="model name of the hosted process")
    parser.add_argument("--version", help="model version (default: the newest)")
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument(
        "--data", choices=("digits", "synthetic", "leaf"), default="digits", help="device data"
    )
    parser.add_argument("--leaf-train", type=Path, help="LEAF train JSON file or directory")
    parser.add_argument("--leaf-test", type=Path, help="LEAF test JSON file or directory")
    parser.add_argument("--alpha", type=float, default=0.5, help="label skew (digits) / alpha")
    parser.add_argument("--beta", type=float, default=1.0, help="Synthetic(alpha, beta)'s beta")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--online", type=float, default=1.0, help="online fraction")
    parser.add_argument("--dropout", type=float, default=0.0, help="drop-out probability")
    parser.add_argument("--slow", type=float, default=0.0, help="fraction of slow devices")
    parser.add_argument("--slow-delay", type=float, default=2.0, help="seconds a slow device adds")
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds before giving up")
    parser.add_argument(
        "--token-secret", help="mint HS256 tokens (sub = device-i) with this secret"
    )
    parser.add_argument("--seed", type=int, default=0)
    add_target_arguments(parser, admin=False)
    parser.set_defaults(handler=simulate_command)


def _dataset(args: argparse.Namespace) -> FederatedDataset:
    from firegrid.client import data

    if args.data == "digits":
        return data.digits_federated(num_devices=args.devices, alpha=args.alpha, seed=args.seed)[0]
    if args.data == "synthetic":
        return data.synthetic(
            alpha=args.alpha, beta=args.beta, num_users=args.devices, seed=args.seed
        )
    if args.leaf_train is None:
        raise CommandError("--data leaf needs --leaf-train")
    return data.load_leaf_json(args.leaf_train, args.leaf_test)


def simulate_command(args: argparse.Namespace) -> int:
    import sys

    import jwt
    import torch

    from firegrid.client.simulator import SimulationConfig, Simulator, shards_of

    base_url = target(args).base_url
    shards = shards_of(_dataset(args))
    devices = min(args.devices, len(shards))
    tokens = None
    if args.token_secret:
        tokens = [
            jwt.encode({"sub": f"device-{i}"}, args.token_secret, algorithm="HS256")
            for i in range(devices)
        ]
    torch.set_num_threads(1)  # devices are threads already
    config = SimulationConfig(
        devices=devices,
        concurrency=args.concurrency,
        online_fraction=args.online,
        dropout=args.dropout,
        slow_fraction=args.slow,
        slow_delay_s=args.slow_delay,
        time_limit_s=args.time_limit,
        seed=args.seed,
    )
    summary = Simulator(
        base_url, args.model, shards, config, version=args.version, tokens=tokens,
        progress=sys.stderr.isatty(),
    ).run()  # fmt: skip
    print(summary.table())
    return 0 if summary.completed else 1
