"""Asynchronous mode (FedBuff) through the HTTP API on the local stack: devices at
different speeds train several checkpoints, each checkpoint is the damped average of
exactly the diffs that went into it, stale reports are refused, places are capped."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from google.cloud import firestore

from firegrid.local.stack import StackInfo
from firegrid.tensors import decode_state
from tests.common import State, tiny_model

from .support import Api, host_body, small_diff, wait_for

pytestmark = pytest.mark.integration

ASYNC = {
    "mode": "async",
    "buffer_size": 2,
    "max_concurrency": 4,
    "max_staleness": 1,
    "num_cycles": 3,
    "max_diffs": None,
}


@pytest.fixture
def api(clean_stack: StackInfo) -> Api:
    return Api(clean_stack.base_url, clean_stack.admin_token)


@pytest.fixture
def db(stack_env: StackInfo) -> firestore.Client:
    return firestore.Client(project=stack_env.project_id)


def host(api: Api, name: str = "mnist", **server: Any) -> str:
    body_server = {k: v for k, v in (ASYNC | server).items() if v is not None}
    response = api.admin("POST", "host-training", json=_body(name, body_server))
    assert response.status_code == 201, response.text
    return str(response.json()["process_id"])


def _body(name: str, server: dict[str, Any]) -> dict[str, Any]:
    body = host_body(name=name)
    body["server_config"] = {"cycle_length": 60} | server
    return body


def checkpoint(api: Api, number: int, name: str = "mnist") -> State:
    response = api.admin("GET", "retrieve-model", params={"name": name, "checkpoint": number})
    assert response.status_code == 200, response.text
    return decode_state(response.content)


def latest(api: Api, number: int, name: str = "mnist") -> dict[str, Any]:
    return wait_for(
        lambda: (s := api.status(name))["latest_checkpoint"] >= number and s,
        what=f"checkpoint {number}",
    )


def entries(db: firestore.Client, process_id: str, seq: int) -> dict[str, dict[str, Any]]:
    docs = db.collection(f"processes/{process_id}/cycles/{seq}/assignments").stream()
    return {d.id: d.to_dict() for d in docs if (d.to_dict() or {}).get("reported")}


def expected_step(diffs: dict[str, State], samples: dict[str, int], stale: dict[str, int]) -> State:
    """FedBuff over LEAF weights, computed here independently of the server."""
    total = sum(samples.values())
    names = next(iter(diffs.values())).keys()
    return {
        n: sum(samples[w] * (1 + stale[w]) ** -0.5 * diffs[w][n].astype(np.float64) for w in diffs)
        / total
        for n in names
    }


def test_devices_at_different_speeds_train_checkpoints_fedbuff_weighted(
    api: Api, db: firestore.Client
) -> None:
    process_id = host(api)
    fast_a, fast_b, slow, stalest = (api.join() for _ in range(4))
    for _, offer in (fast_a, fast_b, slow, stalest):
        assert offer["checkpoint"] == 1 and offer["mode"] == "async"
    diffs = {w: small_diff(0.01 * (i + 1)) for i, (w, _) in enumerate((fast_a, fast_b, slow))}
    samples = {fast_a[0]: 10, fast_b[0]: 30, slow[0]: 20}

    for worker, offer in (fast_a, fast_b):
        reply = api.report(worker, offer["request_key"], diffs[worker], samples[worker])
        assert reply.status_code == 200, reply.text
    status = latest(api, 2)
    assert status["mode"] == "async" and status["buffering"]["mean_staleness"] == 0

    fresh, offer = api.join()
    assert offer["checkpoint"] == 2
    diffs[fresh], samples[fresh] = small_diff(-0.02), 40
    # the slow device trained from checkpoint 1: one checkpoint stale, damped
    assert api.report(slow[0], slow[1]["request_key"], diffs[slow[0]], 20).status_code == 200
    assert api.report(fresh, offer["request_key"], diffs[fresh], 40).status_code == 200
    status = latest(api, 3)
    assert status["buffering"]["mean_staleness"] == 0.5

    for seq in (1, 2):
        stored = entries(db, process_id, seq)
        went_in = {w: diffs[w] for w in stored}
        stale = {w: stored[w]["staleness"] for w in stored}
        step = expected_step(went_in, {w: samples[w] for w in stored}, stale)
        before, after = checkpoint(api, seq), checkpoint(api, seq + 1)
        for name, delta in step.items():
            np.testing.assert_allclose(after[name], before[name] - delta, rtol=1e-6, atol=1e-7)
    assert entries(db, process_id, 2)[slow[0]]["staleness"] == 1

    refused = api.report(stalest[0], stalest[1]["request_key"], small_diff(), 5)
    assert refused.status_code == 409
    assert refused.json()["code"] == "too_stale"
    assert "2 checkpoints old" in refused.json()["error"]
    assert api.status()["buffering"]["places_taken"] == 0  # its place was freed
    assert api.cycle_request(stalest[0])["checkpoint"] == 3


def test_get_model_serves_the_checkpoint_of_the_request_key(api: Api) -> None:
    process_id = host(api)
    placed = [api.join() for _ in range(3)]
    for worker, offer in placed[:2]:
        assert api.report(worker, offer["request_key"]).status_code == 200
    latest(api, 2)
    worker, offer = placed[2]
    body = {"worker_id": worker, "request_key": offer["request_key"], "model_id": process_id}
    served = api.device("GET", "get-model", params=body)
    assert served.status_code == 200, served.text
    state, _ = tiny_model()
    model = decode_state(served.content)
    assert all(np.array_equal(model[k], state[k]) for k in state)  # checkpoint 1


def test_the_concurrency_cap_holds_under_simultaneous_requests(api: Api) -> None:
    host(api, max_concurrency=5)
    workers = [api.authenticate() for _ in range(24)]
    barrier = threading.Barrier(len(workers))
    answers: list[dict[str, Any]] = []

    def ask(worker_id: str) -> None:
        barrier.wait()
        answers.append(Api(api.base, "").cycle_request(worker_id))

    threads = [threading.Thread(target=ask, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    accepted = [a for a in answers if a["status"] == "accepted"]
    refused = [a for a in answers if a["status"] == "rejected"]
    assert len(accepted) == 5 and len(refused) == 19
    assert {r["reason"] for r in refused} == {"concurrency_full"}
    assert api.status()["buffering"]["places_taken"] == 5


def test_training_completes_after_num_cycles_checkpoints(api: Api) -> None:
    host(api, num_cycles=2)
    for number in (2, 3):
        for worker, offer in [api.join(), api.join()]:
            assert api.report(worker, offer["request_key"]).status_code == 200
        latest(api, number)
    wait_for(lambda: api.status()["status"] == "completed", what="fl_completed")
    assert api.cycle_request(api.authenticate()) == {"status": "rejected", "reason": "fl_completed"}


def test_async_keys_without_async_mode_are_a_400(api: Api) -> None:
    response = api.admin(
        "POST",
        "host-training",
        json=_body("bad", {"cycle_length": 60, "num_cycles": 1, "max_diffs": 1, "buffer_size": 2}),
    )
    assert response.status_code == 400
    assert "'buffer_size' applies to 'mode' 'async' only" in response.json()["error"]


def test_the_tick_frees_an_abandoned_place_and_its_late_report_is_409(api: Api) -> None:
    host(api, cycle_length=1, max_concurrency=1)
    gone, offer = api.join()
    assert api.cycle_request(api.authenticate())["reason"] == "concurrency_full"
    wait_for(lambda: api.tick()["freed"], what="the place to be freed")
    assert api.status()["buffering"]["places_taken"] == 0
    late = api.report(gone, offer["request_key"])
    assert late.status_code == 409 and late.json()["code"] == "assignment_dropped"
    assert api.cycle_request(api.authenticate())["status"] == "accepted"
