"""HTTP glue shared by the HTTP functions: routing tables, JSON, errors.

Errors are translated once, here: a FireGridError becomes its status and
``{"error", "code"}``; anything else is logged and answered with a bare 500.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import flask

from firegrid.domain.errors import (
    BadRequest,
    FireGridError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from firegrid.domain.fields import check_storable
from firegrid.domain.model import Redirect
from firegrid.services.context import Context
from firegrid.settings import Settings

log = logging.getLogger(__name__)

Reply = dict[str, Any] | list[Any] | bytes | Redirect | flask.Response | tuple[dict[str, Any], int]
Handler = Callable[[Context, flask.Request], Reply]
Routes = Mapping[tuple[str, str], Handler]


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_body(request: flask.Request) -> dict[str, Any]:
    """The body as a JSON object: strict JSON (no NaN or Infinity), nested at most so deep."""
    try:
        body = json.loads(request.get_data(cache=True) or b"", parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The request body is not valid JSON", "bad_json") from None
    except RecursionError:
        raise BadRequest("The request body is nested too deeply", "bad_json") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object", "bad_json")
    check_storable(body, "The request body")
    return body


def query_args(request: flask.Request) -> dict[str, str]:
    return {key: value for key, value in request.args.items()}


def binary(data: bytes) -> flask.Response:
    response = flask.Response(data, mimetype="application/octet-stream")
    response.set_etag(hashlib.sha256(data).hexdigest())  # quoted, as HTTP defines ETags
    return response


def _to_response(reply: Reply) -> flask.Response:
    if isinstance(reply, flask.Response):
        return reply
    if isinstance(reply, bytes):
        return binary(reply)
    if isinstance(reply, Redirect):
        response = flask.Response(status=307, mimetype="application/json")
        response.set_data(b"{}")
        response.headers["Location"] = reply.url
        return response
    status = 200
    if isinstance(reply, tuple):
        reply, status = reply
    response = flask.jsonify(reply)
    response.status_code = status
    return response


def error_response(error: FireGridError) -> flask.Response:
    response = flask.jsonify(error.to_wire())
    response.status_code = error.status
    return response


def require_admin(request: flask.Request, settings: Settings) -> None:
    """The admin API never fails open: a bearer token it knows (the local stack's), or
    IAM in front of it (the platform checked the caller's identity token); with neither
    configured, every call is refused."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if settings.admin_token is not None:
        expected = settings.admin_token.encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected):
            raise Unauthorized("A valid admin bearer token is required", "admin_auth_required")
        return
    if settings.admin_iam:
        if scheme.lower() != "bearer" or not token:  # IAM passes the verified caller's token on
            raise Unauthorized("An identity token is required", "admin_auth_required")
        return
    raise Unauthorized(
        "The admin API has no credentials configured: set FIREGRID_ADMIN_TOKEN, or deploy "
        "it behind IAM with FIREGRID_ADMIN_AUTH=iam",
        "admin_auth_unconfigured",
    )


def dispatch(
    request: flask.Request,
    routes: Routes,
    context: Callable[[], Context],
    guard: Callable[[Context, flask.Request], None] | None = None,
) -> flask.Response:
    path = "/" + request.path.strip("/")
    try:
        handler = routes.get((request.method, path))
        if handler is None:
            allowed = sorted({method for method, route_path in routes if route_path == path})
            if allowed:
                refused = error_response(
                    MethodNotAllowed(
                        f"{request.method} is not allowed on {path}", "method_not_allowed"
                    )
                )
                refused.headers["Allow"] = ", ".join(allowed)
                return refused
            raise NotFound(f"No such endpoint: {path}", "not_found")
        ctx = context()
        if guard is not None:
            guard(ctx, request)
        length = request.content_length
        if length is not None and length > ctx.settings.max_body_bytes:
            raise PayloadTooLarge("The request body is too large", "too_large")
        return _to_response(handler(ctx, request))
    except FireGridError as error:
        return error_response(error)

    except Exception:
        log.exception("unhandled error on %s %s", request.method, path)
        return error_response(FireGridError("Internal error", "internal"))
