"""``firegrid demo``: the local stack plus a short, real federated training run.

Until the full device simulator lands, this hosts a small MLP, lets a handful of
simulated devices (threads speaking the HTTP protocol) train it on non-IID
synthetic data for a few cycles, and prints held-out accuracy per checkpoint.
"""

from __future__ import annotations

import argparse
import base64
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from firegrid.local.stack import DEFAULT_DIR, StackInfo

NUM_CLASSES = 10
NUM_FEATURES = 20


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="start the local stack and run a short federated training demo"
    )
    parser.add_argument("--devices", type=int, default=8, help="simulated devices (default 8)")
    parser.add_argument("--cycles", type=int, default=3, help="training cycles (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="data and training seed")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="stack state directory")
    parser.add_argument(
        "--keep-stack", action="store_true", help="leave the stack running afterwards"
    )
    parser.set_defaults(handler=demo_command)


@dataclass(frozen=True)
class Shard:
    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]


def synthetic_shards(devices: int, seed: int) -> tuple[list[Shard], Shard]:
    """Gaussian classes; each device sees mostly two of them (label skew)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(NUM_CLASSES, NUM_FEATURES))

    def sample(labels: npt.NDArray[np.int64]) -> Shard:
        x = centers[labels] + rng.normal(size=(len(labels), NUM_FEATURES))
        return Shard(x.astype(np.float32), labels.astype(np.int64))

    shards = []
    for _ in range(devices):
        favourite = rng.choice(NUM_CLASSES, size=2, replace=False)
        mixed = rng.integers(0, NUM_CLASSES, size=20)
        skewed = rng.choice(favourite, size=int(rng.integers(40, 120)))
        shards.append(sample(np.concatenate([skewed, mixed])))
    test = sample(rng.integers(0, NUM_CLASSES, size=2000))
    return shards, test


def _host(stack: StackInfo, name: str, version: str, devices: int, cycles: int) -> bytes:
    import requests
    import torch

    from firegrid.plans import build_plan, state_of
    from firegrid.tensors import encode_state

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(NUM_FEATURES, 32), torch.nn.ReLU(), torch.nn.Linear(32, NUM_CLASSES)
    )
    plan = build_plan(model, torch.zeros(4, NUM_FEATURES))
    body: dict[str, Any] = {
        "model": base64.b64encode(encode_state(state_of(model))).decode(),
        "plans": {"training_plan": base64.b64encode(plan).decode()},
        "client_config": {
            "name": name,
            "version": version,
            "batch_size": 16,
            "lr": 0.1,
            "max_updates": 20,
            "loss": "cross_entropy",
            "optimizer": "sgd",
        },
        "server_config": {
            "cycle_length": 120,
            "num_cycles": cycles,
            "max_workers": devices,
            "max_diffs": devices,
        },
    }
    response = requests.post(
        f"{stack.base_url}/admin/host-training",
        json=body,
        headers={"Authorization": f"Bearer {stack.admin_token}"},
        timeout=120,
    )
    response.raise_for_status()
    return plan


def _device_round(stack: StackInfo, name: str, worker_id: str, shard: Shard, seed: int) -> str:
    from firegrid.client.protocol import DeviceClient
    from firegrid.client.training import train

    client = DeviceClient(stack.base_url)
    reply = client.cycle_request(worker_id, name)
    if isinstance(reply, dict):
        return f"rejected ({reply.get('reason')})"
    diff, num_samples = train(
        client.get_plan(reply),
        client.get_model(reply),
        shard.x,
        shard.y,
        reply.client_config,
        seed=seed,
    )
    client.report(reply, diff, num_samples)
    return "reported"


def _latest_checkpoint(stack: StackInfo, name: str, at_least: int, timeout_s: float = 120) -> bytes:
    import requests

    headers = {"Authorization": f"Bearer {stack.admin_token}"}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = requests.get(
            f"{stack.base_url}/admin/status", params={"name": name}, headers=headers, timeout=30
        ).json()
        if status["latest_checkpoint"] >= at_least:
            return requests.get(
                f"{stack.base_url}/admin/retrieve-model",
                params={"name": name, "checkpoint": str(at_least)},
                headers=headers,
                timeout=60,
            ).content
        time.sleep(0.2)
    raise TimeoutError(f"checkpoint {at_least} did not appear within {timeout_s:.0f}s")


def run_demo(stack: StackInfo, devices: int, cycles: int, seed: int) -> list[float]:
    from firegrid.client.protocol import DeviceClient
    from firegrid.client.training import accuracy

    name = "firegrid-demo"
    version = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    shards, test = synthetic_shards(devices, seed)
    plan = _host(stack, name, version, devices, cycles)
    print(f"hosted {name} {version}: {devices} devices, {cycles} cycles, non-IID synthetic data")
    client = DeviceClient(stack.base_url)
    workers = [client.authenticate(name, version) for _ in range(devices)]
    scores = [accuracy(plan, _latest_checkpoint(stack, name, 1), test.x, test.y)]
    print(f"checkpoint 1 (initial): held-out accuracy {scores[0]:.3f}")
    for cycle in range(1, cycles + 1):
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as pool:
            outcomes = list(
                pool.map(
                    lambda i, c=cycle: _device_round(
                        stack, name, workers[i], shards[i], seed + 1000 * c + i
                    ),
                    range(devices),
                )
            )
        checkpoint = _latest_checkpoint(stack, name, cycle + 1)
        scores.append(accuracy(plan, checkpoint, test.x, test.y))
        reported = outcomes.count("reported")
        print(
            f"cycle {cycle}: {reported}/{devices} devices reported, "
            f"checkpoint {cycle + 1} held-out accuracy {scores[-1]:.3f} "
            f"({time.monotonic() - started:.1f}s)"
        )
    return scores


def demo_command(args: argparse.Namespace) -> int:
    from firegrid.local.stack import StackError, load_stack, start_stack, stop_stack

    try:
        stack, started = load_stack(args.dir), False
        if not all(stack.alive().values()):
            raise StackError("stale stack file")
        print(f"using the running stack at {stack.base_url}")
    except StackError:
        print("starting the local emulator stack ...")
        stack, started = start_stack(args.dir, tick_seconds=2), True
        print(f"stack up at {stack.base_url}")
    try:
        scores = run_demo(stack, args.devices, args.cycles, args.seed)
    finally:
        if started and not args.keep_stack:
            stop_stack(args.dir)
            print("stack stopped")
    print(f"accuracy {scores[0]:.3f} -> {scores[-1]:.3f} over {args.cycles} cycles")
    return 0 if scores[-1] > scores[0] else 1
