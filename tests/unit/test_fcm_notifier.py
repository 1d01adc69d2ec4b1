"""The real FcmNotifier, through real firebase-admin, against the local FCM endpoint."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import firebase_admin
import pytest
import requests
from firebase_admin import exceptions, messaging
from werkzeug.test import Client

from firegrid.adapters.fcm import FcmNotifier, RetryPolicy, is_dead_token
from firegrid.domain.push import PushMessage, PushType, messages_to, push_data
from firegrid.local._process import free_port
from firegrid.local.fcm_app import local_messaging_app
from firegrid.local.fcm_endpoint import FcmEndpoint, server
from firegrid.local.serving import serving

DATA = push_data(PushType.REQUEST_FOR_CYCLE, model="mnist", version="1.0", cycle_id=3)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with serving(server(0)) as url:
        yield url


@pytest.fixture
def fcm(endpoint: str) -> str:
    """The endpoint, emptied."""
    requests.delete(f"{endpoint}/_fcm/messages", timeout=5).raise_for_status()
    return endpoint


@pytest.fixture
def app(fcm: str) -> Iterator[firebase_admin.App]:
    app = local_messaging_app("demo-push", fcm, name=f"test-{uuid.uuid4().hex}")
    try:
        yield app
    finally:
        firebase_admin.delete_app(app)


class RecordingSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def recorded(fcm: str, **params: Any) -> dict[str, Any]:
    response = requests.get(f"{fcm}/_fcm/messages", params=params, timeout=5)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def control(fcm: str, verb: str, **body: Any) -> None:
    requests.post(f"{fcm}/_fcm/{verb}", json=body, timeout=5).raise_for_status()


def test_sends_data_only_string_messages_without_warnings(
    fcm: str, app: firebase_admin.App
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = FcmNotifier(app).send(messages_to(["tok-a", "tok-b"], DATA))

    assert (report.sent, report.failed, report.unregistered, report.errors) == (2, 0, (), ())
    messages = recorded(fcm)["messages"]
    assert sorted(m["token"] for m in messages) == ["tok-a", "tok-b"]
    assert all(m["data"] == DATA for m in messages)
    first, second = messages
    assert recorded(fcm, since=first["seq"])["messages"] == [second]
    assert recorded(fcm, token=first["token"])["messages"] == [first]


def test_dead_tokens_come_back_as_unregistered(fcm: str, app: firebase_admin.App) -> None:
    control(fcm, "unregister", token="gone")
    control(fcm, "fail", token="other-sender", status=403, times=99)
    control(fcm, "fail", token="malformed", status=400, times=99)
    sleep = RecordingSleep()

    report = FcmNotifier(app, sleep=sleep).send(
        messages_to(["ok", "gone", "other-sender", "malformed"], DATA)
    )

    assert report.sent == 1
    assert report.failed == 0
    assert set(report.unregistered) == {"gone", "other-sender", "malformed"}
    assert sleep.waits == []
    assert [m["token"] for m in recorded(fcm)["messages"]] == ["ok"]


def test_transient_failures_are_retried_for_those_messages_only(
    fcm: str, app: firebase_admin.App
) -> None:
    control(fcm, "fail", token="flaky", status=503, times=2)
    sleep = RecordingSleep()
    notifier = FcmNotifier(app, sleep=sleep, retry=RetryPolicy(initial_delay_s=0.5))

    report = notifier.send(messages_to(["steady", "flaky"], DATA))

    assert (report.sent, report.failed, report.unregistered) == (2, 0, ())
    assert sleep.waits == [0.5, 1.0]
    state = recorded(fcm)
    assert sorted(m["token"] for m in state["messages"]) == ["flaky", "steady"]
    assert state["rejected"] == 2


def test_quota_errors_wait_at_least_retry_after(fcm: str, app: firebase_admin.App) -> None:
    control(fcm, "fail", token="busy", status=429, times=1, retry_after=7)
    sleep = RecordingSleep()

    report = FcmNotifier(app, sleep=sleep).send([PushMessage("busy", DATA)])

    assert report.sent == 1
    assert sleep.waits == [7.0]


def test_a_permanent_failure_is_counted_after_bounded_attempts(
    fcm: str, app: firebase_admin.App
) -> None:
    control(fcm, "fail", token="down", status=500, times=99)
    sleep = RecordingSleep()
    notifier = FcmNotifier(app, sleep=sleep, retry=RetryPolicy(attempts=3, max_delay_s=1.5))

    report = notifier.send(messages_to(["down", "fine"], DATA))

    assert (report.sent, report.failed, report.unregistered) == (1, 1, ())
    assert sleep.waits == [1.0, 1.5]
    [error] = report.errors
    assert error.startswith("InternalError for token down...")
    assert recorded(fcm)["rejected"] == 3


def test_an_unreachable_fcm_is_retried_then_failed() -> None:
    app = local_messaging_app(
        "demo-push", f"http://127.0.0.1:{free_port()}", name="test-unreachable"
    )
    sleep = RecordingSleep()
    try:
        report = FcmNotifier(app, sleep=sleep, retry=RetryPolicy(attempts=2)).send(
            [PushMessage("t", DATA)]
        )
    finally:
        firebase_admin.delete_app(app)

    assert (report.sent, report.failed) == (0, 1)
    assert report.errors[0].startswith("UnavailableError")
    assert sleep.waits == [1.0]


def test_large_sends_go_in_batches_fcm_accepts(
    fcm: str, app: firebase_admin.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    send_each = messaging.send_each

    def spy(batch: list[messaging.Message], **kwargs: Any) -> messaging.BatchResponse:
        batches.append(len(batch))
        return send_each(batch, **kwargs)

    monkeypatch.setattr(messaging, "send_each", spy)
    tokens = [f"device-{i}" for i in range(1100)]

    report = FcmNotifier(app).send(messages_to(tokens, DATA))

    assert report.sent == 1100
    assert batches == [500, 500, 100]
    assert {m["token"] for m in recorded(fcm)["messages"]} == set(tokens)


def test_invalid_argument_is_a_dead_token_only_when_fcm_blames_the_token(
    fcm: str, app: firebase_admin.App
) -> None:
    """Both errors are real firebase-admin exceptions raised from the endpoint's answers."""
    control(fcm, "fail", token="malformed", status=400)
    too_big = messaging.Message(data={"blob": "x" * 5000})
    too_big.token = "fine"

    with pytest.raises(exceptions.InvalidArgumentError) as bad_token:
        messaging.send(_message("malformed"), app=app)
    with pytest.raises(exceptions.InvalidArgumentError) as bad_message:
        messaging.send(too_big, app=app)

    assert is_dead_token(bad_token.value)
    assert not is_dead_token(bad_message.value)


