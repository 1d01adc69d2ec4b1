"""The deployed entry points (functions/main.py) driven through functions-framework's test
client, with the production Context replaced by the in-memory fakes.

main.py binds ``firegrid.wiring.context`` when it is loaded, and every ``create_app`` loads
it afresh, so the fixtures patch ``firegrid.wiring.context`` before creating an app.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import functions_framework
import numpy as np
import pytest
from flask.testing import FlaskClient

import firegrid.wiring
from firegrid import api
from firegrid.domain import blobs
from firegrid.domain.cycle import Cycle, CycleStatus
from firegrid.domain.keys import pseudonym
from firegrid.services import hosting
from firegrid.services.context import Context
from firegrid.tensors import encode_state
from tests.common import checkpoint_writes, document_event
from tests.fakes import fake_settings, make_context

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "functions" / "main.py")
REQUESTS = ROOT / "tests" / "data" / "requests"
EMULATOR = ROOT / "tests" / "data" / "emulator"
ADMIN = {"Authorization": "Bearer tok"}
INTERNAL = {"error": "Internal error", "code": "internal"}

State = dict[str, np.ndarray]
App = Callable[[str], FlaskClient]


@pytest.fixture(scope="module")
def tiny() -> tuple[State, bytes]:
    """A small MLP's state and its torch.export plan, built once for this module."""
    import torch

    from firegrid.plans import build_plan, state_of

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    return state_of(module), build_plan(module, torch.zeros(2, 8))


def use(monkeypatch: pytest.MonkeyPatch, ctx: Context) -> Context:
    monkeypatch.setattr(firegrid.wiring, "context", lambda: ctx)
    return ctx


@pytest.fixture
def ctx(monkeypatch: pytest.MonkeyPatch) -> Context:
    return use(monkeypatch, make_context())


@pytest.fixture
def app(ctx: Context) -> App:
    """``app(target)``: a test client of one function, loaded after ``ctx`` was patched in."""
    return lambda target: functions_framework.create_app(target, source=MAIN).test_client()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def host_body(tiny: tuple[State, bytes], **server: Any) -> dict[str, Any]:
    state, plan = tiny
    return {
        "model": b64(encode_state(state)),
        "plans": {"training_plan": b64(plan)},
        "client_config": {"name": "mnist", "version": "1.0"},
        "server_config": {"cycle_length": 60, "num_cycles": 3, "max_diffs": 1} | server,
    }


def host(ctx: Context, tiny: tuple[State, bytes], **server: Any) -> str:
    return hosting.host_training(ctx, api.HostTraining.parse(host_body(tiny, **server))).process_id


def joined(device: FlaskClient, token: str | None = None) -> tuple[str, dict[str, Any]]:
    """Authenticate and take a place over HTTP: (worker_id, the accepted answer)."""
    body = {"model_name": "mnist"} | ({"auth_token": token} if token else {})
    auth = device.post("/authenticate", json=body)
    assert auth.status_code == 200, auth.json
    worker_id = auth.json["worker_id"]
    answer = device.post("/cycle-request", json={"worker_id": worker_id, "model": "mnist"})
    assert answer.status_code == 200 and answer.json["status"] == "accepted", answer.json
    return worker_id, answer.json


def golden(name: str) -> tuple[dict[str, str], bytes]:
    headers = json.loads((REQUESTS / f"{name}.headers.json").read_text())
    return headers, (REQUESTS / f"{name}.pb").read_bytes()


def golden_at(name: str, worker_id: str) -> tuple[dict[str, str], bytes]:
    """A golden assignment event moved to ``worker_id``'s document (worker ids are derived
    from a per-process secret, so a live test cannot reproduce the captured one)."""
    from google.events.cloud.firestore import DocumentEventData

    headers, data = golden(name)
    old_path = headers["ce-document"]
    new_path = old_path.rsplit("/", 1)[0] + "/" + worker_id
    event = DocumentEventData.deserialize(data)
    for document in (event.old_value, event.value):
        if document.name:
            document.name = document.name.replace(old_path, new_path)
    moved = {k: v.replace(old_path, new_path) for k, v in headers.items()}
    return moved, DocumentEventData.serialize(event)


# -- wiring -------------------------------------------------------------------


def test_the_functions_run_on_the_patched_context(ctx, app, tiny) -> None:
    response = app("admin").post("/host-training", json=host_body(tiny), headers=ADMIN)

    assert response.status_code == 201
    assert response.json["status"] == "success"
    assert set(ctx.repo.processes) == {response.json["process_id"]}


