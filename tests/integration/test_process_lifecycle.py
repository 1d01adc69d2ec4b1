"""On the local stack: a hosting killed half-way is hosted again, and a process deleted
with everything it owns (then hosted again), checked by listing both emulators."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.cloud import firestore, storage

from firegrid.commands import main
from firegrid.domain.blobs import plan_object, process_prefix
from firegrid.domain.model import HOSTING_STALE_AFTER
from firegrid.local.stack import wait_for_triggers

from .support import Api, cycle_seq, host_body, register_token, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def api(clean_stack) -> Api:
    return Api(clean_stack.base_url, clean_stack.admin_token)


def left_by_a_killed_hosting(db: firestore.Client, bucket: Any, process_id: str, age: timedelta):
    """What an instance killed between the uploads and ``start_training`` leaves: the process
    document still ``hosting``, checkpoint 1 and its plans uploaded (one of a plan name the
    retry no longer sends), no cycle."""
    db.document(f"processes/{process_id}/cycles/1").delete()
    db.document(f"processes/{process_id}").update(
        {"status": "hosting", "created_at": datetime.now(UTC) - age}
    )
    bucket.blob(plan_object(process_id, "old_plan")).upload_from_string(b"plan bytes")


def test_a_hosting_killed_half_way_is_hosted_again_once_stale(api: Api, stack_env) -> None:
    db = firestore.Client(project=stack_env.project_id)
    bucket = storage.Client().bucket(stack_env.bucket)
    process_id = api.host()

    left_by_a_killed_hosting(db, bucket, process_id, timedelta(minutes=1))
    busy = api.admin("POST", "host-training", json=host_body())
    assert (busy.status_code, busy.json()["code"]) == (409, "hosting_in_progress")
    assert "may be retried from" in busy.json()["error"]
    assert api.device("POST", "authenticate", json={"model_name": "mnist"}).status_code == 404

    left_by_a_killed_hosting(db, bucket, process_id, HOSTING_STALE_AFTER + timedelta(minutes=1))
    answers: list[Any] = []

    def retry() -> None:
        answers.append(api.admin("POST", "host-training", json=host_body()))

    retries = [threading.Thread(target=retry) for _ in range(2)]
    for thread in retries:
        thread.start()
    for thread in retries:
        thread.join()

    assert sorted(a.status_code for a in answers) == [201, 409]
    assert api.status()["status"] == "training"
    assert api.status()["current_cycle"]["seq"] == 1
    names = {b.name for b in bucket.list_blobs(prefix=process_prefix(process_id))}
    assert plan_object(process_id, "old_plan") not in names  # the dead attempt's leftovers
    assert plan_object(process_id, "training_plan") in names
    api.join()  # devices train on it


def documents_of(db: firestore.Client, process_id: str) -> list[str]:
    """Every document path in the database that belongs to the process."""
    paths = [
        snap.reference.path
        for collection in db.collections()
        for snap in collection.recursive().stream()
        if process_id in snap.reference.path or snap.get("process_id") == process_id
    ]
    return sorted(paths)


def test_a_deleted_process_leaves_nothing_and_may_be_hosted_again(
    api: Api, stack_env, capsys
) -> None:
    db = firestore.Client(project=stack_env.project_id)
    bucket = storage.Client().bucket(stack_env.bucket)
    process_id = api.host(num_cycles=3, min_diffs=1, max_diffs=1)
    worker_id, accepted = api.join()
    assert api.report(worker_id, accepted["request_key"]).status_code == 200
    wait_for(lambda: cycle_seq(api) == 2, what="cycle 1 to close")
    register_token(api, worker_id, "tok-1")
    stats = {"worker_id": worker_id, "stats": [{"cycle_id": 1, "accuracy": 0.5, "num_samples": 4}]}
    assert api.device("POST", "metrics", json=stats).status_code == 200
    wait_for_triggers(stack_env)
    before = documents_of(db, process_id)
    collections = {path.split("/")[-2] for path in before}
    assert collections >= {"processes", "cycles", "assignments", "metrics", "pushes", "workers"}

    base = ["--base-url", stack_env.base_url, "--token", stack_env.admin_token]
    assert main(["delete-process", "mnist", "1.0", "--yes", *base]) == 0
    answer = json.loads(capsys.readouterr().out)

    wait_for_triggers(stack_env)
    assert documents_of(db, process_id) == []
    assert list(bucket.list_blobs(prefix=process_prefix(process_id))) == []
    assert sum(answer["documents"].values()) == len(before)
    assert answer["documents"]["workers"] == 1 and answer["objects"] >= 4
    asked = api.device("POST", "cycle-request", json={"worker_id": worker_id, "model": "mnist"})
    assert asked.status_code == 404
    again = api.admin("POST", "delete-process", json={"name": "mnist", "version": "1.0"})
    assert (again.status_code, again.json()["code"]) == (404, "unknown_process")
    assert api.host() == process_id
    api.join()


def test_hostile_deletion_requests_are_4xx(api: Api) -> None:
    api.host()
    cases: list[tuple[Any, int, str]] = [
        ({"name": "mnist"}, 400, "missing_field"),
        ({"version": "1.0"}, 400, "missing_field"),
        ({"name": 7, "version": "1.0"}, 400, "invalid_field"),
        ({"name": "mnist", "version": {"x": 1}}, 400, "invalid_field"),
        ({"name": "x" * 201, "version": "1.0"}, 400, "invalid_field"),
        ([], 400, "bad_json"),
        ({"name": "mnist", "version": "2.0"}, 404, "unknown_process"),
    ]
    for body, status, code in cases:
        response = api.admin("POST", "delete-process", json=body)
        assert (response.status_code, response.json()["code"]) == (status, code), body
    anonymous = api.admin("POST", "delete-process", json={"name": "mnist"}, headers={})
    assert anonymous.status_code == 401
    assert api.status()["status"] == "training"
