"""PyGrid's own model-centric scenarios, ported to FireGrid's contract."""

from __future__ import annotations

import base64
import hashlib
import hmac

import jwt
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from firegrid.tensors import decode_state

from .support import HS256_FIXTURE, Api, cycle_seq, host_body, small_diff, tiny_model, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def api(clean_stack) -> Api:
    return Api(clean_stack.base_url, clean_stack.admin_token)


def test_host_training(api: Api) -> None:
    process_id = api.host()
    status = api.status()
    assert status["process_id"] == process_id
    assert status["status"] == "training"
    assert status["current_cycle"]["seq"] == 1
    assert status["current_cycle"]["status"] == "open"
    assert status["checkpoints"] == [1]


def test_duplicate_host_is_refused_and_changes_nothing(api: Api) -> None:
    api.host()
    response = api.admin("POST", "host-training", json=host_body())
    assert response.status_code == 409
    assert response.json()["code"] == "duplicate_process"
    assert api.status()["checkpoints"] == [1]


def test_admin_api_needs_the_bearer_token(api: Api) -> None:
    response = api.admin("POST", "host-training", json=host_body(), headers={})
    assert response.status_code == 401
    wrong = api.admin(
        "GET", "status", params={"name": "mnist"}, headers={"Authorization": "Bearer x"}
    )
    assert wrong.status_code == 401


def test_authenticate_without_token_when_required(api: Api) -> None:
    api.host(authentication={"secret": "abc"})
    response = api.device("POST", "authenticate", json={"model_name": "mnist"})
    assert response.status_code == 401
    assert response.json()["error"] == "Authentication is required, please pass an 'auth_token'."


def test_authenticate_with_invalid_token(api: Api) -> None:
    api.host(authentication={"secret": "abc"})
    for token in ("not-a-jwt", jwt.encode({}, "wrong", algorithm="HS256")):
        response = api.device(
            "POST", "authenticate", json={"model_name": "mnist", "auth_token": token}
        )
        assert response.status_code == 401
        assert response.json()["error"] == "The 'auth_token' you sent is invalid."


def test_unsigned_token_is_refused(api: Api) -> None:
    api.host(authentication={"secret": "abc"})
    none_token = jwt.encode({"sub": "x"}, None, algorithm="none")
    response = api.device(
        "POST", "authenticate", json={"model_name": "mnist", "auth_token": none_token}
    )
    assert response.status_code == 401


def test_authenticate_with_pygrids_hs256_fixture_gives_a_stable_worker(api: Api) -> None:
    api.host(authentication={"secret": "abc"})
    first = api.device(
        "POST", "authenticate", json={"model_name": "mnist", "auth_token": HS256_FIXTURE}
    )
    assert first.status_code == 200
    body = first.json()
    assert body["status"] == "success"
    assert body["requires_speed_test"] is False
    again = api.authenticate(token=HS256_FIXTURE)
    assert again == body["worker_id"]


def test_authenticate_with_rs256_token(api: Api) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    api.host(authentication={"pub_key": pem})
    alice = jwt.encode({"sub": "alice"}, key, algorithm="RS256")
    bob = jwt.encode({"sub": "bob"}, key, algorithm="RS256")
    assert api.authenticate(token=alice) == api.authenticate(token=alice)
    assert api.authenticate(token=alice) != api.authenticate(token=bob)
    # HS256 signed with the public key as the secret: the classic key-confusion attack.
    header = _b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + _b64url(b'{"sub":"alice"}')
    signature = hmac.new(pem.encode(), header.encode(), hashlib.sha256).digest()
    forged = header + "." + _b64url(signature)
    response = api.device(
        "POST", "authenticate", json={"model_name": "mnist", "auth_token": forged}
    )
    assert response.status_code == 401


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def test_unknown_process_is_404(api: Api) -> None:
    response = api.device("POST", "authenticate", json={"model_name": "nothing"})
    assert response.status_code == 404


def test_speed_test_required_then_speeds_needed(api: Api) -> None:
    api.host(minimum_upload_speed=0, minimum_download_speed=0)
    response = api.device("POST", "authenticate", json={"model_name": "mnist"})
    assert response.json()["requires_speed_test"] is True
    worker_id = response.json()["worker_id"]
    missing = api.device("POST", "cycle-request", json={"worker_id": worker_id, "model": "mnist"})
    assert missing.status_code == 400
    assert missing.json()["error"] == "'ping' is required"
    accepted = api.cycle_request(worker_id, ping=8, download=46.0, upload=23.0)
    assert accepted["status"] == "accepted"


def test_too_slow_worker_is_rejected_with_a_timeout(api: Api) -> None:
    api.host(minimum_download_speed=100)
    worker_id = api.authenticate()
    rejected = api.cycle_request(worker_id, ping=8, download=5, upload=5)
    assert rejected["status"] == "rejected"
    assert rejected["reason"] == "too_slow"
    assert isinstance(rejected["timeout"], int) and rejected["timeout"] > 0


