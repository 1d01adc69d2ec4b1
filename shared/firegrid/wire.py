"""The HTTP edge: requests in, responses out, errors mapped, in one module.

Entry points route a method and path to a handler that parses the body or query
string into a typed request (``firegrid.api``) and calls a use case; whatever it
answers, a domain result or an error, is rendered here and only here. A
``FireGridError`` becomes its status and ``{"error", "code"}``; anything else is
logged and answered with a bare 500, never a traceback.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import hmac
import io
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import flask

from firegrid.console import CONTENT_SECURITY_POLICY, Asset
from firegrid.domain.acceptance import Rejection
from firegrid.domain.aggregation import AggregationFailed
from firegrid.domain.cycle import Cycle
from firegrid.domain.errors import (
    BadRequest,
    Conflict,
    FireGridError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from firegrid.domain.fields import check_storable
from firegrid.domain.model import Process
from firegrid.services.context import Context
from firegrid.services.cycles import TickReport
from firegrid.services.results import (
    Authenticated,
    CycleHistory,
    Deleted,
    Done,
    Empty,
    Hosted,
    HostingUploads,
    MetricsTable,
    Offer,
    Processes,
    ProcessReport,
    PushSent,
    RoundsReport,
    SignedUrl,
    Stored,
    UploadGrant,
)
from firegrid.settings import Settings

log = logging.getLogger(__name__)

R = TypeVar("R")
Handler = Callable[[Context, flask.Request], Any]
Routes = Mapping[tuple[str, str], Handler]

STATUS: Mapping[type[FireGridError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    NotFound: 404,
    MethodNotAllowed: 405,
    Conflict: 409,
    PayloadTooLarge: 413,
    AggregationFailed: 500,
    Unavailable: 503,
}
"""Every error type's HTTP status (a subclass takes its nearest listed ancestor's)."""
LEAF_COLUMNS = ("client_id", "round_number", "hierarchy", "num_samples", "set", "accuracy", "loss")


# -- requests -------------------------------------------------------------------------


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


def json_route(
    parse: Callable[[Mapping[str, Any]], R], service: Callable[[Context, R], Any]
) -> Handler:
    """A handler that parses the JSON body into a typed request for ``service``."""
    return lambda ctx, request: service(ctx, parse(json_body(request)))


def query_route(
    parse: Callable[[Mapping[str, Any]], R], service: Callable[[Context, R], Any]
) -> Handler:
    """A handler that parses the query string into a typed request for ``service``."""
    return lambda ctx, request: service(ctx, parse(query_args(request)))


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


# -- responses ------------------------------------------------------------------------


def _json(body: Any, status: int = 200) -> flask.Response:
    response = flask.jsonify(body)
    response.status_code = status
    return response


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


@functools.singledispatch
def render(result: Any) -> flask.Response:
    """The HTTP response of a use case's result."""
    raise TypeError(f"no wire form for {type(result).__name__}")


@render.register
def _(result: bytes) -> flask.Response:
    response = flask.Response(result, mimetype="application/octet-stream")
    response.set_etag(hashlib.sha256(result).hexdigest())  # quoted, as HTTP defines ETags
    return response


@render.register
def _(result: Asset) -> flask.Response:
    response = flask.Response(result.body, content_type=result.content_type)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"
    return response


@render.register
def _(result: SignedUrl) -> flask.Response:
    response = flask.Response(b"{}", status=307, mimetype="application/json")
    response.headers["Location"] = result.url
    return response


@render.register
def _(result: Done) -> flask.Response:
    return _json({"status": "success"})


@render.register
def _(result: Empty) -> flask.Response:
    return _json({})


@render.register
def _(result: Authenticated) -> flask.Response:
    return _json(
        {
            "status": "success",
            "worker_id": result.worker_id,
            "requires_speed_test": result.requires_speed_test,
        }
    )


@render.register
def _(result: Offer) -> flask.Response:
    process, cycle = result.process, result.cycle
    return _json(
        {
            "status": "accepted",
            "request_key": result.request_key,
            "cycle_id": cycle.seq if result.checkpoint is None else result.checkpoint,
            "model": process.name,
            "version": process.version,
            "model_id": process.id,
            "plans": dict(process.plans),
            "protocols": {},
            "client_config": dict(process.client_config),
            "deadline": _iso(result.deadline),
        }
        | ({} if result.checkpoint is None else {"checkpoint": result.checkpoint, "mode": "async"})
    )


def rejection_body(result: Rejection) -> dict[str, Any]:
    """``timeout`` is absent only when training is over (PyGrid's convention)."""
    body: dict[str, Any] = {"status": "rejected", "reason": result.reason.value}
    if result.timeout is not None:
        body["timeout"] = result.timeout
    return body


