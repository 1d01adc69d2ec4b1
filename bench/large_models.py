"""A large model end to end on the local stack, and the functions process's memory.

Hosts a model of ``--mb`` megabytes (a stack of 1024x1024 linear layers, its plan as
large again) through upload URLs, lets ``--devices`` devices download it at once
(signed-URL redirects), report diffs through upload URLs (all but one at once), then
the last report closes the cycle and the operator retrieves checkpoint 2. For each
phase: wall time and the peak RSS of the functions server process (the one process
serving every function locally), its peak reset before the phase.

    python -m bench.large_models [--mb 200] [--devices 4]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from firegrid.client.protocol import Assignment, DeviceClient
from firegrid.local.stack import StackInfo, start_stack, stop_stack
from firegrid.operator_client import OperatorClient
from firegrid.tensors import decode_state, encode_state

RESULTS = Path(__file__).parent / "results"
WIDTH = 1024
MIB = 2**20
DIFF = 0.125
"""Every device reports this same diff on every tensor: checkpoint 2 = model - DIFF."""


def build(megabytes: float) -> tuple[bytes, bytes]:
    """A model of about ``megabytes`` MB (float32) as safetensors, and its training plan."""
    import torch

    from firegrid.plans import build_plan, state_of

    layer_bytes = (WIDTH * WIDTH + WIDTH) * 4
    layers = max(1, math.ceil(megabytes * 1e6 / layer_bytes))
    module = torch.nn.Sequential(*(torch.nn.Linear(WIDTH, WIDTH) for _ in range(layers)))
    plan = build_plan(module, torch.zeros(2, WIDTH))
    return encode_state(state_of(module)), plan


def diff_like(model: bytes) -> bytes:
    state = decode_state(model)
    return encode_state({name: np.full_like(t, DIFF) for name, t in state.items()})


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (gunicorn's arbiter serves through a worker process)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, pending = [], [pid]
    while pending:
        tree.append(pending.pop())
        pending += children.get(tree[-1], [])
    return tree


def _total_kib(pids: list[int], key: str) -> int:
    return sum(_status_kib(pid, key) for pid in pids)


@dataclass
class Phases:
    pid: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str, transfers: int, payload_bytes: int) -> Iterator[None]:
        """Time the block and the functions processes' peak RSS during it (the sum of each
        one's kernel high-water mark, reset first through clear_refs)."""
        pids = _tree(self.pid)
        for pid in pids:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        before = _total_kib(pids, "VmRSS") * 1024
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        peak = _total_kib(pids, "VmHWM") * 1024
        row = {
            "phase": name,
            "transfers": transfers,
            "seconds": round(seconds, 2),
            "rss_before_mib": round(before / MIB),
            "peak_rss_mib": round(peak / MIB),
            "peak_growth_mib": round((peak - before) / MIB),
            "growth_per_payload_x_transfers": round(
                (peak - before) / (payload_bytes * transfers), 3
            ),
        }
        self.rows.append(row)
        print(
            f"{name:10s} x{transfers}: {seconds:7.1f} s, functions RSS {row['rss_before_mib']} -> "
            f"peak {row['peak_rss_mib']} MiB (+{row['peak_growth_mib']} MiB = "
            f"{row['growth_per_payload_x_transfers']:.2f} x payload x transfers)"
        )


def _all(work: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(work, items))


def run(stack: StackInfo, megabytes: float, devices: int, name: str = "big") -> dict[str, Any]:
    """The whole journey; returns the figures and what the checks need."""
    model, plan = build(megabytes)
    diff = diff_like(model)
    phases = Phases(stack.current_pids()["functions"])
    operator = OperatorClient(stack.base_url, stack.admin_token, timeout_s=900)
    client_config = {"name": name, "version": "1.0", "batch_size": 4, "lr": 0.1}
    server_config = {"cycle_length": 3600, "num_cycles": 2, "max_diffs": devices}
    with phases.phase("host", 1, len(model) + len(plan)):
        process_id = operator.host(model, {"training_plan": plan}, client_config, server_config)

    clients = [DeviceClient(stack.base_url, timeout_s=900) for _ in range(devices)]
    places: list[Assignment] = []
    for client in clients:
        worker = client.authenticate(name, "1.0")
        offer = client.cycle_request(worker, name, "1.0")
        assert isinstance(offer, Assignment), offer
        places.append(offer)
    with phases.phase("download", devices, len(model)):
        digests = _all(
            lambda i: hashlib.sha256(clients[i].get_model(places[i])).hexdigest(),
            list(range(devices)),
        )
    with phases.phase("report", devices - 1, len(diff)):
        _all(lambda i: clients[i].report(places[i], diff, 10), list(range(devices - 1)))
    with phases.phase("close", 1, len(diff)):
        clients[-1].report(places[-1], diff, 10)
        checkpoint = operator.wait_for_checkpoint(name, "1.0", 2, timeout_s=900)
    with phases.phase("retrieve", 1, len(checkpoint)):
        retrieved = operator.checkpoint(name, "1.0", 2)
    return {
        "model_mb": round(len(model) / 1e6, 1),
        "plan_mb": round(len(plan) / 1e6, 1),
        "devices": devices,
        "rows": phases.rows,
        "process_id": process_id,
        "model_digest": hashlib.sha256(model).hexdigest(),
        "download_digests": digests,
        "checkpoint_matches": _is_model_minus_diff(retrieved, model),
    }


def _is_model_minus_diff(checkpoint: bytes, model: bytes) -> bool:
    new, old = decode_state(checkpoint), decode_state(model)
    return new.keys() == old.keys() and all(
        np.allclose(new[key], old[key] - DIFF, atol=1e-5) for key in old
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS / "large_models.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="firegrid-large-") as directory:
        stack = start_stack(Path(directory), tick_seconds=0)
        try:
            result = run(stack, args.mb, args.devices)
        finally:
            stop_stack(Path(directory))
    print(
        f"model {result['model_mb']} MB, plan {result['plan_mb']} MB; downloads intact: "
        f"{set(result['download_digests']) == {result['model_digest']}}; "
        f"checkpoint 2 = model - diff: {result['checkpoint_matches']}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figures = {key: result[key] for key in ("model_mb", "plan_mb", "devices", "rows")}
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
