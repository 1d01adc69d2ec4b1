"""infra/firestore.rules (what ``firegrid deploy`` ships) refuses every client-SDK read
and write: devices speak the HTTP API only. Checked on a Firestore emulator started with
``--rules``, as a signed-in end user and as nobody; the server SDKs' admin access (the
emulator's ``owner`` token) is the control that shows the rules are what refuses."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from firegrid.local import firestore_emulator
from firegrid.local._process import (
    HOST,
    free_port,
    http_probe,
    spawn,
    stop_process_groups,
    wait_until_ready,
)
from firegrid.manifest import FIRESTORE_RULES

REPO = Path(__file__).resolve().parents[2]
PROJECT = "demo-rules"
DOCUMENTS = f"/v1/projects/{PROJECT}/databases/(default)/documents"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    emulator = firestore_emulator.command(
        firestore_emulator.find_java(),
        firestore_emulator.find_jar(REPO),
        port=port,
        project_id=PROJECT,
        functions_host=f"{HOST}:{free_port()}",  # no trigger is registered: never called
    )
    argv = [*emulator, f"--rules={REPO / FIRESTORE_RULES}"]
    logs = tmp_path_factory.mktemp("rules")
    process = spawn("firestore", argv, logs)
    try:
        url = f"http://{HOST}:{port}"
        wait_until_ready(
            "firestore", process, http_probe(f"{url}/", "Ok"), logs / "firestore.log", 60
        )
        yield url
    finally:
        stop_process_groups([process.pid])


def _end_user_token() -> str:
    """A Firebase Auth ID token as a signed-in app user holds (the emulator takes them
    unsigned)."""
    claims = {
        "iss": f"https://securetoken.google.com/{PROJECT}",
        "aud": PROJECT,
        "sub": "device-user",
        "user_id": "device-user",
        "iat": 1_700_000_000,
        "exp": 4_000_000_000,
        "auth_time": 1_700_000_000,
        "firebase": {"sign_in_provider": "password", "identities": {}},
    }
    parts = [{"alg": "none", "typ": "JWT"}, claims]
    encoded = [base64.urlsafe_b64encode(json.dumps(p).encode()).rstrip(b"=") for p in parts]
    return b".".join([*encoded, b""]).decode()


def _requests(url: str) -> list[tuple[str, str, dict | None]]:
    """A read, a list, a query, a create, an update and a delete of FireGrid documents."""
    doc = f"{url}{DOCUMENTS}/processes/p1"
    fields = {"fields": {"status": {"stringValue": "training"}}}
    query = {"structuredQuery": {"from": [{"collectionId": "workers"}]}}
    return [
        ("GET", doc, None),
        ("GET", f"{url}{DOCUMENTS}/processes", None),
        ("POST", f"{url}{DOCUMENTS}:runQuery", query),
        ("POST", f"{url}{DOCUMENTS}/workers?documentId=w1", fields),
        ("PATCH", f"{doc}/cycles/1", fields),
        ("DELETE", doc, None),
    ]


def _statuses(url: str, authorization: str | None) -> list[int]:
    headers = {"Authorization": authorization} if authorization else {}
    return [
        requests.request(method, target, json=body, headers=headers, timeout=30).status_code
        for method, target, body in _requests(url)
    ]


def test_the_server_sdks_admin_access_is_not_refused(emulator: str) -> None:
    owner = "Bearer owner"  # what the server SDKs are on the emulator: rules do not apply
    requests.post(
        f"{emulator}{DOCUMENTS}/processes?documentId=p1",
        json={"fields": {}},
        headers={"Authorization": owner},
        timeout=30,
    ).raise_for_status()
    assert all(status < 400 for status in _statuses(emulator, owner))


@pytest.mark.parametrize("who", ["end user", "nobody"])
def test_every_client_read_and_write_is_refused(emulator: str, who: str) -> None:
    authorization = f"Bearer {_end_user_token()}" if who == "end user" else None
    assert _statuses(emulator, authorization) == [403] * len(_requests(emulator))
