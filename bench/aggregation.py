"""Aggregation memory and speed: FireGrid's streaming FedAvg vs an all-in-memory baseline.

The baseline is what Flower-style aggregation does: decode every diff, hold them
all, then average (memory (K+2) x model). FireGrid folds one diff at a time
into a float64 sum (memory O(model)). Both run here, in the same process, on
the same diff files, so the ratio is robust to a noisy machine.

    python bench/aggregation.py [--clients 50] [--params 1000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from firegrid.domain.aggregation import Contribution, aggregate
from firegrid.tensors import decode_state, encode_state


def _write_diffs(
    directory: Path, clients: int, params: int
) -> tuple[dict[str, np.ndarray], list[Path]]:
    rng = np.random.default_rng(0)
    half = params // 2
    model = {
        "a.weight": rng.normal(size=half).astype(np.float32),
        "b.weight": rng.normal(size=params - half).astype(np.float32),
    }
    paths = []
    for k in range(clients):
        path = directory / f"{k}.safetensors"
        path.write_bytes(
            encode_state({n: rng.normal(size=v.shape).astype(np.float32) for n, v in model.items()})
        )
        paths.append(path)
    return model, paths


def _streaming(model: dict[str, np.ndarray], paths: list[Path]) -> dict[str, np.ndarray]:
    def contributions() -> Iterator[Contribution]:
        for k, path in enumerate(paths):
            yield Contribution(diff=decode_state(path.read_bytes()), weight=k + 1)

    return aggregate(model, contributions())[0]


def _all_in_memory(model: dict[str, np.ndarray], paths: list[Path]) -> dict[str, np.ndarray]:
    diffs = [decode_state(path.read_bytes()) for path in paths]
    weights = np.arange(1, len(paths) + 1, dtype=np.float64)
    return {
        name: (
            old - np.average(np.stack([d[name] for d in diffs]), axis=0, weights=weights)
        ).astype(old.dtype)
        for name, old in model.items()
    }


def measure(
    run: Callable[[], dict[str, np.ndarray]],
) -> tuple[dict[str, np.ndarray], float, float]:
    """``run()``'s result, its seconds and its peak traced memory in MiB."""
    tracemalloc.start()
    started = time.perf_counter()
    result = run()
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, elapsed, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--params", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model, paths = _write_diffs(Path(tmp), args.clients, args.params)
        model_mib = sum(v.nbytes for v in model.values()) / 2**20
        streamed, stream_s, stream_mib = measure(lambda: _streaming(model, paths))
        baseline, base_s, base_mib = measure(lambda: _all_in_memory(model, paths))
    for name in model:
        np.testing.assert_allclose(streamed[name], baseline[name], atol=1e-5)
    print(f"model: {args.params:,} float32 params ({model_mib:.1f} MiB), {args.clients} diffs")
    print(f"{'':24}{'peak MiB':>10}{'x model':>10}{'seconds':>10}")
    for label, mib, seconds in (
        ("all-in-memory baseline", base_mib, base_s),
        ("firegrid streaming", stream_mib, stream_s),
    ):
        print(f"{label:24}{mib:>10.1f}{mib / model_mib:>10.1f}{seconds:>10.2f}")
    print(f"baseline/streaming: memory {base_mib / stream_mib:.1f}x, time {base_s / stream_s:.2f}x")


if __name__ == "__main__":
    main()
