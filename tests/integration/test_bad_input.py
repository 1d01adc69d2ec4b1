"""Bad input on every endpoint: a 4xx with a clear message, and the cycle still completes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from firegrid.domain.keys import pseudonym
from firegrid.tensors import encode_state

from .support import Api, b64, cycle_seq, host_body, small_diff, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def api(clean_stack) -> Api:
    return Api(clean_stack.base_url, clean_stack.admin_token)


def _diff_with(**changes: np.ndarray) -> str:
    return b64(encode_state(small_diff() | changes))


def _expect(response, status: int, code: str | None = None, message: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "code"}
    assert "Traceback" not in body["error"]
    if code is not None:
        assert body["code"] == code, body
    if message is not None:
        assert message in body["error"], body


def test_bad_hosting_requests_create_nothing(api: Api) -> None:
    good = host_body()
    cases: list[tuple[dict[str, Any], str]] = [
        ({k: v for k, v in good.items() if k != "model"}, "'model' must be a base64 string"),
        (good | {"model": "%%%"}, "'model' is not valid base64"),
        (good | {"model": b64(b"not safetensors")}, "model is not a valid safetensors file"),
        (good | {"plans": {}}, "'plans' must be an object with a 'training_plan'"),
        (good | {"plans": {"training_plan": b64(b"zip?")}}, "is not a torch.export program"),
        (good | {"client_config": {"name": "x"}}, "'client_config.version' is required"),
        (good | {"server_config": {"num_cycles": 1}}, "'cycle_length' is required"),
        (
            good | {"server_config": {"cycle_length": 5, "num_cycles": 1, "max_workrs": 3}},
            "unknown server_config keys",
        ),
    ]
    for body, message in cases:
        _expect(api.admin("POST", "host-training", json=body), 400, message=message)
    other = host_body()
    other_state = {"other.weight": np.zeros((2, 2), np.float32)}
    other["model"] = b64(encode_state(other_state))
    _expect(api.admin("POST", "host-training", json=other), 400, code="invalid_plan")
    assert api.admin("GET", "status", params={"name": "mnist"}).status_code == 404
    assert api.admin("GET", "status", params={"name": "x"}).status_code == 404


def test_bad_device_requests_then_the_cycle_still_completes(api: Api) -> None:
    api.host(max_diffs=1)
    worker_id, accepted = api.join()
    key = accepted["request_key"]
    report = {"worker_id": worker_id, "request_key": key, "num_samples": 5}

    _expect(
        api.device("POST", "authenticate", json={}),
        400,
        "missing_field",
        "'model_name' is required",
    )
    _expect(api.device("POST", "authenticate", json={"model_name": 5}), 400, "invalid_field")
    _expect(api.device("POST", "authenticate", json=["a"]), 400, "bad_json")
    _expect(api.device("POST", "cycle-request", json={"model": "mnist"}), 400, "missing_field")
    _expect(
        api.device("POST", "cycle-request", json={"worker_id": "nobody", "model": "mnist"}), 401
    )
    _expect(
        api.device(
            "POST", "cycle-request", json={"worker_id": worker_id, "model": "mnist", "ping": -1}
        ),
        400,
        message="must not be negative",
    )
    _expect(
        api.device(
            "POST",
            "cycle-request",
            json={"worker_id": worker_id, "model": "mnist", "download": "fast"},
        ),
        400,
        message="must be a number",
    )
    _expect(api.device("GET", "get-model", params={"worker_id": worker_id}), 400, "missing_field")
    _expect(api.device("GET", "get-plan", params={"worker_id": worker_id, "request_key": key}), 400)
    _expect(api.device("GET", "speed-test", params={}), 400)
    _expect(api.device("POST", "report", json=report | {"diff": "%%%"}), 400, "invalid_base64")
    _expect(
        api.device("POST", "report", json=report | {"diff": b64(b"junk")}),
        400,
        "invalid_safetensors",
    )
    _expect(
        api.device(
            "POST", "report", json=report | {"diff": _diff_with(extra=np.zeros(2, np.float32))}
        ),
        400,
        "invalid_diff",
        "unexpected ['extra']",
    )
    state = small_diff()
    name = next(iter(state))
    _expect(
        api.device(
            "POST",
            "report",
            json=report | {"diff": _diff_with(**{name: np.zeros((1, 1), np.float32)})},
        ),
        400,
        "invalid_diff",
        "shape",
    )
    _expect(
        api.device(
            "POST",
            "report",
            json=report
            | {"diff": _diff_with(**{name: np.full(state[name].shape, np.nan, np.float32)})},
        ),
        400,
        "invalid_diff",
        "NaN or Inf",
    )
    _expect(
        api.device(
            "POST",
            "report",
            json=report
            | {"diff": _diff_with(**{name: np.full(state[name].shape, np.inf, np.float32)})},
        ),
        400,
        "invalid_diff",
        "NaN or Inf",
    )
    _expect(
        api.device(
            "POST",
            "report",
            json=report | {"diff": _diff_with(**{name: state[name].astype(np.float64)})},
        ),
        400,
        "invalid_diff",
        "dtype",
    )
    _expect(
        api.device("POST", "report", json=report | {"diff": _diff_with(), "num_samples": 0}),
        400,
        message="'num_samples' must be >= 1",
    )
    _expect(
        api.device("POST", "report", json=report | {"diff": _diff_with(), "num_samples": "5"}),
        400,
        message="must be an integer",
    )
    _expect(
        api.device(
            "POST",
            "report",
            json={"worker_id": worker_id, "request_key": key, "diff": _diff_with()},
        ),
        400,
        message="'num_samples' is required",
    )
    _expect(
        api.device(
            "POST", "report", json=report | {"diff": _diff_with(), "request_key": "1.0.forged"}
        ),
        401,
    )
    _expect(api.device("POST", "metrics", json={"worker_id": worker_id, "stats": "x"}), 400)
    _expect(
        api.device(
            "POST",
            "metrics",
            json={"worker_id": worker_id, "stats": [{"cycle_id": 1, "accuracy": 2}]},
        ),
        400,
    )
    _expect(api.device("GET", "nowhere"), 404, "not_found")
    _expect(api.device("GET", "report"), 405)
    oversized = b"{" + b" " * (33 * 1024 * 1024) + b"}"
    _expect(
        api.device("POST", "report", data=oversized, headers={"Content-Type": "application/json"}),
        413,
    )

    assert api.status()["current_cycle"]["reported"] == 0
    # PyGrid's alias for num_samples, and the cycle completes after all of the above.
    good = api.device(
        "POST",
        "report",
        json={
            "worker_id": worker_id,
            "request_key": key,
            "diff": _diff_with(),
            "train_num_samples": 5,
        },
    )
    assert good.status_code == 200, good.text
    wait_for(lambda: cycle_seq(api) == 2, what="cycle 2 to open")
    late = api.device("POST", "report", json=report | {"diff": _diff_with()})
    _expect(late, 409, "cycle_closed")


def test_metrics_round_trip_as_json_and_leaf_csv(api: Api) -> None:
    api.host()
    worker_id, _ = api.join()
    stats = [{"cycle_id": 1, "accuracy": 0.75, "loss": 0.5, "num_samples": 40}]
    response = api.device("POST", "upload-stats", json={"worker_id": worker_id, "stats": stats})
    assert response.json() == {"status": "success", "stored": 1}
    rows = api.admin("GET", "training-metrics", params={"name": "mnist"}).json()["metrics"]
    assert rows == [
        {
            "client_id": pseudonym(worker_id),
            "cycle_id": 1,
            "accuracy": 0.75,
            "loss": 0.5,
            "num_samples": 40,
            "set": "test",
        }
    ]
    csv = api.admin(
        "GET", "training-metrics", params={"name": "mnist", "format": "csv"}
    ).text.splitlines()
    assert csv[0] == "client_id,round_number,hierarchy,num_samples,set,accuracy,loss"
    assert csv[1] == f"{pseudonym(worker_id)},1,,40,test,0.75,0.5"


def test_speed_test_serves_a_bounded_sample_to_known_workers(api: Api) -> None:
    api.host()
    worker_id = api.authenticate()
    query = {"worker_id": worker_id, "random": "1"}
    sample = api.device("GET", "speed-test", params=query)
    assert sample.status_code == 200 and 0 < len(sample.content) <= 16 * 1024 * 1024
    ping = api.device("GET", "speed-test", params=query | {"is_ping": "1"})
    assert ping.json() == {}
    upload = api.device("POST", "speed-test", params=query, data=b"x" * 1024)
    assert upload.json() == {}
    for params in ({"worker_id": "w", "random": "1"}, {"worker_id": "f" * 32, "random": "1"}):
        _expect(api.device("GET", "speed-test", params=params), 401, "unknown_worker")
        _expect(api.device("POST", "speed-test", params=params, data=b"x"), 401, "unknown_worker")
    _expect(api.device("GET", "speed-test", params={"worker_id": worker_id}), 400, "missing_field")