def test_no_speed_test_accepts_without_speeds(api: Api) -> None:
    api.host()
    assert (
        api.device("POST", "authenticate", json={"model_name": "mnist"}).json()[
            "requires_speed_test"
        ]
        is False
    )
    assert api.join()[1]["status"] == "accepted"


def test_accepted_payload_fields(api: Api) -> None:
    process_id = api.host()
    _, accepted = api.join()
    assert set(accepted) >= {
        "status",
        "request_key",
        "cycle_id",
        "model",
        "version",
        "model_id",
        "plans",
        "protocols",
        "client_config",
        "deadline",
    }
    assert accepted["cycle_id"] == 1
    assert accepted["model"] == "mnist" and accepted["version"] == "1.0"
    assert accepted["model_id"] == process_id
    assert accepted["plans"] == {"training_plan": "training_plan"}
    assert accepted["client_config"]["batch_size"] == 4


def test_repeated_cycle_request_returns_the_same_assignment(api: Api) -> None:
    api.host()
    worker_id, accepted = api.join()
    again = api.cycle_request(worker_id)
    assert again["request_key"] == accepted["request_key"]
    assert api.status()["current_cycle"]["assigned"] == 1


def test_bad_json_is_400(api: Api) -> None:
    api.host()
    for path in ("authenticate", "cycle-request", "report", "metrics"):
        response = api.device(
            "POST", path, data="{not json", headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, path
        assert response.json()["code"] == "bad_json"


def test_downloads_check_key_and_ids(api: Api) -> None:
    api.host()
    worker_id, accepted = api.join()
    key, model_id = accepted["request_key"], accepted["model_id"]
    model = api.device(
        "GET",
        "get-model",
        params={"worker_id": worker_id, "request_key": key, "model_id": model_id},
    )
    assert model.status_code == 200
    assert model.headers["Content-Type"] == "application/octet-stream"
    state, _ = tiny_model()
    assert set(decode_state(model.content)) == set(state)
    plan = api.device(
        "GET",
        "get-plan",
        params={"worker_id": worker_id, "request_key": key, "plan_id": "training_plan"},
    )
    assert plan.status_code == 200 and plan.content == tiny_model()[1]

    wrong_key = {"worker_id": worker_id, "request_key": "1.0.wrong"}
    assert (
        api.device("GET", "get-model", params=wrong_key | {"model_id": model_id}).status_code == 401
    )
    assert (
        api.device("GET", "get-plan", params=wrong_key | {"plan_id": "training_plan"}).json()[
            "error"
        ]
        == "Invalid request key!"
    )
    good = {"worker_id": worker_id, "request_key": key}
    assert api.device("GET", "get-model", params=good | {"model_id": "nope"}).status_code == 404
    unknown_plan = api.device("GET", "get-plan", params=good | {"plan_id": "nope"})
    assert unknown_plan.status_code == 404
    assert unknown_plan.json()["error"] == "Plan ID not found!"


def test_max_diffs_one_report_completes_the_cycle(api: Api) -> None:
    api.host()
    worker_id, accepted = api.join()
    response = api.report(worker_id, accepted["request_key"], small_diff(0.5), num_samples=7)
    assert response.status_code == 200 and response.json() == {"status": "success"}
    wait_for(lambda: cycle_seq(api) == 2, what="cycle 2 to open")
    status = api.status()
    assert status["checkpoints"] == [1, 2]
    assert status["current_cycle"]["status"] == "open"
    checkpoint = decode_state(
        api.admin("GET", "retrieve-model", params={"name": "mnist", "checkpoint": "2"}).content
    )
    state, _ = tiny_model()
    for name, old in state.items():
        np.testing.assert_allclose(checkpoint[name], old - 0.5, atol=1e-6)


def test_after_the_last_cycle_the_reply_is_rejected_without_timeout(api: Api) -> None:
    api.host(num_cycles=1)
    worker_id, accepted = api.join()
    assert api.report(worker_id, accepted["request_key"]).status_code == 200
    wait_for(lambda: api.status()["status"] == "completed", what="training to complete")
    reply = api.cycle_request(api.authenticate())
    assert reply == {"status": "rejected", "reason": "fl_completed"}


def test_retrieve_model_latest_by_number_and_unknown(api: Api) -> None:
    api.host()
    worker_id, accepted = api.join()
    api.report(worker_id, accepted["request_key"])
    wait_for(lambda: cycle_seq(api) == 2, what="cycle 2 to open")
    latest = api.admin("GET", "retrieve-model", params={"name": "mnist"})
    second = api.admin("GET", "retrieve-model", params={"name": "mnist", "checkpoint": "2"})
    first = api.admin("GET", "retrieve-model", params={"name": "mnist", "checkpoint": "1"})
    assert latest.status_code == second.status_code == first.status_code == 200
    assert latest.content == second.content != first.content
    assert (
        api.admin("GET", "retrieve-model", params={"name": "mnist", "checkpoint": "3"}).status_code
        == 404
    )
    assert api.admin("GET", "retrieve-model", params={"name": "other"}).status_code == 404
