"""Admission under load: FireGrid's capped slots vs a transactional counter (PyGrid's shape).

Both run against the same Firestore emulator in one run. FireGrid: N devices send
``cycle-request`` at once over HTTP (the whole device path: functions server,
Firestore, the ``max_workers`` cap by create-if-absent slot documents). Baseline:
the same N admissions done the obvious way, a read-check-increment transaction
on one cycle document, which every request writes. The emulator makes contended
transactions wait ~2 s per conflict (production Firestore sustains about one
write per second per document), so the baseline is bounded in count and time.

    python -m bench.admission [--requests 200] [--max-workers 50] [--baseline-requests 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

RESULTS = Path(__file__).parent / "results"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(results: list[tuple[bool, float]], elapsed: float) -> dict[str, float]:
    latencies = [latency for _, latency in results]
    return {
        "requests": len(results),
        "accepted": sum(ok for ok, _ in results),
        "seconds": elapsed,
        "per_second": len(results) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p95_ms": _percentile(latencies, 0.95) * 1000,
    }


def _firegrid(stack: Any, total: int, max_workers: int) -> dict[str, float]:
    import torch

    from firegrid.client.protocol import DeviceClient
    from firegrid.operator_client import OperatorClient
    from firegrid.plans import build_plan, state_of
    from firegrid.tensors import encode_state

    model = torch.nn.Linear(8, 2)
    OperatorClient(stack.base_url, stack.admin_token).host(
        encode_state(state_of(model)),
        {"training_plan": build_plan(model, torch.zeros(2, 8))},
        {"name": "bench", "version": str(time.time_ns())},
        {
            "cycle_length": 600,
            "num_cycles": 1,
            "max_workers": max_workers,
            "max_diffs": max_workers,
        },
    )
    client = DeviceClient(stack.base_url)
    with ThreadPoolExecutor(16) as pool:
        workers = list(pool.map(lambda _: client.authenticate("bench"), range(total)))

    def request(worker_id: str) -> tuple[bool, float]:
        started = time.perf_counter()
        reply = requests.post(
            f"{stack.base_url}/model-centric/cycle-request",
            json={"worker_id": worker_id, "model": "bench"},
            timeout=120,
        ).json()
        return reply["status"] == "accepted", time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(request, workers))
    return _summary(results, time.perf_counter() - started)


def _transactional_counter(
    stack: Any, total: int, max_workers: int, threads: int, limit_s: float
) -> dict[str, float]:
    from google.cloud import firestore

    db = firestore.Client(project=stack.project_id)
    cycle = db.collection("bench").document(f"cycle-{time.time_ns()}")
    cycle.set({"assigned": 0})

    def admit(_: int) -> tuple[bool, float]:
        started = time.perf_counter()

        @firestore.transactional
        def take(transaction: firestore.Transaction) -> bool:
            assigned = cycle.get(transaction=transaction).get("assigned")
            if assigned >= max_workers:
                return False
            transaction.update(cycle, {"assigned": assigned + 1})
            return True

        try:
            ok = bool(take(db.transaction(max_attempts=50)))
        except Exception:  # gave up after retries: counts as a failed admission
            ok = False
        return ok, time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(admit, i) for i in range(total)]
        results = [f.result(timeout=limit_s) for f in futures]
    return _summary(results, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-workers", type=int, default=50)
    parser.add_argument("--baseline-requests", type=int, default=16)
    parser.add_argument(
        "--baseline-threads",
        type=int,
        default=4,
        help="concurrency of the baseline (64 starves it)",
    )
    parser.add_argument("--baseline-limit-s", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "admission.json")
    args = parser.parse_args(argv)

    import os

    from firegrid.local.stack import start_stack, stop_stack

    with tempfile.TemporaryDirectory() as tmp:
        stack = start_stack(Path(tmp), tick_seconds=0)
        try:
            os.environ.update(stack.client_env())
            ours = _firegrid(stack, args.requests, args.max_workers)
            base = _transactional_counter(
                stack, args.baseline_requests, min(args.max_workers, args.baseline_requests // 2),
                args.baseline_threads, args.baseline_limit_s,
            )  # fmt: skip
        finally:
            stop_stack(Path(tmp))
    print(
        f"{'':28}{'requests':>9}{'accepted':>9}{'seconds':>9}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}"
    )
    for label, row in (("firegrid (HTTP, slots)", ours), ("transactional counter", base)):
        print(
            f"{label:28}{row['requests']:>9.0f}{row['accepted']:>9.0f}{row['seconds']:>9.2f}"
            f"{row['per_second']:>8.1f}{row['p50_ms']:>9.0f}{row['p95_ms']:>9.0f}"
        )
    ratio = ours["per_second"] / base["per_second"]
    print(f"throughput ratio firegrid/baseline: {ratio:.1f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"firegrid": ours, "baseline": base, "ratio": ratio}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
