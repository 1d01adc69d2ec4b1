"""One cycle of N simulated devices against the local stack: latency per endpoint, the
time to the next checkpoint, and Firestore reads and writes per request and per document.

Each device authenticates, asks for a cycle, downloads the model and reports a diff
(no training), ``--threads`` devices at a time; the process is capped at N places and
closes at N diffs. Baseline in the same run, on the same server: a no-op request (an
unknown path of the device function, answered 404 by its dispatcher). The functions
server counts every document its Firestore RPCs read or write
(``firegrid.local.op_counts``); the table gives them per request of each route and
names the most-written document, which must not grow with N.

    python -m bench.cycle [--devices 200 1000] [--threads 16] [--params 100000] [--out FILE]
    python -m bench.cycle --quick          # N = 50: the CI smoke test
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

RESULTS = Path(__file__).parent / "results"
ENDPOINTS = ("authenticate", "cycle-request", "get-model", "report")
NOOP = "no-op (404)"
CHECKPOINT_WAIT_S = 300.0
COUNT_OPS_ENV = "FIREGRID_COUNT_OPS"  # firegrid.local.functions_server reads it


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _latency(values: Sequence[float], seconds: float) -> dict[str, float]:
    return {
        "requests": len(values),
        "per_second": len(values) / seconds,
        "p50_ms": statistics.median(values) * 1000,
        "p99_ms": _percentile(values, 0.99) * 1000,
    }


class Timings:
    """Latencies per endpoint, from many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: dict[str, list[float]] = defaultdict(list)

    def timed(self, endpoint: str, call: Callable[[], requests.Response]) -> requests.Response:
        started = time.perf_counter()
        response = call()
        elapsed = time.perf_counter() - started
        with self._lock:
            self.seconds[endpoint].append(elapsed)
        return response


def _model(params: int) -> tuple[bytes, bytes, bytes]:
    """A linear model of about ``params`` parameters: its checkpoint, plan and a zero diff."""
    import numpy as np
    import torch

    from firegrid.plans import build_plan, state_of
    from firegrid.tensors import encode_state

    inputs = max(1, params // 100 - 1)
    model = torch.nn.Linear(inputs, 100)
    state = state_of(model)
    zeros = {name: np.zeros_like(value) for name, value in state.items()}
    plan = build_plan(model, torch.zeros(2, inputs))
    return encode_state(state), plan, encode_state(zeros)


def _host(stack: Any, devices: int, model: bytes, plan: bytes) -> str:
    from firegrid.operator_client import OperatorClient

    name = f"bench-{devices}-{time.time_ns()}"
    OperatorClient(stack.base_url, stack.admin_token).host(
        model,
        {"training_plan": plan},
        {"name": name, "version": "1"},
        {
            "cycle_length": 3600,
            "num_cycles": 2,
            "max_workers": devices,
            "max_diffs": devices,
            "min_diffs": devices,
        },
    )
    return name


def _device(base: str, name: str, diff: str, timings: Timings) -> float:
    """One device's turn; returns when its report was answered (monotonic seconds)."""
    http = requests.Session()

    def post(path: str, body: dict[str, Any]) -> requests.Response:
        return http.post(f"{base}/{path}", json=body, timeout=300)

    worker = timings.timed("authenticate", lambda: post("authenticate", {"model_name": name}))
    worker_id = worker.json()["worker_id"]
    reply = timings.timed(
        "cycle-request", lambda: post("cycle-request", {"worker_id": worker_id, "model": name})
    ).json()
    if reply["status"] != "accepted":
        raise RuntimeError(f"a device was not admitted: {reply}")
    keyed = {"worker_id": worker_id, "request_key": reply["request_key"]}
    params = keyed | {"model_id": reply["model_id"]}
    model = timings.timed(
        "get-model", lambda: http.get(f"{base}/get-model", params=params, timeout=300)
    )
    model.raise_for_status()
    done = timings.timed("report", lambda: post("report", keyed | {"diff": diff, "num_samples": 1}))
    done.raise_for_status()
    return time.monotonic()


def _noop(base: str, requests_count: int, threads: int) -> dict[str, float]:
    timings = Timings()
    local = threading.local()

    def call(_: int) -> None:
        http = local.__dict__.setdefault("http", requests.Session())
        timings.timed(NOOP, lambda: http.get(f"{base}/no-such-endpoint", timeout=60))

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(call, range(requests_count)))
    return _latency(timings.seconds[NOOP], time.perf_counter() - started)


def _counts(path: Path) -> dict[str, dict[str, int]]:
    time.sleep(1.0)  # the server rewrites the file every 0.25 s
    return json.loads(path.read_text()) if path.exists() else {}


def _since(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]]) -> dict[str, Any]:
    return {
        kind: {
            key: value - before.get(kind, {}).get(key, 0)
            for key, value in table.items()
            if value != before.get(kind, {}).get(key, 0)
        }
        for kind, table in after.items()
    }


