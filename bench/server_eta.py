"""The server step size (``eta``) of FedAdam and FedYogi on the demo's task, in-process:
what ``firegrid demo --strategy`` uses (``firegrid.demo.SERVER_OPTIMIZERS``).

    python -m bench.server_eta [--rounds 20] [--out FILE]

The demo's data (50 devices, Dirichlet alpha 0.5, seed 0), model and client recipe; each
round 10 devices, drawn by a seeded generator, train with the devices' own code
(``firegrid.client.training``), and the server applies the closing's own rules
(``aggregation.combine``, then ``apply_step`` or ``optimizers.step``). No stack and no
timing: the held-out accuracy after each round, for FedAvg and each eta.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import RESULTS, write_results
from firegrid.domain import optimizers
from firegrid.domain.aggregation import Contribution, apply_step, combine

ETAS = (0.003, 0.01, 0.03, 0.1, 0.3)
COHORT = 10


def run(optimizer: optimizers.ServerOptimizer | None, rounds: int) -> list[float]:
    """Held-out accuracy after each round."""
    import torch

    from firegrid.client.training import accuracy, train
    from firegrid.demo import CLIENT_CONFIG, DemoOptions, digits_data, digits_model
    from firegrid.plans import build_plan, load_plan, state_of
    from firegrid.tensors import decode_state, encode_state

    torch.set_num_threads(1)
    dataset, holdout = digits_data(DemoOptions())
    model = digits_model()
    plan = load_plan(build_plan(model, torch.zeros(4, 64)))
    checkpoint, state = state_of(model), optimizers.OptimizerState()
    rng = np.random.default_rng(0)
    scores = []
    for round_ in range(rounds):
        contributions = []
        for user in rng.choice(dataset.users, COHORT, replace=False):
            data = dataset.train[user]
            diff, samples = train(
                plan, encode_state(checkpoint), data.x, data.y, CLIENT_CONFIG, seed=round_
            )
            contributions.append(Contribution(diff=decode_state(diff), weight=samples))
        step = combine(checkpoint, contributions)
        if optimizer is None:
            checkpoint = apply_step(checkpoint, step)
        else:
            checkpoint, state = optimizers.step(checkpoint, step.delta, optimizer, state)
        scores.append(accuracy(plan, encode_state(checkpoint), holdout.x, holdout.y))
    return scores


def contenders() -> dict[str, optimizers.ServerOptimizer | None]:
    chosen: dict[str, optimizers.ServerOptimizer | None] = {"fedavg": None}
    for name in (optimizers.Optimizer.FEDADAM, optimizers.Optimizer.FEDYOGI):
        for eta in ETAS:
            params = {**optimizers.PARAMETERS[name], "eta": eta}
            chosen[f"{name} eta={eta:g}"] = optimizers.ServerOptimizer(name=name, params=params)
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server_eta", description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS / "server_eta.json")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    print(f"{'contender':<20} {'round 5':>7} {'round 10':>8} {'last':>6} {'first >= 0.9':>12}")
    for label, optimizer in contenders().items():
        scores = run(optimizer, args.rounds)
        reached = next((i + 1 for i, score in enumerate(scores) if score >= 0.9), None)
        rows.append({"contender": label, "heldout": scores, "first_round_at_90": reached})
        print(
            f"{label:<20} {scores[min(4, len(scores) - 1)]:>7.3f} "
            f"{scores[min(9, len(scores) - 1)]:>8.3f} {scores[-1]:>6.3f} {reached or '-':>12}"
        )
    write_results(args.out, {"rounds": args.rounds, "cohort": COHORT, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
