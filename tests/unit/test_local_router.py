"""The trigger router turns the emulator's deliveries into production CloudEvents."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.test import Client

from firegrid.local.functions_server import build_app
from firegrid.local.router import STATUS_PATH, TriggerRouter, decode_body, redact_path
from firegrid.manifest import FunctionSpec

DATA = Path(__file__).parents[1] / "data"
EMULATOR_EVENT = json.loads((DATA / "emulator" / "cycle_updated_event.json").read_text())
FUNCTIONS_URL = "http://functions.test"
PRODUCTION_SOURCE = "//firestore.googleapis.com/projects/demo-firegrid/databases/(default)"


class RecordingFunctions:
    """A fake functions server: records each forward and answers through the
    real dispatcher and a real cloudevent function that decodes the event."""

    def __init__(self) -> None:
        spec = FunctionSpec(name="on-cycle-written", target="record_event", signature="cloudevent")
        self.client = Client(build_app(DATA / "functions_probe.py", [spec]))
        self.module: Any = sys.modules["functions_probe"]
        self.module.RECEIVED.clear()
        self.posts: list[tuple[str, dict[str, str], bytes]] = []

    def __call__(self, url: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes, str]:
        self.posts.append((url, headers, body))
        path = url.removeprefix(FUNCTIONS_URL)
        response = self.client.post(path, headers=headers, data=body)
        return response.status_code, response.get_data(), response.content_type or ""


def deliver(router: TriggerRouter, body: bytes | str) -> Any:
    return Client(router).post(EMULATOR_EVENT["path"], headers=EMULATOR_EVENT["headers"], data=body)


def test_forwards_raw_protobuf_with_production_source() -> None:
    functions = RecordingFunctions()
    router = TriggerRouter(FUNCTIONS_URL, "demo-firegrid", post=functions)

    response = deliver(router, EMULATOR_EVENT["body"])

    assert response.status_code == 200
    [(url, headers, body)] = functions.posts
    assert url == "http://functions.test/on-cycle-written"
    assert body == base64.b64decode(EMULATOR_EVENT["body"])
    assert headers["Content-Type"] == "application/protobuf"
    assert headers["ce-source"] == PRODUCTION_SOURCE
    for key in ("ce-id", "ce-type", "ce-subject", "ce-time", "ce-document", "ce-specversion"):
        assert headers[key] == EMULATOR_EVENT["headers"][key]
    [(attributes, data)] = functions.module.RECEIVED
    assert attributes["source"] == PRODUCTION_SOURCE
    assert attributes["subject"] == "documents/processes/p1/cycles/1"
    assert data.value.fields["status"].string_value == "closing"
    assert data.old_value.fields["status"].string_value == "open"


def test_raw_protobuf_and_json_bodies_pass_through() -> None:
    raw = base64.b64decode(EMULATOR_EVENT["body"])
    assert decode_body(raw, "application/protobuf") == (raw, "application/protobuf")
    assert decode_body(EMULATOR_EVENT["body"].encode(), "application/protobuf") == (
        raw,
        "application/protobuf",
    )
    as_json = b'{"value": {"name": "x"}}'
    assert decode_body(as_json, "application/json") == (as_json, "application/json")


def test_raw_protobuf_delivery_is_forwarded_unchanged() -> None:
    functions = RecordingFunctions()
    router = TriggerRouter(FUNCTIONS_URL, "demo-firegrid", post=functions)

    response = deliver(router, base64.b64decode(EMULATOR_EVENT["body"]))

    assert response.status_code == 200
    assert functions.posts[0][2] == base64.b64decode(EMULATOR_EVENT["body"])


def test_function_status_is_returned_and_recorded() -> None:
    def failing(url: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes, str]:
        return 500, b"boom", "text/plain"

    router = TriggerRouter(FUNCTIONS_URL, "demo-firegrid", post=failing)

    assert deliver(router, EMULATOR_EVENT["body"]).status_code == 500
    status = json.loads(Client(router).get(STATUS_PATH).get_data())
    assert status["in_flight"] == 0
    assert status["total"] == 1
    [forward] = status["recent"]
    assert forward["trigger"] == "on-cycle-written"
    assert forward["subject"] == "documents/processes/p1/cycles/1"
    assert forward["status"] == 500


def test_unreachable_function_is_a_bad_gateway() -> None:
    def unreachable(url: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes, str]:
        raise requests.ConnectionError("refused")

    router = TriggerRouter(FUNCTIONS_URL, "demo-firegrid", post=unreachable)

    assert deliver(router, EMULATOR_EVENT["body"]).status_code == 502


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/elsewhere"), ("GET", EMULATOR_EVENT["path"])]
)
def test_anything_but_a_trigger_delivery_is_not_found(method: str, path: str) -> None:
    router = TriggerRouter(FUNCTIONS_URL, "demo-firegrid", post=RecordingFunctions())

    assert Client(router).open(path, method=method).status_code == 404


def test_logged_paths_shorten_worker_ids() -> None:
    path = "documents/processes/p1/cycles/3/assignments/0123456789abcdef0123456789abcdef"
    assert redact_path(path) == "documents/processes/p1/cycles/3/assignments/012345…"
    assert redact_path("documents/workers/abcdef0123") == "documents/workers/abcdef…"
    assert redact_path("documents/processes/p1/cycles/3") == "documents/processes/p1/cycles/3"
