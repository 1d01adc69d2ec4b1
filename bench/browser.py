"""Time per local training step: the browser SDK's engine in headless chromium vs the
``torch.export`` plan in Python, on this machine.

Both train the same hosted model from the same checkpoint with the demo's recipe (SGD,
momentum 0.9, batch 8) on the same digits shard; the browser runs the ``layers``
variant hosting builds, timed inside the page (``train``'s ``stepSeconds``), the
Python device the plan as ``firegrid.client.training.train`` does. Each figure is the
median of ``--repeats`` runs of ``--steps`` steps, after one warm-up run.

    python -m bench.browser [--steps 200] [--repeats 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import RESULTS, write_results
from firegrid.client.data import digits_federated
from firegrid.client.training import train
from firegrid.demo import CLIENT_CONFIG
from firegrid.layer_plans import layers_variant
from firegrid.local.web_page import chromium_executable, served_page
from firegrid.plans import build_plan, load_plan, state_of
from firegrid.tensors import encode_state

TRAIN = """async ({spec, checkpoint, x, y, config}) => {
  const fg = window.firegrid;
  const data = {x: Float32Array.from(x), y: Int32Array.from(y)};
  return fg.train(spec, window.bytesOf(checkpoint), data, config).stepSeconds;
}"""


def _models() -> dict[str, Callable[[], Any]]:
    import torch

    from firegrid.client.models import DigitsCNN

    return {
        "digits_cnn": DigitsCNN,
        "mlp_64_32_10": lambda: torch.nn.Sequential(
            torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
        ),
    }


def _median_of(run: Callable[[], float], repeats: int) -> float:
    run()  # warm-up: JIT, caches, lazy imports
    return statistics.median(run() for _ in range(repeats))


def _torch_step_s(
    plan: bytes, checkpoint: bytes, x: np.ndarray, y: np.ndarray, config: dict
) -> float:
    module = load_plan(plan)

    def run() -> float:
        started = time.perf_counter()
        train(module, checkpoint, x, y, config)
        return (time.perf_counter() - started) / config["max_updates"]

    return run()


def bench(steps: int, repeats: int) -> dict[str, Any]:
    import torch
    from playwright.sync_api import sync_playwright

    dataset, _ = digits_federated(num_devices=3, seed=0)
    shard = dataset.train[dataset.users[0]]
    config = CLIENT_CONFIG | {"max_updates": steps}
    executable = chromium_executable()
    if executable is None:
        raise SystemExit("chromium is needed: `bash scripts/dev.sh test` installs it")
    figures: dict[str, Any] = {}
    default_threads = torch.get_num_threads()
    with sync_playwright() as playwright, served_page() as origin:
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = chromium.new_page()
        page.goto(origin)
        page.wait_for_function("window.sdkReady === true")
        for name, make in _models().items():
            torch.manual_seed(0)
            module = make()
            plan = build_plan(module, torch.zeros(2, 64))
            checkpoint = encode_state(state_of(module))
            spec = json.loads(layers_variant(plan, state_of(module), "training_plan"))
            arguments = {
                "spec": spec,
                "checkpoint": base64.b64encode(checkpoint).decode(),
                "x": shard.x.flatten().tolist(),
                "y": shard.y.tolist(),
                "config": config,
            }
            browser_s = _median_of(functools.partial(page.evaluate, TRAIN, arguments), repeats)
            torch_s = {}
            for threads in sorted({1, default_threads}):
                torch.set_num_threads(threads)
                torch_s[threads] = _median_of(
                    functools.partial(_torch_step_s, plan, checkpoint, shard.x, shard.y, config),
                    repeats,
                )
            torch.set_num_threads(default_threads)
            figures[name] = {
                "parameters": sum(p.numel() for p in module.parameters()),
                "browser_step_ms": round(browser_s * 1000, 3),
                "torch_plan_step_ms_by_threads": {
                    str(t): round(s * 1000, 3) for t, s in torch_s.items()
                },
                "browser_over_torch_1_thread": round(browser_s / torch_s[1], 2),
            }
            by_threads = "   ".join(
                f"torch plan ({t} thread{'s' * (t > 1)}) {s * 1000:8.3f} ms/step"
                for t, s in torch_s.items()
            )
            print(f"{name:>14}: browser {browser_s * 1000:8.3f} ms/step   {by_threads}")
        version = chromium.version
        chromium.close()
    return {
        "what": "time per local step (batch 8, SGD momentum 0.9), median of repeats",
        "steps": steps,
        "repeats": repeats,
        "batch_size": config["batch_size"],
        "chromium": version,
        "torch": torch.__version__,
        "torch_default_threads": default_threads,
        "machine": platform.machine(),
        "load_average": list(os.getloadavg()),
        "models": figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "browser.json")
    args = parser.parse_args()
    write_results(args.out, bench(args.steps, args.repeats))


if __name__ == "__main__":
    main()