def _message(token: str) -> messaging.Message:
    message = messaging.Message(data=DATA)
    message.token = token
    return message


def test_the_composition_root_sends_to_the_configured_endpoint_once_built(fcm: str) -> None:
    from firegrid.settings import Settings
    from firegrid.wiring import messaging_app, once

    settings = Settings(project_id="demo-env", bucket="b", admin_token=None, fcm_url=fcm)
    built: list[firebase_admin.App] = []

    def build() -> firebase_admin.App:
        built.append(messaging_app(settings))
        return built[-1]

    app = once(build)
    try:
        report = FcmNotifier(app).send([PushMessage("from-env", DATA)])
        assert app() is app() and len(built) == 1
    finally:
        firebase_admin.delete_app(app())

    assert report.sent == 1
    [message] = recorded(fcm)["messages"]
    assert message["name"].startswith("projects/demo-env/messages/")


SEND = "/v1/projects/demo-push/messages:send"
AUTH = {"Authorization": "Bearer local"}


def test_the_endpoint_refuses_what_fcm_refuses_in_fcms_format() -> None:
    client = Client(FcmEndpoint())

    no_target = client.post(SEND, json={"message": {"data": {"a": "b"}}}, headers=AUTH)
    number = client.post(SEND, json={"message": {"token": "t", "data": {"n": 12}}}, headers=AUTH)
    anonymous = client.post(SEND, json={"message": {"token": "t"}})

    assert no_target.status_code == 400
    assert no_target.json["error"]["status"] == "INVALID_ARGUMENT"
    assert number.json["error"]["details"] == [{
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{
            "field": "message.data[0].value",
            "description": "Invalid value at 'message.data[0].value' (TYPE_STRING), 12",
        }],
    }]  # fmt: skip
    assert anonymous.status_code == 401
    assert client.get("/_fcm/messages").json["messages"] == []


def test_the_endpoint_answers_an_unregistered_token_as_fcm_does() -> None:
    client = Client(FcmEndpoint())
    client.post("/_fcm/unregister", json={"token": "gone"})

    response = client.post(SEND, json={"message": {"token": "gone"}}, headers=AUTH)

    assert response.status_code == 404
    assert response.json == {"error": {
        "code": 404,
        "message": "Requested entity was not found.",
        "status": "NOT_FOUND",
        "details": [{
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": "UNREGISTERED",
        }],
    }}  # fmt: skip


def test_dry_runs_and_bad_control_requests_record_nothing() -> None:
    client = Client(FcmEndpoint())
    dry = {"message": {"token": "t", "data": {}}, "validate_only": True}

    assert client.post(SEND, json=dry, headers=AUTH).json == {
        "name": "projects/demo-push/messages/fake_message_id"
    }
    for bad in ({"token": "t", "status": 418}, {"token": "t", "status": 503, "times": 0}):
        assert client.post("/_fcm/fail", json=bad).status_code == 400
    assert client.get("/_fcm/messages?since=x").status_code == 400
    assert client.get("/_fcm/messages").json == {"messages": [], "last_seq": 0, "rejected": 0}


def test_the_endpoint_keeps_only_the_newest_messages() -> None:
    client = Client(FcmEndpoint(keep=2))
    for token in ("a", "b", "c"):
        client.post(SEND, json={"message": {"token": token}}, headers=AUTH)

    state = client.get("/_fcm/messages").json

    assert [m["token"] for m in state["messages"]] == ["b", "c"]
    assert state["last_seq"] == 3
