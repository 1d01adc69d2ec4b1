"""Time per local training step: ExecuTorch's runtime (the phone path) vs the torch plan.

One step = forward, loss, backward and an SGD update (momentum 0.9) on one batch. The
torch path is the Python device's: the ``torch.export`` plan's module, torch's
autograd and ``torch.optim.SGD`` (``firegrid.client.training``). The ExecuTorch path
is the phone's: the ``.pte`` training program in ExecuTorch's runtime (portable
kernels, as the pip wheel ships them) and ExecuTorch's SGD
(``firegrid.client.executorch_training``). One thread each; the median of ``--steps``
steps after ``--warmup``; also the plan sizes and the time hosting takes to build (and
check) the ``.pte`` from the ``.pt2`` (``executorch_variant``).

    python -m bench.executorch_step [--steps 200] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from firegrid.client import executorch_training
from firegrid.client.models import DigitsCNN
from firegrid.executorch_plans import TrainingProgram, executorch_variant
from firegrid.plans import build_plan, load_plan, state_of

RESULTS = Path(__file__).parent / "results"


class MLP(torch.nn.Module):
    """A 784-256-10 MLP (an MNIST-sized one), to see the runtimes on larger matmuls."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(784, 256)
        self.out = torch.nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


MODELS: dict[str, tuple[Callable[[], torch.nn.Module], int]] = {
    "digits_cnn": (DigitsCNN, 64),
    "mlp_784_256_10": (MLP, 784),
}


def _median_ms(step: Callable[[], Any], steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def bench_model(name: str, batch: int, steps: int, warmup: int) -> dict[str, Any]:
    make, features = MODELS[name]
    torch.manual_seed(0)
    model = make()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, features)).astype(np.float32)
    y = rng.integers(0, 10, batch).astype(np.int64)

    pt2 = build_plan(model, torch.zeros(4, features))
    module = load_plan(pt2)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)

    def torch_step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(module(inputs), targets).backward()
        optimizer.step()

    started = time.perf_counter()
    pte = executorch_variant(pt2, state_of(model), name, {"batch_size": batch})
    build_s = time.perf_counter() - started
    program = TrainingProgram(pte)
    sgd = executorch_training._sgd(program, {"lr": 0.01, "momentum": 0.9})

    def executorch_step() -> None:
        sgd.step(program.forward_backward(x, y)[2])

    torch_ms = _median_ms(torch_step, steps, warmup)
    executorch_ms = _median_ms(executorch_step, steps, warmup)
    return {
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": batch,
        "torch_ms_per_step": round(torch_ms, 3),
        "executorch_ms_per_step": round(executorch_ms, 3),
        "executorch_over_torch": round(executorch_ms / torch_ms, 2),
        "pt2_bytes": len(pt2),
        "pte_bytes": len(pte),
        "pte_build_s": round(build_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS / "executorch_step.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a phone trains on one core; so does each simulated device
    rows = [bench_model(name, args.batch, args.steps, args.warmup) for name in MODELS]
    for row in rows:
        print(
            f"{row['model']:>15} ({row['parameters']:,} params, batch {row['batch']}): "
            f"torch {row['torch_ms_per_step']:.3f} ms/step, "
            f"ExecuTorch {row['executorch_ms_per_step']:.3f} ms/step "
            f"({row['executorch_over_torch']}x); .pt2 {row['pt2_bytes']:,} B, "
            f".pte {row['pte_bytes']:,} B built in {row['pte_build_s']} s"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": 1, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