@render.register
def _(result: Rejection) -> flask.Response:
    return _json(rejection_body(result))


def _upload(grant: UploadGrant) -> dict[str, Any]:
    return {
        "upload_url": grant.url,
        "expires_at": grant.expires_at.isoformat(),
        "method": "PUT",
        "content_type": "application/octet-stream",
        "headers": dict(grant.headers),
        "max_bytes": grant.max_bytes,
    }


@render.register
def _(result: UploadGrant) -> flask.Response:
    return _json(_upload(result))


@render.register
def _(result: HostingUploads) -> flask.Response:
    plans = {name: _upload(grant) for name, grant in result.plans.items()}
    return _json({"status": "success", "model": _upload(result.model), "plans": plans})


@render.register
def _(result: Stored) -> flask.Response:
    return _json({"status": "success", "stored": result.count})


@render.register
def _(result: Hosted) -> flask.Response:
    return _json({"status": "success", "process_id": result.process_id}, status=201)


@render.register
def _(result: Deleted) -> flask.Response:
    return _json(
        {
            "status": "success",
            "process_id": result.process_id,
            "documents": dict(result.documents),
            "objects": result.objects,
        }
    )


def _buffering(process: Process, result: ProcessReport) -> dict[str, Any] | None:
    """Async: the open buffer's fill, the places taken and the last aggregation's staleness."""
    buffering, config = result.buffering, process.server_config
    if buffering is None:
        return None
    return {
        "buffer_size": config.buffer_size,
        "buffered": result.reported,
        "places_taken": buffering.places_taken,
        "max_concurrency": config.max_concurrency,
        "latest_checkpoint": process.latest_checkpoint,
        "mean_staleness": buffering.mean_staleness,
    }


@render.register
def _(result: ProcessReport) -> flask.Response:
    process, cycle, pool = result.process, result.cycle, result.pool
    current = None
    if cycle is not None:
        current = {
            "seq": cycle.seq,
            "status": cycle.status.value,
            "epoch": cycle.epoch,
            "opened_at": _iso(cycle.opened_at),
            "deadline": _iso(cycle.deadline),
            "seconds_left": result.seconds_left,
            "assigned": result.assigned,
            "reported": result.reported,
            "skipped": dict(cycle.skipped),
            "last_error": cycle.last_error,
        }
    previous = None
    if result.previous is not None:
        summary = result.previous.summary
        previous = {
            "seq": result.previous.seq,
            "status": result.previous.status.value,
            "num_diffs": summary.num_diffs if summary else None,
            "total_samples": summary.total_samples if summary else None,
            "epsilon": summary.epsilon if summary else None,
            "next_clip_norm": summary.next_clip_norm if summary else None,
            "skipped": dict(result.previous.skipped),
        }
    return _json(
        {
            "process_id": process.id,
            "name": process.name,
            "version": process.version,
            "status": process.status.value,
            "current_cycle": current,
            "previous_cycle": previous,
            "latest_checkpoint": process.latest_checkpoint,
            "checkpoints": list(range(1, process.latest_checkpoint + 1)),
            "pool": {
                "registered": pool.registered,
                "workers": pool.workers,
                "available": pool.available,
                "slow": pool.slow,
                "invited": pool.invited,
                "assigned": pool.assigned,
                "last_sends": [{k: _iso(v) for k, v in s.items()} for s in pool.last_sends],
            },
            "privacy": _privacy(process, result),
            "mode": process.server_config.mode,
            "buffering": _buffering(process, result),
            "server_config": process.server_config.to_dict() | {"authentication": "(hidden)"},
        }
    )


def _privacy(process: Process, result: ProcessReport) -> dict[str, Any] | None:
    """``dp``: the privacy spent so far (epsilon None before the first closing) and the
    clip norm the next closing uses (moving with ``target_quantile``)."""
    dp = process.server_config.dp
    if dp is None:
        return None
    return {
        "epsilon": result.epsilon,
        "delta": dp.delta,
        "noise_multiplier": dp.noise_multiplier,
        "clip_norm": result.clip_norm,
        "max_epsilon": dp.max_epsilon,
        "target_quantile": dp.target_quantile,
    }


def _process_line(process: Process) -> dict[str, Any]:
    config = process.server_config
    return {
        "process_id": process.id,
        "name": process.name,
        "version": process.version,
        "status": process.status.value,
        "current_cycle": process.current_cycle,
        "latest_checkpoint": process.latest_checkpoint,
        "aggregation": config.aggregation.value,
        "mode": config.mode,
        "created_at": _iso(process.created_at),
    }


