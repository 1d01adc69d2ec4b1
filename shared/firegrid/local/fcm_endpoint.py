"""A local stand-in for FCM's HTTP v1 send API, so pushes work offline.

There is no FCM emulator. firebase-admin posts each message to
``/v1/projects/{project}/messages:send``; this app answers as FCM does, in
FCM's error format, so firebase-admin raises its real exception types
(``UnregisteredError`` for a 404 ``UNREGISTERED``, ...). Accepted messages
are recorded for tests and the device simulator:

* ``GET /_fcm/messages[?token=T][&since=N]``: ``{"messages": [{seq, name,
  token, data, received_at}], "last_seq", "rejected"}``, oldest first;
* ``POST /_fcm/unregister {"token": T}``: sends to T answer 404 ``UNREGISTERED``;
* ``POST /_fcm/fail {"token": T, "status": 503, "times": 2[, "retry_after": s]}``:
  the next ``times`` sends to T fail with that status (see ``FAILURES``);
* ``DELETE /_fcm/messages``: forget messages, marks and counters.

Run: ``python -m firegrid.local.fcm_endpoint --port P`` (listens on 127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from firegrid.local._process import HOST

SEND_PATH = re.compile(r"^/v1/projects/(?P<project>[^/]+)/messages:send$")
MESSAGES_PATH = "/_fcm/messages"
UNREGISTER_PATH = "/_fcm/unregister"
FAIL_PATH = "/_fcm/fail"
KEEP_MESSAGES = 100_000
MAX_DATA_BYTES = 4096
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"

FAILURES: dict[int, tuple[str, str, str]] = {
    400: ("INVALID_ARGUMENT", "INVALID_ARGUMENT",
          "The registration token is not a valid FCM registration token"),
    401: ("UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", "Auth error from APNS or Web Push Service"),
    403: ("PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch"),
    404: ("NOT_FOUND", "UNREGISTERED", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "Quota exceeded for this device."),
    500: ("INTERNAL", "INTERNAL", "Internal error encountered."),
    503: ("UNAVAILABLE", "UNAVAILABLE", "The service is currently unavailable."),
}  # fmt: skip
"""HTTP status -> (status, FcmError errorCode, message), as FCM answers a bad target."""

log = logging.getLogger("firegrid.fcm_endpoint")


def fcm_error(code: int, status: str, message: str, details: list[dict[str, Any]]) -> Response:
    """A Google API error response; firebase-admin picks the exception from ``details``."""
    body = {"error": {"code": code, "message": message, "status": status, "details": details}}
    return Response(json.dumps(body), status=code, content_type="application/json")


def target_failure(code: int, retry_after_s: int | None = None) -> Response:
    """FCM's answer when the message is fine but its target is not (or FCM is busy)."""
    status, error_code, message = FAILURES[code]
    response = fcm_error(code, status, message, [{"@type": FCM_ERROR, "errorCode": error_code}])
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(retry_after_s)
    return response


def invalid_field(field: str, description: str) -> Response:
    """FCM's answer to a malformed request: 400 with a ``BadRequest`` field violation."""
    violation = {"field": field, "description": description}
    return fcm_error(
        400,
        "INVALID_ARGUMENT",
        description,
        [{"@type": BAD_REQUEST, "fieldViolations": [violation]}],
    )


def _json(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value), status=status, content_type="application/json")


@dataclass
class _Failing:
    status: int
    remaining: int
    retry_after_s: int | None


