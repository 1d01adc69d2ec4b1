"""Trigger router: turns the Firestore emulator's trigger deliveries into the
CloudEvents production Eventarc sends, and posts each to its function.

The emulator posts every trigger to one host as ``/functions/projects/P/
triggers/ID`` with a binary-mode CloudEvent whose body is *base64 text* of
``DocumentEventData`` and whose ``ce-source`` reads ``projects/projects/...``.
Production sends raw protobuf and ``//firestore.googleapis.com/projects/P/
databases/(default)``. The router fixes both and forwards to
``<functions-url>/<ID>`` (ID is the function's deployed name) synchronously,
answering with the function's status, so a failing function shows up here.

``GET /_router/status`` reports in-flight and recent forwards (and the faults
injected), so tests and ``wipe`` can wait until the deliveries a write caused have
been handled.

Run: ``python -m firegrid.local.router --port P --functions-url URL --project ID
[--faults duplicate=P,drop=P,delay=S,reorder=P --fault-seed N]``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import functools
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import requests
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from firegrid.domain.keys import redact
from firegrid.local.faults import HOLD_MAX_S, Faults, Injector

PROTOBUF = "application/protobuf"
JSON = "application/json"
TRIGGER_PATH = re.compile(r"^/functions/projects/(?P<project>[^/]+)/triggers/(?P<trigger>[^/]+)$")
STATUS_PATH = "/_router/status"
FORWARD_TIMEOUT = (5.0, 540.0)
"""Connect and read timeouts; event functions may run for up to 9 minutes."""

Post = Callable[[str, dict[str, str], bytes], tuple[int, bytes, str]]
"""Send ``body`` with ``headers`` to ``url``; return status, body and content type."""

log = logging.getLogger("firegrid.router")


@dataclass(frozen=True, kw_only=True)
class Forward:
    trigger: str
    """Trigger id, which is the function's deployed name."""
    subject: str
    """``ce-subject``, e.g. ``documents/processes/p/cycles/1``, worker ids shortened."""
    event_id: str
    status: int
    """The function's HTTP status; 502 when it could not be reached."""
    duration_s: float
    at: float
    """Unix time the forward finished."""


def decode_body(body: bytes, content_type: str) -> tuple[bytes, str]:
    """The event data as production would send it, and its content type.

    Raw protobuf is told apart from base64 text by its first byte: a
    ``DocumentEventData`` starts with the tag of field 1-3 (0x0a, 0x12, 0x1a),
    none of which is a base64 character.
    """
    stripped = body.strip()
    if stripped.startswith(b"{") or content_type.startswith(JSON):
        return body, JSON
    try:
        return base64.b64decode(stripped, validate=True), PROTOBUF
    except (binascii.Error, ValueError):
        return body, PROTOBUF


def production_source(project_id: str, database: str) -> str:
    return f"//firestore.googleapis.com/projects/{project_id}/databases/{database}"


def _post_with_requests() -> Post:
    local = threading.local()

    def post(url: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes, str]:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        response = session.post(url, headers=headers, data=body, timeout=FORWARD_TIMEOUT)
        return response.status_code, response.content, response.headers.get("Content-Type", "")

    return post


def redact_path(path: str) -> str:
    """A document path as logs may show it: worker ids (credentials) shortened."""
    parts = path.split("/")
    for index in range(1, len(parts)):
        if parts[index - 1] in ("workers", "assignments", "invitations"):
            parts[index] = redact(parts[index])
    return "/".join(parts)


