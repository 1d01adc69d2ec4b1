"""Test-side helpers: a thin HTTP client for the device and operator APIs, and a tiny model."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import requests

from firegrid.tensors import encode_state
from tests.common import b64, document_event, tiny_model

HS256_FIXTURE = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.yYhP2xosmpuyV5aoT8mz7GFESzq3hKSy-CRWC-vYOIU"
)


def host_body(name: str = "mnist", version: str = "1.0", **server: Any) -> dict[str, Any]:
    state, plan = tiny_model()
    server_config = {"cycle_length": 60, "num_cycles": 2, "max_diffs": 1} | server
    return {
        "model": b64(encode_state(state)),
        "plans": {"training_plan": b64(plan)},
        "client_config": {"name": name, "version": version, "batch_size": 4, "lr": 0.1},
        "server_config": server_config,
    }


def small_diff(scale: float = 0.01) -> dict[str, np.ndarray]:
    state, _ = tiny_model()
    return {k: (np.ones_like(v) * scale).astype(v.dtype) for k, v in state.items()}


class Api:
    """The two HTTP functions of a running stack."""

    def __init__(self, base_url: str, admin_token: str) -> None:
        self.base = base_url.rstrip("/")
        self.session = requests.Session()
        self.admin_headers = {"Authorization": f"Bearer {admin_token}"}

    def device(self, method: str, path: str, **kw: Any) -> requests.Response:
        return self.session.request(method, f"{self.base}/model-centric/{path}", timeout=60, **kw)

    def admin(self, method: str, path: str, **kw: Any) -> requests.Response:
        headers = kw.pop("headers", self.admin_headers)
        return self.session.request(
            method, f"{self.base}/admin/{path}", headers=headers, timeout=120, **kw
        )

    def host(self, **kw: Any) -> str:
        response = self.admin("POST", "host-training", json=host_body(**kw))
        assert response.status_code == 201, response.text
        return str(response.json()["process_id"])

    def authenticate(self, model: str = "mnist", token: str | None = None) -> str:
        body: dict[str, Any] = {"model_name": model}
        if token is not None:
            body["auth_token"] = token
        response = self.device("POST", "authenticate", json=body)
        assert response.status_code == 200, response.text
        return str(response.json()["worker_id"])

    def cycle_request(self, worker_id: str, model: str = "mnist", **kw: Any) -> dict[str, Any]:
        response = self.device(
            "POST", "cycle-request", json={"worker_id": worker_id, "model": model} | kw
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def join(self, model: str = "mnist") -> tuple[str, dict[str, Any]]:
        worker_id = self.authenticate(model)
        accepted = self.cycle_request(worker_id, model)
        assert accepted["status"] == "accepted", accepted
        return worker_id, accepted

    def report(
        self,
        worker_id: str,
        request_key: str,
        diff: dict[str, np.ndarray] | None = None,
        num_samples: int = 10,
    ) -> requests.Response:
        body = {
            "worker_id": worker_id,
            "request_key": request_key,
            "diff": b64(encode_state(diff if diff is not None else small_diff())),
            "num_samples": num_samples,
        }
        return self.device("POST", "report", json=body)

    def status(self, model: str = "mnist") -> dict[str, Any]:
        response = self.admin("GET", "status", params={"name": model})
        assert response.status_code == 200, response.text
        return dict(response.json())

    def tick(self) -> dict[str, Any]:
        response = self.admin("POST", "tick")
        assert response.status_code == 200, response.text
        return dict(response.json())


def wait_for(condition: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    """Poll until ``condition()`` is truthy (triggers run asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)


def cycle_seq(api: Api, model: str = "mnist") -> int:
    return int(api.status(model)["current_cycle"]["seq"])


def register_token(api: Api, worker_id: str, token: str, **profile: Any) -> None:
    body = {"worker_id": worker_id, "fcm_token": token} | profile
    response = api.device("POST", "register-token", json=body)
    assert response.status_code == 200, response.text


def pushes(fcm_url: str, push_type: str | None = None) -> list[dict[str, Any]]:
    """What the local FCM endpoint received: [{token, data, ...}], optionally of one type."""
    messages = requests.get(f"{fcm_url}/_fcm/messages", timeout=10).json()["messages"]
    return [m for m in messages if push_type is None or m["data"]["type"] == push_type]


def assignment_reported_event(
    stack: Any, path: str, stored: dict[str, Any]
) -> tuple[dict[str, str], bytes]:
    """Headers and raw protobuf body of the CloudEvent for ``reported: false -> true`` of the
    assignment document ``stored`` at ``path``, as Eventarc delivers it in production."""
    unreported = stored | {"reported": False, "reported_at": None}
    return document_event(stack.project_id, path, unreported, stored)


def cycle_closing_event(
    stack: Any, path: str, stored: dict[str, Any]
) -> tuple[dict[str, str], bytes]:
    """The CloudEvent of the cycle document ``stored`` at ``path`` entering ``closing``."""
    closing = stored | {"status": "closing"}
    return document_event(stack.project_id, path, stored | {"status": "open"}, closing)


def redeliver(stack: Any, function: str, event: tuple[dict[str, str], bytes]) -> None:
    """Deliver a trigger event again, as at-least-once delivery may; it must be decodable
    (a dropped event would prove nothing) and answered 200."""
    from firegrid.adapters import events
    from firegrid.manifest import trigger_pattern

    headers, body = event
    target = function.replace("-", "_")
    codec = {
        "on_assignment_written": events.assignment_codec,
        "on_cycle_written": events.cycle_codec,
    }[target]
    events.decode(headers["ce-subject"], body, trigger_pattern(target), codec)
    response = requests.post(f"{stack.base_url}/{function}", data=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text


def wait_past_deadline(api: Api, model: str = "mnist") -> None:
    """Sleep until the current cycle's deadline has passed (the server shares our clock)."""
    from datetime import UTC, datetime

    deadline = datetime.fromisoformat(api.status(model)["current_cycle"]["deadline"])
    time.sleep(max(0.0, (deadline - datetime.now(UTC)).total_seconds()) + 0.2)
