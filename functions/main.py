"""Every deployed FireGrid function (see firegrid.manifest). Entry points only:
parse the request or event, call a service, map the result."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import flask
import functions_framework
from cloudevents.http import CloudEvent

from firegrid import web
from firegrid.adapters.events import decode_change
from firegrid.services import cycles, devices, hosting, operator, pool
from firegrid.services.context import Context
from firegrid.wiring import context

logging.basicConfig(level=os.environ.get("FIREGRID_LOG_LEVEL", "INFO"))
log = logging.getLogger("firegrid.functions")


def _speed_test_upload(ctx: Context, request: flask.Request) -> web.Reply:
    devices.admit_speed_test(ctx, web.query_args(request))
    request.get_data(cache=False)  # the upload itself is what the device times
    return {}


def _json(service: Callable[[Context, dict[str, Any]], web.Reply]) -> web.Handler:
    return lambda ctx, request: service(ctx, web.json_body(request))


def _query(service: Callable[[Context, dict[str, str]], web.Reply]) -> web.Handler:
    return lambda ctx, request: service(ctx, web.query_args(request))


DEVICE_ROUTES: web.Routes = {
    ("POST", "/authenticate"): _json(devices.authenticate),
    ("POST", "/cycle-request"): _json(devices.request_cycle),
    ("GET", "/get-model"): _query(devices.get_model),
    ("GET", "/get-plan"): _query(devices.get_plan),
    ("GET", "/speed-test"): _query(devices.speed_test),
    ("POST", "/speed-test"): _speed_test_upload,
    ("POST", "/report"): _json(devices.report),
    ("POST", "/report-upload-url"): _json(devices.report_upload_url),
    ("POST", "/metrics"): _json(operator.post_metrics),
    ("POST", "/upload-stats"): _json(operator.post_metrics),
    ("POST", "/register-token"): _json(pool.register_token),
    ("POST", "/save-fcm-token"): _json(pool.register_token),
    ("POST", "/worker-status"): _json(pool.worker_status),
    ("POST", "/update-worker-status"): _json(pool.worker_status),
}


def _training_metrics(ctx: Context, request: flask.Request) -> web.Reply:
    rows = operator.training_metrics(ctx, web.query_args(request))
    if request.args.get("format") == "csv":
        return flask.Response(operator.metrics_csv(rows), mimetype="text/csv")
    return {"metrics": rows}


ADMIN_ROUTES: web.Routes = {
    ("POST", "/host-training"): lambda ctx, r: (
        {"status": "success", "process_id": hosting.host_training(ctx, web.json_body(r))},
        201,
    ),
    ("GET", "/status"): _query(operator.status),
    ("GET", "/retrieve-model"): _query(operator.retrieve_model),
    ("GET", "/training-metrics"): _training_metrics,
    ("POST", "/tick"): lambda ctx, r: cycles.tick(ctx).to_wire(),
    ("POST", "/push"): _json(pool.operator_push),
}


def _admin_guard(ctx: Context, request: flask.Request) -> None:
    web.require_admin(request, ctx.settings)


@functions_framework.http
def model_centric(request: flask.Request) -> flask.Response:
    return web.dispatch(request, DEVICE_ROUTES, context)


@functions_framework.http
def admin(request: flask.Request) -> flask.Response:
    return web.dispatch(request, ADMIN_ROUTES, context, guard=_admin_guard)


@functions_framework.http
def tick(request: flask.Request) -> flask.Response:
    """Cloud Scheduler's target (OIDC-authenticated in production)."""
    return web.dispatch(
        request, {("POST", "/"): ADMIN_ROUTES[("POST", "/tick")]}, context, guard=_admin_guard
    )


def _doc_ids(path: str) -> dict[str, str]:
    """``processes/p/cycles/3/assignments/w`` -> {"processes": "p", "cycles": "3", ...}."""
    parts = path.split("/")
    return dict(zip(parts[0::2], parts[1::2], strict=True))


@functions_framework.cloud_event
def on_assignment_written(event: CloudEvent) -> None:
    """A newly reported diff may fill the cycle: close it then."""
    change = decode_change(event["subject"], event.data)
    reported_now = bool(change.after and change.after.get("reported")) and not (
        change.before and change.before.get("reported")
    )
    if not reported_now:
        return
    ids = _doc_ids(change.path)
    cycles.on_report(context(), ids["processes"], int(ids["cycles"]))


@functions_framework.cloud_event
def on_worker_written(event: CloudEvent) -> None:
    """A worker that registered a token or became available may complete the pool."""
    change = decode_change(event["subject"], event.data)
    after, before = change.after or {}, change.before or {}
    new_token = bool(after.get("fcm_token")) and after.get("fcm_token") != before.get("fcm_token")
    confirmed = bool(after.get("available")) and (
        not before.get("available") or after.get("available_until") != before.get("available_until")
    )
    if (new_token or confirmed) and after.get("process_id"):
        pool.invite(context(), str(after["process_id"]))


@functions_framework.cloud_event
def on_cycle_written(event: CloudEvent) -> None:
    """A cycle entering ``closing`` is aggregated (idempotent under redelivery)."""
    change = decode_change(event["subject"], event.data)
    entered_closing = bool(change.after and change.after.get("status") == "closing") and not (
        change.before and change.before.get("status") == "closing"
    )
    if entered_closing:
        ids = _doc_ids(change.path)
        cycles.close_cycle(context(), ids["processes"], int(ids["cycles"]))
