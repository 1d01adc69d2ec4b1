"""The main job (``firegrid demo``): a real federated training run on the local stack.

It starts the emulator stack, hosts a small CNN for scikit-learn's handwritten
digits, and lets simulated devices (threads speaking the HTTP protocol, each
with its own non-IID shard: Dirichlet label skew) train it for many cycles with
realistic availability, in synchronous cycles or asynchronously (FedBuff), with
plain FedAvg or a server optimizer, optionally with differential privacy. Every
checkpoint is evaluated on a held-out test set no device trained on as soon as it
appears, with its wall time; the run ends with a summary, the centralised baseline
(same model, same data, trained in one place) and ``accuracy_vs_round.png``.
``bench/compare.py`` runs the strategies side by side.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from firegrid.client.data import ClientData, FederatedDataset
    from firegrid.client.simulator import SimulationSummary, Simulator
    from firegrid.local.stack import StackInfo
    from firegrid.operator_client import OperatorClient

MODEL_NAME = "digits-cnn"
CLIENT_CONFIG: dict[str, Any] = {
    "batch_size": 8,
    "lr": 0.05,
    "epochs": 5,
    "loss": "cross_entropy",
    "optimizer": "sgd",
    "momentum": 0.9,
}


class Strategy(StrEnum):
    """``firegrid demo --strategy``: how the server applies each closing's averaged diff."""

    FEDAVG = "fedavg"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"


SERVER_OPTIMIZERS: Mapping[Strategy, Mapping[str, Any]] = {
    Strategy.FEDADAM: {"name": "fedadam", "eta": 0.1},
    Strategy.FEDYOGI: {"name": "fedyogi", "eta": 0.1},
}
"""``server_config.server_optimizer`` per strategy: Flower's defaults but ``eta``, measured
on this task (``python -m bench.server_eta``: 20 rounds of 10 of the 50 devices, eta from
0.003 to 0.3). FedAdam's best is Flower's default 0.1 (90% held-out accuracy at round 8,
0.953 at round 20); FedYogi's default 0.01 never reaches 90% in 20 rounds (0.880), 0.1
does at round 7 (0.953)."""

STALENESS_EXPONENT = 0.5
"""FedBuff's default ``e`` in the staleness weight ``1 / (1 + s)^e``."""


class Mode(StrEnum):
    SYNC = "sync"
    """Cycles: a cohort trains from the same checkpoint; the closing waits for its diffs."""
    ASYNC = "async"
    """FedBuff: devices train whenever a place is free; every ``buffer_size`` reports make
    the next checkpoint."""


class Wake(StrEnum):
    PUSH = "push"
    """Devices act on FCM pushes only."""
    POLL = "poll"
    """Devices poll with cycle-request."""


@dataclass(frozen=True, kw_only=True)
class Privacy:
    """``server_config.dp`` of the demo (``--dp CLIP,NOISE[,DELTA]``)."""

    clip_norm: float
    noise_multiplier: float
    delta: float = 1e-3
    """Below 1/N for the demo's 50 devices, as (epsilon, delta)-DP asks of delta."""


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    devices: int = 50
    """Simulated devices."""
    cycles: int = 20
    """Training cycles (checkpoints after the first, in async mode)."""
    budget_s: float | None = None
    """Train for this many seconds instead, cycles unlimited; the process is deleted
    after (it would train on, unattended)."""
    alpha: float = 0.5
    """Dirichlet label skew of the devices' shards."""
    online: float = 0.8
    """Fraction of the time a device is online."""
    dropout: float = 0.1
    """Probability that a device drops out after downloading."""
    slow: float = 0.1
    """Fraction of slow devices."""
    slow_delay: float | None = None
    """Extra seconds a slow device takes to train and report (None: ``cycle_length``, so
    it may miss deadlines)."""
    latency: float = 0.0
    """Seconds every device adds to its training and upload (a phone is slower than this
    machine's CPU)."""
    cycle_length: float = 6.0
    """Seconds per cycle (async: before an abandoned place is freed)."""
    strategy: Strategy = Strategy.FEDAVG
    """Server-side update: plain FedAvg or a server optimizer."""
    mode: Mode = Mode.SYNC
    """Synchronous cycles or asynchronous FedBuff."""
    wake: Wake = Wake.PUSH
    """How devices learn that they may train."""
    dp: Privacy | None = None
    """Differential privacy (DP-FedAvg), off by default."""
    places: int | None = None
    """Devices training at once: a sync cycle's ``max_workers``, async ``max_concurrency``
    (None: half the devices, every device when polling in sync mode)."""
    close_fraction: float = 0.8
    """Sync push: a cycle closes when this fraction of its places have reported."""
    buffer_size: int | None = None
    """Async: reports per checkpoint, FedBuff's K (None: half the places)."""
    max_staleness: int = 10
    """Async: a report that trained from a checkpoint more than this many behind the
    latest is refused (409 ``too_stale``)."""
    concurrency: int = 4
    """Devices working at once (threads)."""
    seed: int = 0
    """Data, availability and training seed."""
    out: Path | None = Path("accuracy_vs_round.png")
    """The plot file (None: no plot)."""