@render.register
def _(result: Processes) -> flask.Response:
    return _json({"processes": [_process_line(process) for process in result.processes]})


def _history_line(cycle: Cycle, process: Process) -> dict[str, Any]:
    summary = cycle.summary
    resets, extensions = cycle.expiries(process.server_config)
    return {
        "seq": cycle.seq,
        "status": cycle.status.value,
        "outcome": cycle.outcome,
        "epoch": cycle.epoch,
        "opened_at": _iso(cycle.opened_at),
        "closed_at": _iso(summary.closed_at) if summary else None,
        "duration_s": cycle.duration_s(),
        "num_diffs": summary.num_diffs if summary else None,
        "total_samples": summary.total_samples if summary else None,
        "next_clip_norm": summary.next_clip_norm if summary else None,
        "resets": resets,
        "extensions": extensions,
        "skipped": dict(cycle.skipped),
        "aggregation_runs": cycle.aggregation_runs,
    }


@render.register
def _(result: CycleHistory) -> flask.Response:
    return _json({"cycles": [_history_line(cycle, result.process) for cycle in result.cycles]})


@render.register
def _(result: RoundsReport) -> flask.Response:
    return _json(
        {
            "rounds": [dataclasses.asdict(stat) for stat in result.stats],
            "through": result.through,
            "completed": result.completed,
            "more": result.through < result.completed,
        }
    )


def metrics_csv(rows: Any) -> str:
    """LEAF's metrics layout: one row per client and round."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(LEAF_COLUMNS)
    for row in rows:
        writer.writerow(
            [
                row["client_id"],
                row["cycle_id"],
                "",
                row["num_samples"],
                row.get("set", "test"),
                row["accuracy"],
                row.get("loss", ""),
            ]
        )
    return out.getvalue()


@render.register
def _(result: MetricsTable) -> flask.Response:
    if result.csv:
        return flask.Response(metrics_csv(result.rows), mimetype="text/csv")
    return _json({"metrics": list(result.rows)})


@render.register
def _(result: PushSent) -> flask.Response:
    return _json({"status": "success", "push": {k: _iso(v) for k, v in result.record.items()}})


@render.register
def _(result: TickReport) -> flask.Response:
    return _json(
        {
            "closed": result.closed,
            "reset": result.reset,
            "extended": result.extended,
            "redriven": result.redriven,
            "invited": result.invited,
            "freed": result.freed,
            "failed": result.failed,
        }
    )


# -- errors ---------------------------------------------------------------------------


def status_of(error: FireGridError) -> int:
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


def error_response(error: FireGridError) -> flask.Response:
    return _json({"error": error.message, "code": error.code}, status=status_of(error))


# -- dispatch -------------------------------------------------------------------------


def route_path(request: flask.Request) -> str:
    """The path the routes are keyed by: one leading slash, none trailing."""
    return "/" + request.path.strip("/")


CORS_MAX_AGE_S = 3600


def dispatch(
    request: flask.Request,
    routes: Routes,
    context: Callable[[], Context],
    guard: Callable[[Context, flask.Request], None] | None = None,
    *,
    cors: bool = False,
) -> flask.Response:
    """The route's answer; with ``cors``, readable by pages of any origin (browser devices).

    ``*`` without credentials is safe here: the device API authenticates by the worker id
    and request key a call carries, never by cookies, so another origin's page learns
    nothing it did not send.
    """
    path = route_path(request)
    if cors and request.method == "OPTIONS":
        response = _preflight(path, routes)
    else:
        response = _answer(request, path, routes, context, guard)
    if cors:
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Expose-Headers"] = "ETag"
    return response


def _methods(routes: Routes, path: str) -> list[str]:
    return sorted({method for method, route_path in routes if route_path == path})


def _preflight(path: str, routes: Routes) -> flask.Response:
    """A CORS preflight: the path's methods and the one header a JSON call needs."""
    allowed = _methods(routes, path)
    if not allowed:
        return error_response(NotFound(f"No such endpoint: {path}", "not_found"))
    response = flask.Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = ", ".join(allowed)
    response.headers["Access-Control-Allow-Headers"] = "Content-Type"
    response.headers["Access-Control-Max-Age"] = str(CORS_MAX_AGE_S)
    return response


def _answer(
    request: flask.Request,
    path: str,
    routes: Routes,
    context: Callable[[], Context],
    guard: Callable[[Context, flask.Request], None] | None,
) -> flask.Response:
    try:
        handler = routes.get((request.method, path))
        if handler is None:
            allowed = _methods(routes, path)
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
        return render(handler(ctx, request))
    except FireGridError as error:
        return error_response(error)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, path)
        return error_response(FireGridError("Internal error", "internal"))
