"""The main job (``firegrid demo``): a real federated training run on the local stack.

It starts the emulator stack, hosts a small CNN for scikit-learn's handwritten
digits, and lets simulated devices (threads speaking the HTTP protocol, each
with its own non-IID shard: Dirichlet label skew) train it for many cycles with
realistic availability. Every checkpoint is evaluated on a held-out test set no
device trained on; the run ends with a summary, the centralised baseline (same
model, same data, trained in one place) and ``accuracy_vs_round.png``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    devices: int = 50
    """Simulated devices."""
    cycles: int = 20
    """Training cycles."""
    alpha: float = 0.5
    """Dirichlet label skew of the devices' shards."""
    online: float = 0.8
    """Fraction of the time a device is online."""
    dropout: float = 0.1
    """Probability that a device drops out after downloading."""
    slow: float = 0.1
    """Fraction of slow devices (they may miss deadlines)."""
    cycle_length: float = 6.0
    """Seconds per cycle."""
    mode: str = "push"
    """``push``: devices act on FCM pushes; ``poll``: they poll with cycle-request."""
    concurrency: int = 4
    """Devices working at once."""
    seed: int = 0
    """Data, availability and training seed."""
    out: Path = Path("accuracy_vs_round.png")
    """The plot file."""


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


def _host(stack: StackInfo, version: str, options: DemoOptions) -> bytes:
    import torch

    from firegrid.operator_client import OperatorClient
    from firegrid.plans import build_plan, state_of
    from firegrid.tensors import encode_state

    model = digits_model()
    plan = build_plan(model, torch.zeros(4, 64))
    OperatorClient(stack.base_url, stack.admin_token).host(
        encode_state(state_of(model)),
        {"training_plan": plan},
        {"name": MODEL_NAME, "version": version, **CLIENT_CONFIG},
        _server_config(options),
    )
    return plan


def _server_config(options: DemoOptions) -> dict[str, Any]:
    config: dict[str, Any] = {"cycle_length": options.cycle_length, "num_cycles": options.cycles}
    if options.mode == "poll":  # every online device takes part; the deadline closes the cycle
        return config | {"max_workers": options.devices, "min_diffs": min(5, options.devices)}
    # Push: invite a sample of the pool, let late joiners in, close once enough diffs are in.
    places = max(2, options.devices // 2)
    max_diffs = max(1, int(places * 0.8))
    return config | {
        "max_workers": places,
        "max_diffs": max_diffs,
        "min_diffs": min(5, max_diffs),
        "min_workers": min(10, options.devices),
        "over_selection": 1.3,
        "worker_participation_mode": 1,
    }


def run_demo(stack: StackInfo, options: DemoOptions) -> tuple[list[tuple[int, float]], float]:
    """Train; the held-out accuracy of each checkpoint and the centralised baseline."""
    import torch
    from tqdm import tqdm

    from firegrid.client.data import digits_federated
    from firegrid.client.inbox import LocalFcmInbox
    from firegrid.client.simulator import SimulationConfig, Simulator, shards_of
    from firegrid.client.training import accuracy
    from firegrid.operator_client import OperatorClient
    from firegrid.plans import load_plan
    from firegrid.plots import plot_accuracy, round_stats

    torch.set_num_threads(1)  # devices are threads already; one torch thread each
    dataset, holdout = digits_federated(
        num_devices=options.devices, alpha=options.alpha, seed=options.seed
    )
    shards = shards_of(dataset)
    version = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    plan = _host(stack, version, options)
    operator = OperatorClient(stack.base_url, stack.admin_token)
    evaluator = load_plan(plan)
    print(
        f"hosted {MODEL_NAME} {version}: {options.devices} devices, "
        f"Dirichlet alpha {options.alpha}, {len(holdout)} held-out digits, "
        f"{options.cycles} cycles of at most {options.cycle_length:g}s, "
        f"{'push-driven' if options.mode == 'push' else 'polling'} devices"
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
            devices=options.devices,
            concurrency=options.concurrency,
            online_fraction=options.online,
            dropout=options.dropout,
            slow_fraction=options.slow,
            slow_delay_s=options.cycle_length,
            seed=options.seed,
            time_limit_s=max(600.0, options.cycles * options.cycle_length * 5),
        ),
        version=version,
        on_cycle_done=evaluate,
        expected_cycles=options.cycles,
        progress=sys.stderr.isatty(),
        inbox=LocalFcmInbox(stack.fcm_url) if options.mode == "push" else None,
    )
    summary = simulator.run()
    print(summary.table())
    baseline = centralised_accuracy(dataset, holdout, options.seed)
    stats = round_stats(operator.training_metrics(MODEL_NAME, version))
    plot_accuracy(
        stats,
        options.out,
        title=f"FireGrid demo: digits, {options.devices} devices",
        heldout=heldout,
    )
    print(f"wrote {options.out}")
    return heldout, baseline