def _operations(ops: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Reads and writes per request of each route, and the busiest documents."""
    per_route = {
        route: {
            "requests": count,
            "reads_per_request": ops.get("reads", {}).get(route, 0) / count,
            "writes_per_request": ops.get("writes", {}).get(route, 0) / count,
        }
        for route, count in sorted(ops.get("requests", {}).items())
    }
    top_write = max(ops.get("doc_writes", {}).items(), key=lambda kv: kv[1], default=("", 0))
    top_read = max(ops.get("doc_reads", {}).items(), key=lambda kv: kv[1], default=("", 0))
    return {
        "per_route": per_route,
        "reads": sum(ops.get("reads", {}).values()),
        "writes": sum(ops.get("writes", {}).values()),
        "refused_writes": sum(ops.get("refused", {}).values()),
        "most_written": {"document": top_write[0], "writes": top_write[1]},
        "most_read": {"document": top_read[0], "reads": top_read[1]},
    }


def _checkpoint_after(stack: Any, name: str, last_report: float) -> float:
    """Seconds from the last report's answer until checkpoint 2 can be downloaded (polled
    by ``retrieve-model``, which reads one process, not the status's whole pool)."""
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {stack.admin_token}"
    params = {"name": name, "checkpoint": "2"}
    deadline = time.monotonic() + CHECKPOINT_WAIT_S
    while http.get(f"{stack.base_url}/admin/retrieve-model", params=params).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"checkpoint 2 did not appear within {CHECKPOINT_WAIT_S} s")
        time.sleep(0.02)
    return time.monotonic() - last_report


def run_cycle(
    stack: Any, counts_file: Path, devices: int, threads: int, model: tuple[bytes, bytes, bytes]
) -> dict[str, Any]:
    checkpoint, plan, diff = model
    name = _host(stack, devices, checkpoint, plan)
    noop = _noop(f"{stack.base_url}/model-centric", devices, threads)
    before = _counts(counts_file)
    timings = Timings()
    encoded = base64.b64encode(diff).decode()
    base = f"{stack.base_url}/model-centric"
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        answered = list(pool.map(lambda _: _device(base, name, encoded, timings), range(devices)))
    seconds = time.perf_counter() - started
    to_checkpoint = _checkpoint_after(stack, name, max(answered))
    ops = _since(_counts(counts_file), before)
    endpoints = {e: _latency(timings.seconds[e], seconds) for e in ENDPOINTS}
    for row in endpoints.values():
        row["p50_vs_noop"] = row["p50_ms"] / noop["p50_ms"]
    return {
        "devices": devices,
        "threads": threads,
        "seconds": seconds,
        "devices_per_second": devices / seconds,
        "endpoints": endpoints,
        "noop": noop,
        "last_report_to_checkpoint_s": to_checkpoint,
        "operations": _operations(ops),
    }


def _print(runs: list[dict[str, Any]]) -> None:
    header = f"{'N':>6} {'endpoint':<26}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'p50/no-op':>10}"
    print(header + f"{'reads/req':>11}{'writes/req':>11}")
    for run in runs:
        per_route = run["operations"]["per_route"]
        rows = [(e, run["endpoints"][e], per_route.get(f"/model-centric/{e}")) for e in ENDPOINTS]
        rows.append((NOOP, run["noop"] | {"p50_vs_noop": 1.0}, None))
        for endpoint, row, ops in rows:
            counted = (
                f"{ops['reads_per_request']:>11.1f}{ops['writes_per_request']:>11.1f}"
                if ops
                else ""
            )
            print(
                f"{run['devices']:>6} {endpoint:<26}{row['per_second']:>8.1f}{row['p50_ms']:>9.0f}"
                f"{row['p99_ms']:>9.0f}{row['p50_vs_noop']:>10.1f}{counted}"
            )
        for route, ops in per_route.items():
            if not route.startswith("/model-centric/"):
                print(
                    f"{run['devices']:>6} {route:<26}{'':>36}"
                    f"{ops['reads_per_request']:>11.1f}{ops['writes_per_request']:>11.1f}"
                    f"  ({ops['requests']} calls)"
                )
        top = run["operations"]["most_written"]
        print(
            f"{run['devices']:>6} devices/s {run['devices_per_second']:.1f}; last report -> "
            f"checkpoint 2: {run['last_report_to_checkpoint_s']:.2f} s; reads "
            f"{run['operations']['reads']}, writes {run['operations']['writes']}; most written: "
            f"{top['document']} ({top['writes']})"
        )
    if len(runs) > 1:
        first, last = runs[0], runs[-1]
        ratio = (
            last["endpoints"]["cycle-request"]["p50_ms"]
            / first["endpoints"]["cycle-request"]["p50_ms"]
        )
        print(
            f"cycle-request p50 at N = {last['devices']} / N = {first['devices']}: {ratio:.2f}x "
            "(target <= 1.5x)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--quick", action="store_true", help="N = 50 only (the CI smoke test)")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--out", type=Path, help="JSON file (default: bench/results/cycle-*.json)")
    args = parser.parse_args(argv)
    devices = [50] if args.quick else args.devices

    from firegrid.local.stack import start_stack, stop_stack

    model = _model(args.params)
    with tempfile.TemporaryDirectory() as tmp:
        counts_file = Path(tmp) / "op-counts.json"
        os.environ[COUNT_OPS_ENV] = str(counts_file)  # inherited by the functions server
        try:
            stack = start_stack(Path(tmp) / "stack", tick_seconds=0)
        finally:
            del os.environ[COUNT_OPS_ENV]
        try:
            runs = [run_cycle(stack, counts_file, n, args.threads, model) for n in devices]
        finally:
            stop_stack(Path(tmp) / "stack")
    _print(runs)
    result = {"benchmark": "cycle", "at": datetime.now(UTC).isoformat(), "runs": runs}
    out = args.out or RESULTS / f"cycle-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
