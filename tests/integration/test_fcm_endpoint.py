"""The stack runs a local FCM endpoint, tells the functions about it and wipes it."""

from __future__ import annotations

import json
from pathlib import Path

import firebase_admin
import pytest
import requests

from firegrid.adapters.fcm import FcmNotifier
from firegrid.domain.push import PushMessage, PushType, push_data
from firegrid.local.fcm_app import local_messaging_app
from firegrid.local.stack import StackInfo, wipe
from firegrid.settings import FCM_URL_ENV

pytestmark = pytest.mark.integration


def messages(stack: StackInfo) -> list[dict[str, object]]:
    response = requests.get(f"{stack.fcm_url}/_fcm/messages", timeout=5)
    response.raise_for_status()
    recorded: list[dict[str, object]] = response.json()["messages"]
    return recorded


def test_stack_json_and_client_env_name_the_endpoint(stack: StackInfo) -> None:
    recorded = json.loads(stack.path.read_text())

    assert recorded["fcm_url"] == stack.fcm_url
    assert stack.fcm_url.startswith("http://127.0.0.1:")
    assert stack.client_env()[FCM_URL_ENV] == stack.fcm_url
    assert stack.alive()["fcm"]


def test_the_functions_process_is_pointed_at_the_endpoint(stack: StackInfo) -> None:
    environ = Path(f"/proc/{stack.pids['functions']}/environ")
    if not environ.exists():
        pytest.skip("no /proc")

    assert f"{FCM_URL_ENV}={stack.fcm_url}".encode() in environ.read_bytes().split(b"\0")


def test_sends_reach_the_endpoint_and_wipe_clears_them(stack: StackInfo) -> None:
    data = push_data(PushType.CYCLE_RESET, model="m", version="1", cycle_id=1)
    app = local_messaging_app(stack.project_id, stack.fcm_url, name="integration-fcm")
    try:
        requests.post(
            f"{stack.fcm_url}/_fcm/unregister", json={"token": "gone"}, timeout=5
        ).raise_for_status()
        report = FcmNotifier(app).send([PushMessage("device-1", data), PushMessage("gone", data)])
    finally:
        firebase_admin.delete_app(app)

    assert (report.sent, report.unregistered) == (1, ("gone",))
    [message] = messages(stack)
    assert (message["token"], message["data"]) == ("device-1", data)

    wipe(stack)

    assert messages(stack) == []
    # The unregistered mark went too.
    app = local_messaging_app(stack.project_id, stack.fcm_url, name="integration-fcm-2")
    try:
        assert FcmNotifier(app).send([PushMessage("gone", data)]).sent == 1
    finally:
        firebase_admin.delete_app(app)