def test_each_app_keeps_the_context_it_was_loaded_with(monkeypatch, app, tiny) -> None:
    first = use(monkeypatch, make_context())
    first_app = app("admin")
    second = use(monkeypatch, make_context())
    second_app = app("admin")

    first_app.post("/host-training", json=host_body(tiny), headers=ADMIN)

    assert len(first.repo.processes) == 1
    assert second.repo.processes == {}
    assert second_app.get("/status?name=mnist", headers=ADMIN).status_code == 404


# -- error mapping ------------------------------------------------------------


@pytest.mark.parametrize("data", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_a_body_that_is_not_a_json_object_is_400_bad_json(app, data) -> None:
    response = app("model_centric").post(
        "/authenticate", data=data, content_type="application/json"
    )

    assert response.status_code == 400
    assert response.json["code"] == "bad_json"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),  # a RecursionError: was a 500
        (b'{"a":' * 30 + b"1" + b"}" * 30, "nested too deeply"),
        (b'{"model_name": NaN}', "not valid JSON"),
        (b'{"model_name": Infinity}', "not valid JSON"),
        (b'{"ping": 1' + b"0" * 5000 + b"}", "not valid JSON"),  # beyond int() digit limits
        (b'{"model_name": "m", "x": 18446744073709551616}', "'x' is an integer outside"),
    ],
)
def test_hostile_json_is_a_400_not_a_500(app, data, message) -> None:
    response = app("model_centric").post(
        "/authenticate", data=data, content_type="application/json"
    )

    assert response.status_code == 400, response.json
    assert message in response.json["error"]


def test_an_unknown_path_is_404_not_found(app) -> None:
    for client, headers in ((app("model_centric"), {}), (app("admin"), ADMIN)):
        response = client.post("/no-such-endpoint", json={}, headers=headers)

        assert response.status_code == 404
        assert response.json["code"] == "not_found"


@pytest.mark.parametrize(("method", "path"), [("GET", "/authenticate"), ("PUT", "/report")])
def test_a_wrong_method_is_405(app, method, path) -> None:
    response = app("model_centric").open(path, method=method)

    assert response.status_code == 405
    assert response.json["code"] == "method_not_allowed"
    assert response.headers["Allow"] == "POST"  # RFC 9110: a 405 names what is allowed


@pytest.mark.parametrize(
    ("path", "methods"),
    [("/report", "POST"), ("/get-plan", "GET"), ("/speed-test", "GET, POST")],
)
def test_the_device_api_answers_a_browsers_cors_preflight(app, path, methods) -> None:
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}

    response = app("model_centric").open(path, method="OPTIONS", headers=preflight)

    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Access-Control-Allow-Methods"] == methods
    assert response.headers["Access-Control-Allow-Headers"] == "Content-Type"
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_every_device_answer_errors_included_is_readable_cross_origin(app, ctx, tiny) -> None:
    host(ctx, tiny)
    device = app("model_centric")
    origin = {"Origin": "http://app.example"}

    answers = [
        device.post("/authenticate", json={"model_name": "mnist"}, headers=origin),
        device.post("/authenticate", json={"model_name": "nope"}, headers=origin),
        device.open("/no-such-endpoint", method="OPTIONS", headers=origin),
    ]

    assert [a.status_code for a in answers] == [200, 404, 404]
    assert {a.headers["Access-Control-Allow-Origin"] for a in answers} == {"*"}
    assert answers[0].headers["Access-Control-Expose-Headers"] == "ETag"


def test_the_admin_api_is_not_open_to_other_origins(app) -> None:
    origin = {"Origin": "http://app.example"} | ADMIN

    answers = [
        app("admin").open("/status", method="OPTIONS", headers=origin),
        app("admin").get("/status?name=x&version=1", headers=origin),
    ]

    assert [a.status_code for a in answers] == [405, 404]
    assert not any("Access-Control-Allow-Origin" in a.headers for a in answers)


def test_an_unhandled_exception_is_a_bare_500_without_a_traceback(ctx, app) -> None:
    def broken(name, version):
        raise RuntimeError("secret-detail in /srv/firegrid/repo.py line 12")

    ctx.repo.processes_named = broken

    response = app("model_centric").post("/authenticate", json={"model_name": "mnist"})

    assert response.status_code == 500
    assert response.mimetype == "application/json"
    assert response.json == INTERNAL
    assert b"secret-detail" not in response.data
    assert b"Traceback" not in response.data