class FcmEndpoint:
    """WSGI app speaking FCM's v1 send API, with inspection and control endpoints."""

    def __init__(self, keep: int = KEEP_MESSAGES) -> None:
        self._lock = threading.Lock()
        self._messages: deque[dict[str, Any]] = deque(maxlen=keep)
        self._seq = 0
        self._rejected = 0
        self._unregistered: set[str] = set()
        self._failing: dict[str, _Failing] = {}

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        return self._route(Request(environ))(environ, start_response)

    def _route(self, request: Request) -> Response:
        send = SEND_PATH.match(request.path)
        if send is not None and request.method == "POST":
            return self._send(send["project"], request)
        routes: dict[tuple[str, str], Callable[[Request], Response]] = {
            ("GET", MESSAGES_PATH): self._list,
            ("DELETE", MESSAGES_PATH): self._clear,
            ("POST", UNREGISTER_PATH): self._unregister,
            ("POST", FAIL_PATH): self._fail,
        }
        handler = routes.get((request.method, request.path))
        if handler is None:
            return fcm_error(404, "NOT_FOUND", f"{request.method} {request.path} not found", [])
        return handler(request)

    def _send(self, project: str, request: Request) -> Response:
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return fcm_error(
                401, "UNAUTHENTICATED", "Request is missing required authentication credential.", []
            )
        body = request.get_json(silent=True)
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, dict):
            return invalid_field("message", "The request must carry a 'message' object")
        invalid = _invalid_message(message)
        if invalid is not None:
            return invalid
        token: str = message.get("token") or message["fid"]
        if isinstance(body, dict) and body.get("validate_only") is True:
            return _json({"name": f"projects/{project}/messages/fake_message_id"})
        with self._lock:
            failing = self._failing.get(token)
            if failing is not None:
                failing.remaining -= 1
                if failing.remaining <= 0:
                    del self._failing[token]
                self._rejected += 1
                return target_failure(failing.status, failing.retry_after_s)
            if token in self._unregistered:
                self._rejected += 1
                return target_failure(404)
            self._seq += 1
            name = f"projects/{project}/messages/{self._seq}"
            self._messages.append({
                "seq": self._seq,
                "name": name,
                "token": token,
                "data": message.get("data", {}),
                "received_at": datetime.now(UTC).isoformat(),
            })  # fmt: skip
        log.debug("accepted %s for %s", name, token)
        return _json({"name": name})

    def _list(self, request: Request) -> Response:
        token = request.args.get("token")
        since_text = request.args.get("since", "0")
        if not since_text.isdigit():
            return invalid_field("since", "'since' must be a non-negative integer")
        since = int(since_text)
        with self._lock:
            messages = [
                record
                for record in self._messages
                if record["seq"] > since and (token is None or record["token"] == token)
            ]
            state = {"messages": messages, "last_seq": self._seq, "rejected": self._rejected}
            return _json(state)

    def _clear(self, request: Request) -> Response:
        with self._lock:
            self._messages.clear()
            self._unregistered.clear()
            self._failing.clear()
            self._rejected = 0
        return _json({"status": "ok"})

    def _unregister(self, request: Request) -> Response:
        body = request.get_json(silent=True)
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            return invalid_field("token", "'token' must be a non-empty string")
        with self._lock:
            self._unregistered.add(token)
        log.info("token %s unregistered", token)
        return _json({"status": "ok"})

    def _fail(self, request: Request) -> Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return invalid_field("body", "expected {token, status, times?, retry_after?}")
        token, status = body.get("token"), body.get("status")
        times, retry_after = body.get("times", 1), body.get("retry_after")
        if not isinstance(token, str) or not token:
            return invalid_field("token", "'token' must be a non-empty string")
        if status not in FAILURES:
            return invalid_field("status", f"'status' must be one of {sorted(FAILURES)}")
        if not _is_int(times) or times < 1:
            return invalid_field("times", "'times' must be an integer >= 1")
        if retry_after is not None and (not _is_int(retry_after) or retry_after < 0):
            return invalid_field("retry_after", "'retry_after' must be an integer >= 0")
        with self._lock:
            self._failing[token] = _Failing(status, times, retry_after)
        log.info("next %d sends to %s fail with %d", times, token, status)
        return _json({"status": "ok"})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _invalid_message(message: dict[str, Any]) -> Response | None:
    """FCM's 400 for a message it would refuse whatever its target, else None."""
    targets = [key for key in ("token", "fid", "topic", "condition") if key in message]
    if targets not in (["token"], ["fid"]):
        return invalid_field("message", "Exactly one of token or fid must be set (local endpoint)")
    target = targets[0]
    if not isinstance(message[target], str) or not message[target]:
        return invalid_field(f"message.{target}", f"'{target}' must be a non-empty string")
    data = message.get("data", {})
    if not isinstance(data, dict):
        return invalid_field("message.data", "'data' must be a map of strings")
    size = 0
    for index, (key, value) in enumerate(data.items()):
        if not isinstance(value, str):
            description = f"Invalid value at 'message.data[{index}].value' (TYPE_STRING), {value}"
            return invalid_field(f"message.data[{index}].value", description)
        size += len(key.encode()) + len(value.encode())
    if size > MAX_DATA_BYTES:
        return invalid_field("message.data", f"Message is too big ({size} > {MAX_DATA_BYTES})")
    return None


def clear(url: str) -> None:
    """Forget every message and mark of the endpoint at ``url``."""
    requests.delete(f"{url.rstrip('/')}{MESSAGES_PATH}", timeout=10).raise_for_status()


class _QuietHandler(WSGIRequestHandler):
    """A send is one request; thousands of access-log lines would drown the log."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def server(port: int, keep: int = KEEP_MESSAGES) -> BaseWSGIServer:
    """A threaded server for a new endpoint on 127.0.0.1 (``port`` 0: any free port)."""
    return make_server(HOST, port, FcmEndpoint(keep), threaded=True, request_handler=_QuietHandler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="FireGrid local FCM endpoint")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--keep", type=int, default=KEEP_MESSAGES, help="messages kept")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    endpoint = server(args.port, args.keep)
    log.info("FCM v1 send API on %s:%d", HOST, endpoint.server_port)
    endpoint.serve_forever()


if __name__ == "__main__":
    main()
