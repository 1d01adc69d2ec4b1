"""Issue 7's holes, tried over plain HTTP against the local stack as a hostile device would:
each is now a 4xx with a clear message, and the honest devices' cycle still completes."""

from __future__ import annotations

import json
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.cloud import storage

from firegrid.domain.keys import pseudonym
from firegrid.tensors import encode_state

from .support import Api, b64, cycle_seq, host_body, small_diff, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def api(clean_stack) -> Api:
    return Api(clean_stack.base_url, clean_stack.admin_token)


def _report_body(worker_id: str, key: str, num_samples: int = 10) -> dict[str, Any]:
    return {
        "worker_id": worker_id,
        "request_key": key,
        "diff": b64(encode_state(small_diff())),
        "num_samples": num_samples,
    }


def _expect_4xx(response: requests.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "code"} and "Traceback" not in body["error"]
    if code is not None:
        assert body["code"] == code, body


def test_a_huge_sample_count_is_refused_and_the_cycle_still_closes(api: Api) -> None:
    """2^63-1 used to be accepted, then overflowed the cycle's int64 total: closing forever."""
    api.host(max_diffs=2)
    hostile, accepted = api.join()
    response = api.device(
        "POST", "report", json=_report_body(hostile, accepted["request_key"], 2**63 - 1)
    )
    _expect_4xx(response, 400, "too_many_samples")
    assert "max_num_samples" in response.json()["error"]
    beyond = api.device(
        "POST", "report", json=_report_body(hostile, accepted["request_key"], 2**64)
    )
    _expect_4xx(beyond, 400, "invalid_field")

    assert api.report(hostile, accepted["request_key"], num_samples=1_000_000).status_code == 200
    honest, accepted = api.join()
    assert api.report(honest, accepted["request_key"], num_samples=10).status_code == 200
    wait_for(lambda: cycle_seq(api) == 2, what="cycle 1 to close")


def test_twenty_twin_reports_count_once_and_keep_their_diff(api: Api, stack_env) -> None:
    process_id = api.host(max_diffs=2)
    worker_id, accepted = api.join()
    body = _report_body(worker_id, accepted["request_key"])
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: api.device("POST", "report", json=body), range(20)))

    assert sorted(a.status_code for a in answers) == [200] + [409] * 19
    assert {a.json()["code"] for a in answers if a.status_code == 409} == {"already_reported"}
    bucket = storage.Client().bucket(stack_env.bucket)
    diffs = [b.name for b in bucket.list_blobs(prefix=f"processes/{process_id}/diffs/")]
    assert len(diffs) == 1  # the counted diff, and no orphan of a losing twin
    assert worker_id not in diffs[0]

    other, accepted = api.join()
    assert api.report(other, accepted["request_key"]).status_code == 200
    wait_for(lambda: cycle_seq(api) == 2, what="cycle 1 to close with the counted diff")
    assert api.status()["current_cycle"]["seq"] == 2


def _bf16_diff() -> str:
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    return b64(struct.pack("<Q", len(header)) + header + b"\0" * 4)