def test_a_body_above_the_size_limit_is_413(monkeypatch, app) -> None:
    use(monkeypatch, make_context(settings=fake_settings(max_body_bytes=64)))

    response = app("model_centric").post("/report", json={"padding": "x" * 100})

    assert response.status_code == 413
    assert response.json["code"] == "too_large"


# -- admin guard --------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic tok"}, {"Authorization": ""}],
)
def test_admin_and_tick_need_the_bearer_token(app, headers) -> None:
    for client, path in ((app("admin"), "/tick"), (app("tick"), "/")):
        response = client.post(path, headers=headers)

        assert response.status_code == 401
        assert response.json["code"] == "admin_auth_required"


@pytest.mark.parametrize("headers", [{}, ADMIN, {"Authorization": "Bearer anything"}])
def test_without_a_token_or_iam_the_admin_api_refuses_everything(monkeypatch, app, headers):
    """Never fail open: no admin token and no IAM declared means no admin access at all."""
    use(monkeypatch, make_context(settings=fake_settings(admin_token=None)))
    for client, path in ((app("admin"), "/tick"), (app("tick"), "/")):
        response = client.post(path, headers=headers)

        assert response.status_code == 401
        assert response.json["code"] == "admin_auth_unconfigured"


def test_behind_iam_the_admin_api_needs_the_forwarded_identity_token(monkeypatch, app) -> None:
    use(monkeypatch, make_context(settings=fake_settings(admin_token=None, admin_iam=True)))
    # Cloud Run forwards the verified token with its signature stripped.
    forwarded = {"Authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.e30.SIGNATURE_REMOVED_BY_GOOGLE"}
    for client, path in ((app("admin"), "/tick"), (app("tick"), "/")):
        assert client.post(path).status_code == 401
        assert client.post(path, headers=forwarded).status_code == 200


@pytest.mark.parametrize("iam", [False, True])
def test_the_console_is_served_without_credentials_under_a_self_only_policy(
    monkeypatch, app, iam: bool
) -> None:
    if iam:
        settings = fake_settings(admin_token=None, admin_iam=True)
        use(monkeypatch, make_context(settings=settings))
    client = app("admin")
    page = client.get("/console")

    assert page.status_code == 200
    assert page.content_type == "text/html; charset=utf-8"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    html = page.get_data(as_text=True)
    for reference, content_type in (
        ("console/app.js", "text/javascript"),
        ("console/style.css", "text/css"),
    ):
        assert f'"{reference}"' in html  # relative: it works under any prefix or proxy
        asset = client.get(f"/{reference}")
        assert asset.status_code == 200 and asset.content_type.startswith(content_type)
    assert "<script>" not in html and "style=" not in html  # the policy allows neither
    assert client.get("/processes").status_code == 401  # the data still needs credentials
    assert client.post("/console").status_code == 405


def test_the_console_with_a_trailing_slash_redirects_to_the_page_its_links_work_from(
    app,
) -> None:
    response = app("admin").get("/console/")

    assert response.status_code == 308
    assert response.headers["Location"] == "../console"  # relative: any prefix or proxy


def test_with_the_bearer_token_admin_and_tick_answer(app) -> None:
    status = app("admin").get("/status?name=mnist", headers=ADMIN)
    tick = app("tick").post("/", headers=ADMIN)

    assert (status.status_code, status.json["code"]) == (404, "unknown_process")
    assert tick.status_code == 200
    assert tick.json == {
        "closed": [],
        "reset": [],
        "extended": [],
        "redriven": [],
        "invited": [],
        "freed": [],
        "failed": [],
    }


# -- aliases ------------------------------------------------------------------


