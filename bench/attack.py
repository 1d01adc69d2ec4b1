"""Poisoned diffs on the digits task: what each aggregation rule makes of them.

The demo's model (``DigitsCNN``), data (scikit-learn digits, Dirichlet label skew,
a held-out set no device trains on) and training recipe (``firegrid.client.training``)
run in-process for N rounds, every device taking part in every round; the round's
diffs go through the domain rules (``firegrid.domain.aggregation.aggregate``), as a
closing cycle would put them. A fixed 10% of the devices are hostile: they train
honestly, then send ``-10 x`` their diff (``flip``) or ``10 x`` it (``scale``).

    python bench/attack.py [--short] [--devices 20] [--rounds 15] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from firegrid.domain.aggregation import Contribution, aggregate
from firegrid.tensors import decode_state, encode_state

RESULTS = Path(__file__).parent / "results"
ATTACKS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "flip": lambda diff: -10.0 * diff,
    "scale": lambda diff: 10.0 * diff,
}


@dataclass(frozen=True, kw_only=True)
class Setup:
    devices: int = 20
    rounds: int = 15
    hostile_fraction: float = 0.1
    alpha: float = 0.5
    """Dirichlet label skew of the devices' shards (the demo's)."""
    trim_fraction: float = 0.1
    seed: int = 0


SHORT = Setup(devices=10, rounds=6)


@dataclass(frozen=True, kw_only=True)
class Outcome:
    method: str
    attack: str | None
    accuracy: float
    """Held-out accuracy after the last round."""
    curve: list[float]
    """Held-out accuracy after each round."""


def run(setup: Setup, method: str, attack: str | None) -> Outcome:
    """Train ``setup.rounds`` rounds aggregating with ``method``, hostile devices attacking."""
    import torch

    from firegrid.client.data import digits_federated
    from firegrid.client.training import accuracy, train
    from firegrid.demo import CLIENT_CONFIG, digits_model
    from firegrid.plans import state_of

    torch.set_num_threads(1)
    dataset, holdout = digits_federated(
        num_devices=setup.devices, alpha=setup.alpha, seed=setup.seed
    )
    hostile = set(dataset.users[: round(setup.hostile_fraction * setup.devices)])
    model = digits_model()
    checkpoint = state_of(model)
    curve = []
    for round_ in range(setup.rounds):
        contributions = []
        for index, user in enumerate(dataset.users):
            data = dataset.train[user]
            seed = setup.seed + 1000 * round_ + index
            diff_bytes, count = train(
                model, encode_state(checkpoint), data.x, data.y, CLIENT_CONFIG, seed=seed
            )
            diff = decode_state(diff_bytes)
            if attack is not None and user in hostile:
                diff = {name: ATTACKS[attack](values) for name, values in diff.items()}
            contributions.append(Contribution(diff=diff, weight=count))
        checkpoint, _ = aggregate(
            checkpoint, contributions, method=method, trim_fraction=setup.trim_fraction
        )
        curve.append(accuracy(model, encode_state(checkpoint), holdout.x, holdout.y))
    return Outcome(method=method, attack=attack, accuracy=curve[-1], curve=curve)


SCENARIOS: tuple[tuple[str, str | None], ...] = (
    ("fedavg", None),
    ("fedavg", "flip"),
    ("median", "flip"),
    ("trimmed_mean", "flip"),
    ("fedavg", "scale"),
    ("median", "scale"),
    ("trimmed_mean", "scale"),
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short", action="store_true", help=f"{SHORT.devices} devices, "
                        f"{SHORT.rounds} rounds")  # fmt: skip
    parser.add_argument("--devices", type=int, default=Setup.devices)
    parser.add_argument("--rounds", type=int, default=Setup.rounds)
    parser.add_argument("--seed", type=int, default=Setup.seed)
    parser.add_argument("--out", type=Path, default=RESULTS / "attack.json")
    args = parser.parse_args()
    setup = SHORT if args.short else Setup(devices=args.devices, rounds=args.rounds)
    setup = Setup(**(asdict(setup) | {"seed": args.seed}))
    hostile = round(setup.hostile_fraction * setup.devices)
    print(
        f"digits, {setup.devices} devices ({hostile} hostile), {setup.rounds} rounds, "
        f"Dirichlet alpha {setup.alpha}, seed {setup.seed}"
    )
    print(f"{'method':>14}{'attack':>10}{'held-out accuracy':>20}")
    outcomes = []
    for method, attack in SCENARIOS:
        outcomes.append(run(setup, method, attack))
        print(f"{method:>14}{attack or 'none':>10}{outcomes[-1].accuracy:>20.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"setup": asdict(setup), "outcomes": [asdict(o) for o in outcomes]}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
