"""Closing time of a big cohort: single pass vs fan-out, on the local stack.

Starts a stack of its own (stopped by PID at the end), hosts the same small model
twice (``fanout_threshold`` above K: one invocation aggregates every diff; below K:
groups aggregated by parallel trigger invocations, then combined) and gives both
the same K reported diffs, seeded straight into the emulators through FireGrid's
own adapters (the device API is not what is measured). The K-th report fills the
cycle; the closing time is the cycle document's ``closed_at - closing_at``, both
stamped by the functions, plus the wall time the bench saw. Both checkpoints are
checked equal to float32 precision.

    python -m bench.fanout [--diffs 1000] [--group 250] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
import requests

from firegrid.domain.limits import MAX_FANOUT_THRESHOLD
from firegrid.domain.model import Report, Worker
from firegrid.local.stack import StackInfo, start_stack, stop_stack
from firegrid.tensors import decode_state, encode_state

RESULTS = Path(__file__).parent / "results"
WIDTH = 32
"""The model: Linear(WIDTH, WIDTH) + Linear(WIDTH, 10), about 1.4k parameters."""


def _model() -> tuple[dict[str, np.ndarray], bytes]:
    import torch

    from firegrid.plans import build_plan, state_of

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.Linear(WIDTH, 10))
    return state_of(module), build_plan(module, torch.zeros(2, WIDTH))


def _host(stack: StackInfo, name: str, diffs: int, threshold: int) -> str:
    import base64

    state, plan = _model()
    body = {
        "model": base64.b64encode(encode_state(state)).decode(),
        "plans": {"training_plan": base64.b64encode(plan).decode()},
        "client_config": {"name": name, "version": "1"},
        "server_config": {
            "cycle_length": None,
            "num_cycles": 1,
            "max_diffs": diffs,
            "fanout_threshold": threshold,
        },
    }
    response = requests.post(
        f"{stack.base_url}/admin/host-training",
        json=body,
        headers={"Authorization": f"Bearer {stack.admin_token}"},
        timeout=120,
    )
    if response.status_code != 201:
        raise RuntimeError(f"hosting {name} failed: {response.status_code} {response.text}")
    return str(response.json()["process_id"])


def _seed(stack: StackInfo, process_id: str, diffs: list[bytes]) -> None:
    """K workers with a place and a counted report each, through the adapters."""
    from google.cloud import firestore, storage

    from firegrid.adapters.firestore_repo import FirestoreRepository
    from firegrid.adapters.storage import GcsBlobStore

    repo = FirestoreRepository(firestore.Client(project=stack.project_id))
    blobs = GcsBlobStore(storage.Client(project=stack.project_id), stack.bucket)
    cycle = repo.get_cycle(process_id, 1)
    assert cycle is not None
    now = datetime.now(UTC)

    def one(index: int) -> None:
        worker_id = f"bench{index:05d}"
        repo.save_worker(
            Worker(id=worker_id, process_id=process_id, subject=worker_id, created_at=now)
        )
        repo.claim_place(process_id, cycle, worker_id, now, None)
        name = f"processes/{process_id}/diffs/1/{worker_id}.safetensors"
        blobs.put(name, diffs[index])
        report = Report(epoch=0, num_samples=index % 50 + 1, diff_object=name, at=now)
        repo.record_report(process_id, 1, worker_id, report)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(len(diffs))))


def _closed(stack: StackInfo, process_id: str, timeout_s: float) -> dict[str, Any]:
    from google.cloud import firestore

    document = firestore.Client(project=stack.project_id).document(
        f"processes/{process_id}/cycles/1"
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        data = document.get().to_dict() or {}
        if data.get("status") == "completed":
            return data
        time.sleep(0.1)
    raise RuntimeError(f"cycle 1 of {process_id} did not close within {timeout_s:.0f} s")


def _checkpoint(stack: StackInfo, name: str) -> dict[str, np.ndarray]:
    response = requests.get(
        f"{stack.base_url}/admin/retrieve-model",
        params={"name": name, "checkpoint": 2},
        headers={"Authorization": f"Bearer {stack.admin_token}"},
        timeout=60,
    )
    response.raise_for_status()
    return decode_state(response.content)


def run(diffs: int, group: int) -> dict[str, Any]:
    state, _ = _model()
    rng = np.random.default_rng(0)
    payloads = [
        encode_state({k: rng.normal(0, 0.01, v.shape).astype(v.dtype) for k, v in state.items()})
        for _ in range(diffs)
    ]
    results: dict[str, Any] = {
        "diffs": diffs,
        "group": group,
        "params": sum(v.size for v in state.values()),
    }
    with TemporaryDirectory() as directory:
        stack = start_stack(Path(directory), tick_seconds=1, threads=32)
        saved = dict(os.environ)
        os.environ.update(stack.client_env())  # the adapters here talk to its emulators
        try:
            for mode, threshold in (("single", MAX_FANOUT_THRESHOLD), ("fanout", group)):
                process_id = _host(stack, mode, diffs, threshold)
                started = time.monotonic()
                _seed(stack, process_id, payloads)
                seeded = time.monotonic()
                closed = _closed(stack, process_id, timeout_s=600)
                waited = time.monotonic() - seeded
                closing_s = (closed["closed_at"] - closed["closing_at"]).total_seconds()
                results[mode] = {
                    "closing_s": closing_s,
                    "after_last_report_s": waited,
                    "seeding_s": seeded - started,
                    "num_diffs": closed["num_diffs"],
                }
                print(
                    f"{mode:>7}: closing {closing_s:6.2f} s (server clock), "
                    f"{waited:6.2f} s after the last report, {closed['num_diffs']} diffs"
                )
            single, fanned = _checkpoint(stack, "single"), _checkpoint(stack, "fanout")
            for name in single:
                np.testing.assert_allclose(fanned[name], single[name], rtol=1e-6, atol=1e-7)
            print("fan-out checkpoint equals the single-pass one (float32 precision)")
        finally:
            os.environ.clear()
            os.environ.update(saved)
            stop_stack(Path(directory))
    results["ratio_fanout_to_single"] = (
        results["fanout"]["closing_s"] / results["single"]["closing_s"]
    )
    print(f"fan-out / single-pass closing time: {results['ratio_fanout_to_single']:.2f}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--diffs", type=int, default=1000, help="K reported diffs (default 1000)")
    parser.add_argument("--group", type=int, default=250, help="fanout_threshold (default 250)")
    parser.add_argument("--quick", action="store_true", help="K = 40, groups of 10 (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS / "fanout.json")
    args = parser.parse_args(argv)
    diffs, group = (40, 10) if args.quick else (args.diffs, args.group)
    if not 2 <= group < diffs <= MAX_FANOUT_THRESHOLD:
        parser.error(f"need 2 <= --group < --diffs <= {MAX_FANOUT_THRESHOLD} (a single pass)")
    results = run(diffs, group)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