def digits_model() -> torch.nn.Module:
    import torch

    from firegrid.client.models import DigitsCNN

    torch.manual_seed(0)
    return DigitsCNN()


def digits_data(options: DemoOptions) -> tuple[FederatedDataset, ClientData]:
    """The devices' shards and the held-out set, fixed by the seed."""
    from firegrid.client.data import digits_federated

    return digits_federated(num_devices=options.devices, alpha=options.alpha, seed=options.seed)


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
        server_config(options),
    )
    return plan


def server_config(options: DemoOptions) -> dict[str, Any]:
    """What the demo hosts: how devices take part, the strategy, and privacy."""
    cycles = 0 if options.budget_s else options.cycles  # 0: unlimited
    config: dict[str, Any] = {"cycle_length": options.cycle_length, "num_cycles": cycles}
    config |= _participation(options)
    if options.strategy in SERVER_OPTIMIZERS:
        config["server_optimizer"] = dict(SERVER_OPTIMIZERS[options.strategy])
    if options.dp is not None:
        config["dp"] = {
            "clip_norm": options.dp.clip_norm,
            "noise_multiplier": options.dp.noise_multiplier,
            "delta": options.dp.delta,
            "population": options.devices,
        }
    return config


def places_of(options: DemoOptions) -> int:
    if options.places is not None:
        return options.places
    if options.mode is Mode.SYNC and options.wake is Wake.POLL:
        return options.devices
    return max(2, options.devices // 2)


def _participation(options: DemoOptions) -> dict[str, Any]:
    places = places_of(options)
    if options.mode is Mode.ASYNC:
        return {
            "mode": "async",
            "buffer_size": options.buffer_size or max(1, places // 2),
            "max_concurrency": places,
            "max_staleness": options.max_staleness,
            "staleness_exponent": STALENESS_EXPONENT,
        }
    if options.wake is Wake.POLL:  # every online device takes part; the deadline closes the cycle
        return {"max_workers": places, "min_diffs": min(5, places)}
    # Push: invite a sample of the pool, let late joiners in, close once enough diffs are in.
    max_diffs = max(1, int(places * options.close_fraction))
    return {
        "max_workers": places,
        "max_diffs": max_diffs,
        "min_diffs": min(5, max_diffs),
        "min_workers": min(10, options.devices),
        "over_selection": 1.3,
        "worker_participation_mode": 1,
    }


@dataclass(frozen=True)
class Scored:
    """One checkpoint's held-out accuracy and when it appeared."""

    checkpoint: int
    wall_s: float
    """Seconds from the start of training until the checkpoint was seen (polled every
    ``HeldoutWatch.poll_s``)."""
    accuracy: float


@dataclass(frozen=True)
class DemoRun:
    heldout: list[Scored]
    """Every checkpoint in order, the first (hosted) at 0 s."""
    epsilon: float | None
    """With ``dp``: the privacy spent, from ``admin/status``."""
    summary: SimulationSummary


class HeldoutWatch:
    """Scores each new checkpoint on the held-out set, in a thread, as it appears: a
    device-independent clock for sync cycles and async checkpoints alike."""

    poll_s = 0.1

    def __init__(
        self, operator: OperatorClient, version: str, score: Callable[[bytes], float]
    ) -> None:
        self._operator = operator
        self._version = version
        self._score = score
        self._started = time.monotonic()
        self._stop = threading.Event()
        self.heldout = [Scored(1, 0.0, score(operator.checkpoint(MODEL_NAME, version, 1)))]
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        import requests

        while not self._stop.wait(self.poll_s):
            try:
                latest = self._operator.status(MODEL_NAME, self._version)["latest_checkpoint"]
                for number in range(self.heldout[-1].checkpoint + 1, latest + 1):
                    self._add(number)
            except requests.RequestException:
                continue  # the next poll tries again

    def _add(self, number: int) -> None:
        from tqdm import tqdm

        wall_s = time.monotonic() - self._started
        checkpoint = self._operator.checkpoint(MODEL_NAME, self._version, number)
        scored = Scored(number, round(wall_s, 2), self._score(checkpoint))
        self.heldout.append(scored)
        tqdm.write(
            f"checkpoint {number:>2} at {scored.wall_s:6.1f}s: held-out {scored.accuracy:.3f}"
        )

    def finish(self, last: int, timeout_s: float = 60.0) -> list[Scored]:
        """Stop once checkpoint ``last`` is scored (or after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while self.heldout[-1].checkpoint < last and time.monotonic() < deadline:
            time.sleep(self.poll_s)
        self._stop.set()
        self._thread.join()
        return list(self.heldout)

    def stop_at(self, budget_s: float) -> list[Scored]:
        """Stop now; the checkpoints that appeared within ``budget_s``."""
        self._stop.set()
        self._thread.join()
        return [scored for scored in self.heldout if scored.wall_s <= budget_s]


def run_demo(stack: StackInfo, options: DemoOptions) -> DemoRun:
    """Train; the held-out accuracy of each checkpoint with its wall time."""
    import torch

    from firegrid.client.training import accuracy
    from firegrid.operator_client import OperatorClient
    from firegrid.plans import load_plan

    torch.set_num_threads(1)  # devices are threads already; one torch thread each
    dataset, holdout = digits_data(options)
    version = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    plan = _host(stack, version, options)
    operator = OperatorClient(stack.base_url, stack.admin_token)
    evaluator = load_plan(plan)
    print(f"hosted {MODEL_NAME} {version}: {_describe(options)}, {len(holdout)} held-out digits")
    watch = HeldoutWatch(
        operator, version, lambda checkpoint: accuracy(evaluator, checkpoint, holdout.x, holdout.y)
    )
    summary = _simulator(stack, options, dataset, version).run()
    if options.budget_s:
        heldout = watch.stop_at(options.budget_s)
    else:
        heldout = watch.finish(options.cycles + 1)
    print(summary.table())
    epsilon = (operator.status(MODEL_NAME, version).get("privacy") or {}).get("epsilon")
    if options.out is not None:
        _plot(operator, version, options, heldout)
    if options.budget_s:
        operator.delete_process(MODEL_NAME, version)
    return DemoRun(heldout=heldout, epsilon=epsilon, summary=summary)


def _describe(options: DemoOptions) -> str:
    length = (
        f"{options.budget_s:g}s of training"
        if options.budget_s
        else f"{options.cycles} {'cycles' if options.mode is Mode.SYNC else 'checkpoints'}"
    )
    return (
        f"{options.strategy} {options.mode}{' with dp' if options.dp else ''}, "
        f"{options.devices} devices ({options.slow:.0%} slow), Dirichlet alpha "
        f"{options.alpha}, {length}, {options.wake} wake-ups"
    )


def _simulator(
    stack: StackInfo, options: DemoOptions, dataset: FederatedDataset, version: str
) -> Simulator:
    from firegrid.client.inbox import LocalFcmInbox
    from firegrid.client.simulator import SimulationConfig, Simulator, shards_of

    time_limit_s = options.budget_s or max(600.0, options.cycles * options.cycle_length * 5)
    slow_delay_s = options.cycle_length if options.slow_delay is None else options.slow_delay
    return Simulator(
        stack.base_url,
        MODEL_NAME,
        shards_of(dataset),
        SimulationConfig(
            devices=options.devices,
            concurrency=options.concurrency,
            online_fraction=options.online,
            dropout=options.dropout,
            slow_fraction=options.slow,
            slow_delay_s=slow_delay_s,
            latency_s=options.latency,
            seed=options.seed,
            time_limit_s=time_limit_s,
        ),
        version=version,
        expected_cycles=None if options.budget_s else options.cycles,
        progress=sys.stderr.isatty(),
        inbox=LocalFcmInbox(stack.fcm_url) if options.wake is Wake.PUSH else None,
    )


def _plot(
    operator: OperatorClient, version: str, options: DemoOptions, heldout: list[Scored]
) -> None:
    from firegrid.plots import plot_accuracy, round_stats

    assert options.out is not None
    plot_accuracy(
        round_stats(operator.training_metrics(MODEL_NAME, version)),
        options.out,
        title=f"FireGrid demo: digits, {options.devices} devices",
        heldout=[(scored.checkpoint, scored.accuracy) for scored in heldout],
    )
    print(f"wrote {options.out}")