def test_the_pygrid_fork_aliases_reach_the_same_services(ctx, app, tiny) -> None:
    process_id = host(ctx, tiny)
    device = app("model_centric")
    worker_id = device.post("/authenticate", json={"model_name": "mnist"}).json["worker_id"]

    saved = device.post(
        "/save-fcm-token", json={"worker_id": worker_id, "fcm_device_token": "fcm-1"}
    )
    assert saved.status_code == 200
    assert ctx.repo.get_worker(worker_id).fcm_token == "fcm-1"

    status = device.post("/update-worker-status", json={"worker_id": worker_id, "available": False})
    assert status.status_code == 200
    assert not ctx.repo.get_worker(worker_id).available

    stats = [{"cycle_id": 1, "accuracy": 0.5, "loss": 1.2, "num_samples": 10}]
    uploaded = device.post("/upload-stats", json={"worker_id": worker_id, "stats": stats})
    assert uploaded.json == {"status": "success", "stored": 1}
    assert ctx.repo.list_metrics(process_id)[0]["accuracy"] == 0.5

    csv = app("admin").get("/training-metrics?name=mnist&format=csv", headers=ADMIN)
    assert csv.mimetype == "text/csv"
    assert csv.data.decode().splitlines() == [
        "client_id,round_number,hierarchy,num_samples,set,accuracy,loss",
        f"{pseudonym(worker_id)},1,,10,test,0.5,1.2",
    ]
    assert worker_id not in csv.data.decode()  # operators see pseudonyms, not credentials


# -- downloads ----------------------------------------------------------------


def test_binary_downloads_are_octet_streams_with_a_sha256_etag(ctx, app, tiny) -> None:
    state, plan = tiny
    process_id = host(ctx, tiny)
    device = app("model_centric")
    worker_id, accepted = joined(device)
    key = f"worker_id={worker_id}&request_key={accepted['request_key']}"

    responses = {
        "model": device.get(f"/get-model?{key}&model_id={process_id}"),
        "plan": device.get(f"/get-plan?{key}&plan_id=training_plan&receive_operations_as=torch"),
        "retrieved": app("admin").get("/retrieve-model?name=mnist&checkpoint=1", headers=ADMIN),
    }
    expected = {"model": encode_state(state), "plan": plan, "retrieved": encode_state(state)}

    for what, response in responses.items():
        assert response.status_code == 200, what
        assert response.mimetype == "application/octet-stream", what
        assert response.data == expected[what], what
        assert response.headers["ETag"] == f'"{hashlib.sha256(expected[what]).hexdigest()}"', what


def test_a_model_above_the_inline_limit_is_a_307_to_a_signed_url(monkeypatch, app, tiny) -> None:
    ctx = use(monkeypatch, make_context(settings=fake_settings(inline_limit_bytes=16)))
    process_id = host(ctx, tiny)
    device = app("model_centric")
    worker_id, accepted = joined(device)

    response = device.get(
        f"/get-model?worker_id={worker_id}&request_key={accepted['request_key']}"
        f"&model_id={process_id}"
    )

    name = blobs.checkpoint_object(process_id, 1)
    assert response.status_code == 307
    assert response.headers["Location"].startswith(ctx.blobs.URL_BASE + name)
    assert ctx.blobs.signed == [("GET", name)]


def test_a_forged_request_key_is_401(ctx, app, tiny) -> None:
    process_id = host(ctx, tiny)
    device = app("model_centric")
    worker_id, _ = joined(device)

    response = device.get(
        f"/get-model?worker_id={worker_id}&request_key=1.0.forged&model_id={process_id}"
    )

    assert (response.status_code, response.json) == (
        401,
        {"error": "Invalid request key!", "code": "invalid_request_key"},
    )


# -- Firestore triggers -------------------------------------------------------


ASSIGNMENT = "processes/{process}/cycles/{cycle}/assignments/{worker}"


def test_the_golden_events_decode_to_typed_assignment_changes() -> None:
    from firegrid.adapters.events import assignment_codec, decode

    headers, data = golden("assignment_reported")
    change = decode(headers["ce-subject"], data, ASSIGNMENT, assignment_codec)

    assert change.params == {
        "process": "d85abbbe9ec6619285e7",
        "cycle": "1",
        "worker": "491e5eaf047d01ecb8f9c683",
    }
    assert (change.before.reported, change.after.reported) == (False, True)
    assert change.after.num_samples == 5
    created_headers, created_data = golden("assignment_created")
    created = decode(created_headers["ce-subject"], created_data, ASSIGNMENT, assignment_codec)
    assert (created.before, created.after.reported) == (None, False)


def cycle_event(ctx: Context, process_id: str, before: Cycle, after: Cycle) -> tuple[dict, bytes]:
    from firegrid.adapters.firestore_codecs import cycle_doc

    path = f"processes/{process_id}/cycles/{after.seq}"
    return document_event("demo-test", path, cycle_doc(before), cycle_doc(after))


