"""Every deployed FireGrid function (see firegrid.manifest). Entry points only:
parse the request or event, call a service, map the result."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import flask
import functions_framework
from cloudevents.http import CloudEvent

from firegrid import web
from firegrid.adapters import events
from firegrid.adapters.transient import is_transient
from firegrid.domain.changes import entered_closing, joined_pool, newly_reported
from firegrid.manifest import trigger_pattern
from firegrid.services import cycles, devices, hosting, operator, pool
from firegrid.services.context import Context
from firegrid.wiring import context

logging.basicConfig(level=os.environ.get("FIREGRID_LOG_LEVEL", "INFO"))
log = logging.getLogger("firegrid.functions")
T = TypeVar("T")


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


@contextlib.contextmanager
def _trigger(name: str) -> Iterator[None]:
    """Transient failures are raised (the platform redelivers the event); permanent ones
    are logged and the event dropped, since a retry would only fail again."""
    try:
        yield
    except Exception as error:
        if is_transient(error):
            log.warning("%s: transient failure, left to the platform's retry: %r", name, error)
            raise
        log.exception("%s: permanent failure, event dropped", name)


def _change(event: CloudEvent, target: str, codec: events.Codec[T]) -> events.Change[T]:
    return events.decode(event["subject"], event.data, trigger_pattern(target), codec)


@functions_framework.cloud_event
def on_assignment_written(event: CloudEvent) -> None:
    """A newly reported diff may fill the cycle: mark it closing then."""
    with _trigger("on_assignment_written"):
        change = _change(event, "on_assignment_written", events.assignment_codec)
        if newly_reported(change.before, change.after):
            cycles.on_report(context(), change.params["process"], int(change.params["cycle"]))


@functions_framework.cloud_event
def on_worker_written(event: CloudEvent) -> None:
    """A worker that registered a token or became available may complete the pool."""
    with _trigger("on_worker_written"):
        change = _change(event, "on_worker_written", events.worker_codec)
        if change.after is not None and joined_pool(change.before, change.after):
            pool.invite(context(), change.after.process_id)


@functions_framework.cloud_event
def on_cycle_written(event: CloudEvent) -> None:
    """A cycle entering ``closing`` is aggregated: the one closing path (idempotent under
    redelivery; the tick re-drives a closing that no trigger took up)."""
    with _trigger("on_cycle_written"):
        change = _change(event, "on_cycle_written", events.cycle_codec)
        if entered_closing(change.before, change.after):
            cycles.close_cycle(context(), change.params["process"], int(change.params["cycle"]))
