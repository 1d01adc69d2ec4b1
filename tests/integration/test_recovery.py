"""Faults as the platform produces them, on a stack that injects them: trigger
deliveries duplicated, dropped and delayed, ticks skipped, and the functions server
killed in the middle of an aggregation. Every cycle still completes once, and every
checkpoint is the FedAvg of exactly the diffs reported."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import requests
from google.cloud import firestore

from firegrid.local._process import stop_process_groups
from firegrid.local.router import STATUS_PATH
from firegrid.local.stack import StackInfo, start_stack, stop_stack
from firegrid.settings import CLOSING_LEASE_ENV, REDRIVE_GRACE_ENV
from firegrid.tensors import decode_state, encode_state
from tests.common import State, b64

from .support import Api, wait_for

pytestmark = pytest.mark.integration

FAULTS = "duplicate=0.3,drop=0.1,delay=1"
LEASE_S = 6
"""The test stack's closing lease: a dead aggregator's cycle is re-driven this soon."""


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    """A stack of its own, injecting FAULTS, with a short lease and re-drive grace."""
    directory = tmp_path_factory.mktemp("faulty")
    with pytest.MonkeyPatch.context() as env:
        env.setenv(CLOSING_LEASE_ENV, str(LEASE_S))
        env.setenv(REDRIVE_GRACE_ENV, "3")
        info = start_stack(directory, tick_seconds=1, threads=16, faults=FAULTS, fault_seed=11)
    try:
        yield info
    finally:
        stop_stack(directory)


@pytest.fixture
def api(faulty: StackInfo) -> Api:
    return Api(faulty.base_url, faulty.admin_token)


@pytest.fixture
def db(faulty: StackInfo, monkeypatch: pytest.MonkeyPatch) -> firestore.Client:
    for key, value in faulty.client_env().items():
        monkeypatch.setenv(key, value)
    return firestore.Client(project=faulty.project_id)


@functools.cache
def model(width: int) -> tuple[State, bytes]:
    import torch

    from firegrid.plans import build_plan, state_of

    torch.manual_seed(1)
    module = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Linear(width, 10))
    return state_of(module), build_plan(module, torch.zeros(2, width))


def host(api: Api, name: str, width: int, **server: object) -> str:
    state, plan = model(width)
    body = {
        "model": b64(encode_state(state)),
        "plans": {"training_plan": b64(plan)},
        "client_config": {"name": name, "version": "1", "batch_size": 4, "lr": 0.1},
        "server_config": {"cycle_length": 600, **server},
    }
    response = api.admin("POST", "host-training", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["process_id"])


def train_cycle(api: Api, name: str, seq: int, count: int) -> list[tuple[State, int]]:
    """``count`` devices join cycle ``seq`` and report seeded diffs; the (diff, samples)."""
    wait_for(lambda: api.status(name)["current_cycle"]["seq"] == seq, 120, f"cycle {seq}")
    rng = np.random.default_rng(seq)
    reported = []
    for index in range(count):
        worker_id, accepted = api.join(name)
        assert accepted["status"] == "accepted", accepted
        diff = {k: rng.normal(0, 0.01, v.shape).astype(v.dtype) for k, v in api_model(api, name)}
        samples = 5 + index
        response = api.report(worker_id, accepted["request_key"], diff, num_samples=samples)
        assert response.status_code == 200, response.text
        reported.append((diff, samples))
    return reported


def api_model(api: Api, name: str) -> list[tuple[str, np.ndarray]]:
    return list(checkpoint(api, name, 1).items())


def checkpoint(api: Api, name: str, number: int) -> State:
    response = api.admin("GET", "retrieve-model", params={"name": name, "checkpoint": number})
    assert response.status_code == 200, response.text
    return decode_state(response.content)


def fedavg(old: State, reported: list[tuple[State, int]]) -> State:
    """A clean run's checkpoint: LEAF's sample-weighted average, in float64."""
    total = sum(samples for _, samples in reported)
    return {
        name: (
            tensor.astype(np.float64)
            - sum(samples * diff[name].astype(np.float64) for diff, samples in reported) / total
        ).astype(tensor.dtype)
        for name, tensor in old.items()
    }


def assert_same(actual: State, expected: State) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-6, atol=1e-7)


def test_training_under_duplicated_dropped_and_late_events_equals_a_clean_run(
    api: Api, db: firestore.Client, faulty: StackInfo
) -> None:
    cycles, devices = 3, 4
    process_id = host(api, "faulty", 16, max_diffs=devices, num_cycles=cycles)

    reported = {seq: train_cycle(api, "faulty", seq, devices) for seq in range(1, cycles + 1)}
    wait_for(lambda: api.status("faulty")["status"] == "completed", 120, "the last cycle")

    assert api.status("faulty")["checkpoints"] == [1, 2, 3, 4]
    for seq, diffs in reported.items():
        stored = db.document(f"processes/{process_id}/cycles/{seq}").get().to_dict()
        assert stored["status"] == "completed"
        assert (stored["num_diffs"], stored["total_samples"]) == (devices, 5 + 6 + 7 + 8)
        expected = fedavg(checkpoint(api, "faulty", seq), diffs)
        assert_same(checkpoint(api, "faulty", seq + 1), expected)
    injected = requests.get(f"{faulty.router_url}{STATUS_PATH}", timeout=5).json()["faults"]
    counts = injected["injected"]
    print(f"\nfaults injected: {counts}")
    assert counts["dropped"] > 0 and counts["duplicated"] > 0 and counts["delayed"] > 0


def test_an_aggregator_killed_mid_closing_is_replaced_and_closes_once(
    api: Api, db: firestore.Client, faulty: StackInfo
) -> None:
    devices = 6
    process_id = host(api, "killed", 1024, max_diffs=devices, num_cycles=3)
    cycle = db.document(f"processes/{process_id}/cycles/1")
    reported = train_cycle(api, "killed", 1, devices)

    aggregating = lambda: (cycle.get().to_dict() or {}).get("closing_lease_holder")  # noqa: E731
    wait_for(aggregating, 60, "an aggregator to take the lease")
    killed_at = time.monotonic()
    functions = faulty.current_pids()["functions"]
    stop_process_groups([functions], grace_s=0)  # the whole tree, mid-aggregation

    wait_for(lambda: cycle.get().get("status") == "completed", 180, "the re-driven closing")
    recovered_s = time.monotonic() - killed_at
    print(f"\nkilled mid-aggregation: cycle closed {recovered_s:.1f} s later (lease {LEASE_S} s)")

    stored = cycle.get().to_dict()
    assert stored["aggregation_runs"] >= 2  # the killed attempt, then the re-drive
    assert stored["num_diffs"] == devices
    assert faulty.current_pids()["functions"] != functions  # replaced by the supervisor
    assert_same(checkpoint(api, "killed", 2), fedavg(checkpoint(api, "killed", 1), reported))
    status = api.status("killed")
    assert status["checkpoints"] == [1, 2] and status["current_cycle"]["seq"] == 2
    assert not db.document(f"processes/{process_id}/cycles/3").get().exists


def test_a_fanned_out_closing_under_faults_equals_a_clean_run(
    api: Api, db: firestore.Client, faulty: StackInfo
) -> None:
    devices = 9
    process_id = host(api, "fanned", 16, max_diffs=devices, num_cycles=1, fanout_threshold=4)
    reported = train_cycle(api, "fanned", 1, devices)

    wait_for(lambda: api.status("fanned")["status"] == "completed", 120, "the combined closing")

    cycle = db.document(f"processes/{process_id}/cycles/1")
    groups = [g.to_dict() for g in cycle.collection("groups").stream()]
    assert sorted(len(g["workers"]) for g in groups) == [1, 4, 4]
    assert all(g["status"] == "done" for g in groups)
    assert cycle.get().get("num_diffs") == devices
    assert_same(checkpoint(api, "fanned", 2), fedavg(checkpoint(api, "fanned", 1), reported))


def test_async_buffers_under_faults_count_each_report_once(
    api: Api, db: firestore.Client, faulty: StackInfo
) -> None:
    """Two waves of six devices report at once, so buffers fill while the one before is
    still being aggregated and reports race the fills; events are duplicated, dropped
    and delayed. Every report is in exactly one buffer, every buffer is aggregated once
    in order, and each checkpoint is FedBuff's average of that buffer's entries."""
    server = {"mode": "async", "buffer_size": 3, "max_concurrency": 6, "num_cycles": 0}
    process_id = host(api, "buffered", 16, **server)
    rng = np.random.default_rng(7)
    sent: dict[str, tuple[State, int]] = {}
    for _ in range(2):
        placed = [api.join("buffered") for _ in range(6)]
        for worker_id, _ in placed:
            diff = {
                k: rng.normal(0, 0.01, v.shape).astype(v.dtype) for k, v in model(16)[0].items()
            }
            sent[worker_id] = (diff, int(rng.integers(1, 20)))

        def send(worker_id: str, key: str) -> None:
            diff, samples = sent[worker_id]
            response = api.report(worker_id, key, diff, num_samples=samples)
            assert response.status_code == 200, response.text

        threads = [threading.Thread(target=send, args=(w, a["request_key"])) for w, a in placed]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def settled() -> dict[str, object] | None:
        status = api.status("buffered")
        current = status["current_cycle"]
        done = status["latest_checkpoint"] == current["seq"] and current["reported"] < 3
        return status if done and current["status"] == "open" else None

    status = wait_for(settled, 120, "every full buffer aggregated")  # lost events: the tick
    buffers = range(1, int(status["current_cycle"]["seq"]) + 1)
    placed_in: dict[str, int] = {}
    for seq in buffers:
        stored = db.collection(f"processes/{process_id}/cycles/{seq}/assignments").stream()
        entries = {s.id: s.to_dict() for s in stored}
        for worker_id in entries:
            assert worker_id not in placed_in, (
                f"{worker_id} in buffers {placed_in[worker_id]}, {seq}"
            )
            placed_in[worker_id] = seq
        if seq == buffers[-1]:
            continue  # the open buffer, not full
        cycle = db.document(f"processes/{process_id}/cycles/{seq}").get().to_dict()
        assert cycle["status"] == "completed" and cycle["num_diffs"] == len(entries) >= 3
        before = checkpoint(api, "buffered", seq)
        total = sum(sent[w][1] for w in entries)
        expected = {
            name: (
                tensor.astype(np.float64)
                - sum(
                    sent[w][1] * (1 + e["staleness"]) ** -0.5 * sent[w][0][name].astype(np.float64)
                    for w, e in entries.items()
                )
                / total
            ).astype(tensor.dtype)
            for name, tensor in before.items()
        }
        assert_same(checkpoint(api, "buffered", seq + 1), expected)
    assert sorted(placed_in) == sorted(sent)  # none lost, none twice