class TriggerRouter:
    """WSGI app that forwards emulator trigger deliveries to the functions.

    Without faults each delivery is forwarded synchronously and answered with the
    function's status. With faults (``firegrid.local.faults``) a delivery is accepted at
    once and forwarded later, as Eventarc does: dropped, duplicated, delayed or held
    back behind the next one, as the injector draws."""

    def __init__(
        self,
        functions_url: str,
        project_id: str,
        post: Post | None = None,
        injector: Injector | None = None,
    ) -> None:
        self.functions_url = functions_url.rstrip("/")
        self.project_id = project_id
        self._post = post or _post_with_requests()
        self._injector = injector
        self._lock = threading.Lock()
        self._in_flight = 0
        self._total = 0
        self._recent: deque[Forward] = deque(maxlen=500)
        self._held: list[Callable[[], None]] = []

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        request = Request(environ)
        if request.method == "GET" and request.path == STATUS_PATH:
            response = self._status()
        else:
            match = TRIGGER_PATH.match(request.path)
            if request.method != "POST" or match is None:
                response = Response("not a trigger delivery\n", status=404)
            elif self._injector is not None:
                response = self._deliver_with_faults(self._injector, match["trigger"], request)
            else:
                with self._lock:
                    self._in_flight += 1
                response = self._send(match["trigger"], *self._production_event(request))
        return response(environ, start_response)

    def _production_event(self, request: Request) -> tuple[dict[str, str], bytes]:
        data, content_type = decode_body(request.get_data(), request.content_type or "")
        headers = {
            key.lower(): value
            for key, value in request.headers.items()
            if key.lower().startswith("ce-")
        }
        database = headers.get("ce-database", "(default)")
        project_id = headers.get("ce-project", self.project_id)
        headers["ce-source"] = production_source(project_id, database)
        headers["Content-Type"] = content_type
        return headers, data

    def _send(self, trigger: str, headers: dict[str, str], data: bytes) -> Response:
        """Post one delivery (already counted in flight) to its function."""
        started = time.monotonic()
        try:
            status, body, body_type = self._post(f"{self.functions_url}/{trigger}", headers, data)
        except requests.RequestException as error:
            status, body, body_type = 502, f"function unreachable: {error}\n".encode(), "text/plain"
        forward = Forward(
            trigger=trigger,
            subject=redact_path(headers.get("ce-subject", "")),
            event_id=headers.get("ce-id", ""),
            status=status,
            duration_s=time.monotonic() - started,
            at=time.time(),
        )
        with self._lock:
            self._in_flight -= 1
            self._total += 1
            self._recent.append(forward)
        log.info(
            "%s %s -> %d (%.0f ms)", trigger, forward.subject, status, forward.duration_s * 1000
        )
        return Response(body, status=status, content_type=body_type or None)

    def _deliver_with_faults(self, injector: Injector, trigger: str, request: Request) -> Response:
        headers, data = self._production_event(request)
        fate = injector.fate()
        for index, delay in enumerate(fate.copies):
            with self._lock:
                self._in_flight += 1
            send = functools.partial(self._send_then_release, trigger, headers, data)
            if fate.held and index == 0:
                self._hold(send, delay)
            else:
                _later(delay, send)
        if not fate.copies:
            log.info("%s %s dropped (fault)", trigger, redact_path(headers.get("ce-subject", "")))
        return Response("accepted\n", status=200)

    def _hold(self, send: Callable[[], None], delay: float) -> None:
        """Send ``send`` once a later delivery has gone out (at most ``HOLD_MAX_S`` on)."""
        once = _Once(send)
        with self._lock:
            self._held.append(once)
        _later(delay + HOLD_MAX_S, once)

    def _send_then_release(self, trigger: str, headers: dict[str, str], data: bytes) -> None:
        self._send(trigger, headers, data)
        with self._lock:
            held, self._held = self._held, []
        for send in held:
            _later(0.0, send)

    def _status(self) -> Response:
        with self._lock:
            state: dict[str, Any] = {
                "in_flight": self._in_flight,
                "total": self._total,
                "recent": [asdict(forward) for forward in self._recent],
            }
        if self._injector is not None:
            state["faults"] = {
                "spec": str(self._injector.faults),
                "injected": dict(self._injector.injected),
            }
        return Response(json.dumps(state), content_type=JSON)


class _Once:
    """A callable that runs its function the first time it is called, never again."""

    def __init__(self, function: Callable[[], None]) -> None:
        self._function = function
        self._lock = threading.Lock()
        self._done = False

    def __call__(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._function()


def _later(delay_s: float, function: Callable[[], None]) -> None:
    timer = threading.Timer(delay_s, function)
    timer.daemon = True
    timer.start()


class _QuietHandler(WSGIRequestHandler):
    """The router logs one line per forward itself; skip werkzeug's access log."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="FireGrid local trigger router")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--functions-url", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--faults", default="", help="duplicate=P,drop=P,delay=SECONDS,reorder=P")
    parser.add_argument("--fault-seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        faults = Faults.parse(args.faults)
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    injector = Injector(faults, args.fault_seed) if faults else None
    app = TriggerRouter(args.functions_url, args.project, injector=injector)
    server = make_server("127.0.0.1", args.port, app, threaded=True, request_handler=_QuietHandler)
    log.info("routing triggers on 127.0.0.1:%d to %s", args.port, args.functions_url)
    server.serve_forever()


if __name__ == "__main__":
    main()