def test_every_hostile_input_from_the_issue_is_a_4xx(api: Api) -> None:
    api.host(max_diffs=1)
    worker_id, accepted = api.join()
    key = accepted["request_key"]
    device = api.device

    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("POST", "cycle-request", {"worker_id": "a/b", "model": "mnist"}, 401),
        ("POST", "cycle-request", {"worker_id": "__x__", "model": "mnist"}, 401),
        ("POST", "cycle-request", {"worker_id": "x" * 2000, "model": "mnist"}, 400),
        ("POST", "register-token", {"worker_id": "a/b", "fcm_token": "t"}, 401),
        ("POST", "worker-status", {"worker_id": "__x__", "available": True}, 401),
        (
            "POST",
            "metrics",
            {"worker_id": "a/b//c", "stats": [{"cycle_id": 1, "accuracy": 1, "num_samples": 1}]},
            401,
        ),
        ("POST", "authenticate", {"model_name": "m" * 5000}, 400),
        ("POST", "report", {**_report_body(worker_id, "\u0661.0.abc")}, 401),
        ("POST", "report", {**_report_body(worker_id, "²." + key[2:])}, 401),
        ("POST", "report", {**_report_body(worker_id, key), "diff": _bf16_diff()}, 400),
        ("POST", "register-token", {"worker_id": worker_id, "fcm_token": "x" * 4000}, 400),
        (
            "POST",
            "register-token",
            {"worker_id": worker_id, "fcm_token": "t", "cpu_cores": 2**64},
            400,
        ),
        (
            "POST",
            "metrics",
            {
                "worker_id": worker_id,
                "stats": [{"cycle_id": 2**64, "accuracy": 1, "num_samples": 1}],
            },
            400,
        ),
    ]
    for method, path, body, status in cases:
        response = device(method, path, json=body)
        assert response.status_code == status, (path, body, response.text)
        assert "Traceback" not in response.text

    infinite = b'{"model_name": "mnist", "model_version": Infinity}'
    json_header = {"Content-Type": "application/json"}
    _expect_4xx(device("POST", "authenticate", data=infinite, headers=json_header), 400, "bad_json")
    # A speed of 10^400 (an integer literal float() cannot hold) and one of "1e400".
    raw = (
        b'{"worker_id": "'
        + worker_id.encode()
        + b'", "model": "mnist", "ping": 1'
        + b"0" * 400
        + b"}"
    )
    speed = device("POST", "cycle-request", data=raw, headers={"Content-Type": "application/json"})
    _expect_4xx(speed, 400)
    speed = device(
        "POST",
        "cycle-request",
        json={"worker_id": worker_id, "model": "mnist", "download": "1e400"},
    )
    _expect_4xx(speed, 400)
    for nested in (b"[" * 50_000 + b"]" * 50_000, b'{"a":' * 100 + b"1" + b"}" * 100):
        deep = device("POST", "report", data=nested, headers={"Content-Type": "application/json"})
        _expect_4xx(deep, 400, "bad_json" if nested.startswith(b"[") else None)
    query = {"worker_id": worker_id, "request_key": key, "model_id": "x"}
    _expect_4xx(device("GET", "get-model", params=query | {"worker_id": "../../x"}), 401)
    _expect_4xx(
        api.admin("GET", "retrieve-model", params={"name": "mnist", "checkpoint": "²"}), 400
    )

    # The honest report still lands and closes the cycle.
    assert api.report(worker_id, key).status_code == 200
    wait_for(lambda: cycle_seq(api) == 2, what="the cycle to close")


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"num_cycles": 2**63}, "'server_config.num_cycles' is an integer outside the 64-bit"),
        ({"cycle_length": 10**9}, "'cycle_length' must be <="),
        ({"max_workers": 10**12}, "'max_workers' must be <="),
        (
            {
                "authentication": {
                    "pub_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"
                }
            },
            "must be a PEM public key",
        ),
        ({"authentication": {"secret": "abc", "firebase": True}}, "cannot be combined"),
        ({"authentication": {"endpoint": "http://auth.example.com/verify"}}, "https"),
    ],
)
def test_hosting_refuses_what_could_never_work(api: Api, server, message) -> None:
    response = api.admin("POST", "host-training", json=host_body(**server))
    _expect_4xx(response, 400)
    assert message in response.json()["error"]
    assert api.admin("GET", "status", params={"name": "mnist"}).status_code == 404


def test_client_config_that_firestore_could_not_store_is_refused(api: Api) -> None:
    for extra in ({"huge": 2**70}, {"__name__": 1}, {"deep": json.loads("[" * 25 + "]" * 25)}):
        body = host_body()
        body["client_config"] |= extra
        _expect_4xx(api.admin("POST", "host-training", json=body), 400)
    body = host_body()
    body["client_config"] |= {"k.with.dots": 1, "list": list(range(5000))}  # fine as JSON text
    assert api.admin("POST", "host-training", json=body).status_code == 201