def test_a_report_event_marks_the_cycle_closing_and_the_cycle_event_closes_it_once(
    ctx, app, tiny
) -> None:
    process_id = host(ctx, tiny, max_diffs=1, authentication={"secret": "abc"})
    device = app("model_centric")
    worker_id, accepted = joined(device, token="valid:alice")
    diff = {k: np.full_like(v, 0.1) for k, v in tiny[0].items()}
    reported = device.post(
        "/report",
        json={
            "worker_id": worker_id,
            "request_key": accepted["request_key"],
            "diff": b64(encode_state(diff)),
            "num_samples": 5,
        },
    )
    assert reported.json == {"status": "success"}
    opened = ctx.repo.get_cycle(process_id, 1)
    assert opened.status is CycleStatus.OPEN  # the triggers close it
    trigger = app("on_assignment_written")
    created_headers, created = golden_at("assignment_created", worker_id)
    reported_headers, reported_event = golden_at("assignment_reported", worker_id)
    assert reported_headers["ce-subject"].endswith(
        f"processes/{process_id}/cycles/1/assignments/{worker_id}"
    )

    assert trigger.post("/", data=created, headers=created_headers).status_code == 200
    assert ctx.repo.get_cycle(process_id, 1).status is CycleStatus.OPEN  # not a report: nothing
    for _ in range(2):  # at-least-once delivery: the second finds nothing to do
        assert trigger.post("/", data=reported_event, headers=reported_headers).status_code == 200
    closing = ctx.repo.get_cycle(process_id, 1)
    assert closing.status is CycleStatus.CLOSING  # one closing path: the cycle trigger aggregates
    assert ctx.repo.get_cycle(process_id, 2) is None

    headers, event = cycle_event(ctx, process_id, opened, closing)
    for _ in range(2):
        assert app("on_cycle_written").post("/", data=event, headers=headers).status_code == 200

    record = ctx.repo.get_cycle(process_id, 1)
    assert record.status is CycleStatus.COMPLETED
    assert record.aggregation_runs == 1
    assert ctx.repo.get_process(process_id).current_cycle == 2
    assert len(checkpoint_writes(ctx, process_id, 2)) == 1


def test_the_emulators_base64_capture_is_decoded_by_the_router_once() -> None:
    """The Firestore emulator's own capture (base64 text) of cycle p1/1 entering ``closing``:
    the local router turns it into the protobuf production sends; functions never see base64."""
    from firegrid.adapters.events import raw_change
    from firegrid.local.router import decode_body

    capture = json.loads((EMULATOR / "cycle_updated_event.json").read_text())
    body, content_type = decode_body(capture["body"].encode(), "application/protobuf")

    change = raw_change(capture["headers"]["ce-subject"], body)
    assert content_type == "application/protobuf"
    assert (change.before["status"], change.after["status"]) == ("open", "closing")
    with pytest.raises(ValueError, match="neither DocumentEventData protobuf nor JSON"):
        raw_change(capture["headers"]["ce-subject"], capture["body"])


@pytest.mark.parametrize(
    ("subject", "data"),
    [
        ("documents/processes/p/cycles/1", b"not an event"),
        ("documents/elsewhere/x", b""),
    ],
)
def test_a_permanently_broken_event_is_logged_and_dropped(app, subject, data, caplog) -> None:
    headers = {
        "Content-Type": "application/protobuf",
        "ce-id": "1",
        "ce-specversion": "1.0",
        "ce-type": "google.cloud.firestore.document.v1.written",
        "ce-source": "//firestore.googleapis.com/projects/demo-test/databases/(default)",
        "ce-subject": subject,
    }

    response = app("on_cycle_written").post("/", data=data, headers=headers)

    assert response.status_code == 200  # dropped: a retry could never succeed
    assert "permanent failure, event dropped" in caplog.text


def test_a_transient_failure_is_raised_for_the_platform_to_retry(ctx, app, tiny) -> None:
    from google.api_core import exceptions as gexc

    process_id = host(ctx, tiny)
    opened = ctx.repo.get_cycle(process_id, 1)
    closing = opened.begin_closing(opened.opened_at)
    ctx.repo.update_cycle(process_id, 1, lambda c: closing)

    def unavailable(*args: object) -> None:
        raise gexc.ServiceUnavailable("firestore is restarting")

    ctx.repo.update_cycle = unavailable
    headers, event = cycle_event(ctx, process_id, opened, closing)

    response = app("on_cycle_written").post("/", data=event, headers=headers)

    assert response.status_code == 500  # functions-framework's answer to a raise: redelivered
