"""The device API's guarantees under simultaneous requests, on the real emulators."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from google.cloud import firestore

from .support import (
    Api,
    assignment_reported_event,
    cycle_closing_event,
    cycle_seq,
    redeliver,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def api(clean_stack) -> Api:
    return Api(clean_stack.base_url, clean_stack.admin_token)


@pytest.fixture
def db(stack_env) -> firestore.Client:
    return firestore.Client(project=stack_env.project_id)


def _authenticate_many(api: Api, count: int) -> list[str]:
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda _: api.authenticate(), range(count)))


def _cycle_doc(db: firestore.Client, process_id: str, seq: int) -> dict | None:
    return (
        db.collection("processes")
        .document(process_id)
        .collection("cycles")
        .document(str(seq))
        .get()
        .to_dict()
    )


def test_200_simultaneous_requests_fill_exactly_max_workers(api: Api) -> None:
    api.host(max_workers=50, max_diffs=50)
    workers = _authenticate_many(api, 200)
    with ThreadPoolExecutor(64) as pool:
        replies = list(pool.map(api.cycle_request, workers))
    accepted = [r for r in replies if r["status"] == "accepted"]
    rejected = [r for r in replies if r["status"] == "rejected"]
    assert len(accepted) == 50
    assert len({r["request_key"] for r in accepted}) == 50
    assert all(r["reason"] == "cycle_full" and r["timeout"] >= 1 for r in rejected)
    assert api.status()["current_cycle"]["assigned"] == 50


def test_100_simultaneous_reports_aggregate_exactly_once(api: Api, db: firestore.Client) -> None:
    process_id = api.host(max_workers=100, max_diffs=100, num_cycles=3)
    workers = _authenticate_many(api, 100)
    with ThreadPoolExecutor(32) as pool:
        keys = [r["request_key"] for r in pool.map(api.cycle_request, workers)]
        replies = list(
            pool.map(lambda wk: api.report(*wk).status_code, zip(workers, keys, strict=True))
        )
    assert replies == [200] * 100
    wait_for(lambda: cycle_seq(api) == 2, what="cycle 2 to open")
    wait_for(
        lambda: _cycle_doc(db, process_id, 1)["status"] == "completed", what="cycle 1 completed"
    )
    first = _cycle_doc(db, process_id, 1)
    assert first["aggregation_runs"] == 1
    assert first["num_diffs"] == 100 and first["total_samples"] == 1000
    assert _cycle_doc(db, process_id, 2)["status"] == "open"
    assert _cycle_doc(db, process_id, 3) is None
    assert api.status()["checkpoints"] == [1, 2]


def test_a_redelivered_trigger_event_changes_nothing(
    api: Api, db: firestore.Client, clean_stack
) -> None:
    process_id = api.host(max_diffs=1, num_cycles=5)
    worker_id, accepted = api.join()
    assert api.report(worker_id, accepted["request_key"]).status_code == 200
    wait_for(lambda: cycle_seq(api) == 2, what="cycle 2 to open")
    before = _cycle_doc(db, process_id, 2)
    checkpoint = api.admin("GET", "retrieve-model", params={"name": "mnist"}).content

    path = f"processes/{process_id}/cycles/1/assignments/{worker_id}"
    stored = db.document(path).get().to_dict()
    assert stored["reported"]
    cycle_path = f"processes/{process_id}/cycles/1"
    closed = _cycle_doc(db, process_id, 1)
    for _ in range(2):
        redeliver(
            clean_stack,
            "on-assignment-written",
            assignment_reported_event(clean_stack, path, stored),
        )
        redeliver(
            clean_stack, "on-cycle-written", cycle_closing_event(clean_stack, cycle_path, closed)
        )

    assert _cycle_doc(db, process_id, 1)["aggregation_runs"] == 1
    assert _cycle_doc(db, process_id, 2) == before
    assert _cycle_doc(db, process_id, 3) is None
    assert api.admin("GET", "retrieve-model", params={"name": "mnist"}).content == checkpoint