def test_pygrid_secret_and_pub_key_with_an_rs256_login(api: Api) -> None:
    """PyGrid's integration test hosts with both and logs in with an RS256 token."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    api.host(authentication={"secret": "abc", "pub_key": pem.decode()})
    alice = api.authenticate(token=jwt.encode({"sub": "alice"}, key, algorithm="RS256"))
    assert api.authenticate(token=jwt.encode({"sub": "alice"}, key, algorithm="RS256")) == alice
    assert api.authenticate(token=jwt.encode({"sub": "bob"}, "abc", algorithm="HS256")) != alice
    forged = jwt.encode({"sub": "alice"}, "not-the-secret", algorithm="HS256")
    refused = api.device("POST", "authenticate", json={"model_name": "mnist", "auth_token": forged})
    _expect_4xx(refused, 401, "invalid_token")


def test_an_oversized_upload_is_413_and_deleted(api: Api, stack_env) -> None:
    process_id = api.host()
    worker_id, accepted = api.join()
    grant = api.device(
        "POST",
        "report-upload-url",
        json={"worker_id": worker_id, "request_key": accepted["request_key"]},
    ).json()
    assert grant["headers"]["x-goog-content-length-range"] == f"0,{grant['max_bytes']}"
    # The emulator does not enforce the signed range (Cloud Storage does): put too much anyway.
    put = requests.put(
        grant["upload_url"],
        data=b"\0" * (grant["max_bytes"] + 1),
        headers=grant["headers"],
        timeout=30,
    )
    assert put.status_code < 300, put.text
    bucket = storage.Client().bucket(stack_env.bucket)
    uploads = f"processes/{process_id}/uploads/"
    assert len(list(bucket.list_blobs(prefix=uploads))) == 1

    body = {
        "worker_id": worker_id,
        "request_key": accepted["request_key"],
        "uploaded": True,
        "num_samples": 3,
    }
    _expect_4xx(api.device("POST", "report", json=body), 413, "too_large")
    assert list(bucket.list_blobs(prefix=uploads)) == []


def test_metrics_rows_name_a_pseudonym_not_the_credential(api: Api) -> None:
    api.host()
    worker_id, _ = api.join()
    stats = [{"cycle_id": 1, "accuracy": 0.5, "num_samples": 4}]
    assert (
        api.device("POST", "metrics", json={"worker_id": worker_id, "stats": stats}).status_code
        == 200
    )
    text = api.admin("GET", "training-metrics", params={"name": "mnist"}).text
    assert worker_id not in text and pseudonym(worker_id) in text


def test_a_claim_left_by_a_dead_instance_does_not_block_the_retry(
    api: Api, stack_env, monkeypatch
) -> None:
    """A report whose instance died between claiming and recording is retried later."""
    from datetime import UTC, datetime

    from google.cloud import firestore

    import firegrid.adapters.firestore_repo as firestore_repo
    from firegrid.domain.model import Report

    process_id = api.host(max_diffs=2)
    worker_id, _ = api.join()
    db = firestore.Client(project=stack_env.project_id)
    cycle = db.collection("processes").document(process_id).collection("cycles").document("1")
    cycle.collection("report_claims").document(f"{worker_id}-0").create({"at": "dead"})
    repo = firestore_repo.FirestoreRepository(db)
    monkeypatch.setattr(firestore_repo, "REPORT_CLAIM_WAIT_S", 0.3)

    report = Report(epoch=0, num_samples=3, diff_object="diffs/x", at=datetime.now(UTC))
    with pytest.raises(Exception, match="still being recorded"):  # a live claim: wait, then 503
        repo.record_report(process_id, 1, worker_id, report)
    monkeypatch.setattr(firestore_repo, "REPORT_CLAIM_TTL", firestore_repo.timedelta(0))
    repo.record_report(process_id, 1, worker_id, report)
    assert repo.get_assignment(process_id, 1, worker_id).reported


def test_reports_racing_the_closing_are_counted_or_leave_nothing(api: Api, stack_env) -> None:
    """Every 200 is in the aggregate; every late report (409) leaves no object behind."""
    from google.cloud import firestore

    process_id = api.host(max_diffs=2)
    joined = [api.join() for _ in range(10)]
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda j: api.report(j[0], j[1]["request_key"]), joined))
    accepted = sum(1 for a in answers if a.status_code == 200)
    assert {a.status_code for a in answers} <= {200, 409}
    assert {a.json()["code"] for a in answers if a.status_code == 409} <= {"cycle_closed"}
    wait_for(lambda: cycle_seq(api) == 2, what="cycle 1 to close")

    db = firestore.Client(project=stack_env.project_id)
    cycle = (
        db.collection("processes").document(process_id).collection("cycles").document("1")
    ).get()
    assert cycle.get("num_diffs") == accepted
    bucket = storage.Client().bucket(stack_env.bucket)
    stored = list(bucket.list_blobs(prefix=f"processes/{process_id}/diffs/1/"))
    assert len(stored) == accepted


def test_a_sample_total_beyond_int64_is_stored_not_jammed(api: Api, stack_env) -> None:
    """Whatever the counts, completing a cycle never fails on Firestore's int64."""
    from datetime import UTC, datetime

    from google.cloud import firestore

    from firegrid.adapters.firestore_repo import FirestoreRepository
    from firegrid.domain.cycle import CycleSummary

    process_id = api.host()
    repo = FirestoreRepository(firestore.Client(project=stack_env.project_id))
    now = datetime.now(UTC)
    # Closing, with a lease this test holds: the cycle trigger that fires cannot take it.
    lease = now.replace(year=now.year + 1)
    repo._cycle_ref(process_id, 1).update(
        {"status": "closing", "closing_lease_until": lease, "closing_lease_holder": "test"}
    )
    summary = CycleSummary(num_diffs=3, total_samples=2**70, checkpoint_out=2, closed_at=now)

    completed = repo.complete_cycle(
        process_id, 1, lambda c: c.complete("test", summary), None, lambda p: p.after_cycle(2, None)
    )

    assert completed is not None
    stored = repo._cycle_ref(process_id, 1).get().get("total_samples")
    assert stored == float(2**70)
    assert repo.get_cycle(process_id, 1).summary.total_samples == 2**70
