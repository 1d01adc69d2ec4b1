"""Every deployed FireGrid function (see firegrid.manifest). Entry points only:
parse the request or event, call a service, map the result."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import TypeVar

import flask
import functions_framework
from cloudevents.http import CloudEvent

from firegrid import api, console, wire
from firegrid.adapters import events
from firegrid.domain.changes import (
    entered_closing,
    group_created,
    group_finished,
    joined_pool,
    newly_reported,
)
from firegrid.manifest import trigger_pattern
from firegrid.services import cycles, devices, fanout, hosting, operator, pool
from firegrid.services.context import Context
from firegrid.services.results import Empty
from firegrid.transient import is_transient
from firegrid.wiring import context

logging.basicConfig(level=os.environ.get("FIREGRID_LOG_LEVEL", "INFO"))
log = logging.getLogger("firegrid.functions")
T = TypeVar("T")


def _speed_test_upload(ctx: Context, request: flask.Request) -> Empty:
    devices.admit_speed_test(ctx, api.SpeedTest.parse(wire.query_args(request)))
    request.get_data(cache=False)  # the upload itself is what the device times
    return Empty()


DEVICE_ROUTES: wire.Routes = {
    ("POST", "/authenticate"): wire.json_route(api.Authenticate.parse, devices.authenticate),
    ("POST", "/cycle-request"): wire.json_route(api.CycleRequest.parse, devices.request_cycle),
    ("GET", "/get-model"): wire.query_route(api.ModelDownload.parse, devices.get_model),
    ("GET", "/get-plan"): wire.query_route(api.PlanDownload.parse, devices.get_plan),
    ("GET", "/speed-test"): wire.query_route(api.SpeedTest.parse, devices.speed_test),
    ("POST", "/speed-test"): _speed_test_upload,
    ("POST", "/report"): wire.json_route(api.Report.parse, devices.report),
    ("POST", "/report-upload-url"): wire.json_route(api.Keyed.parse, devices.report_upload_url),
    ("POST", "/metrics"): wire.json_route(api.Metrics.parse, operator.post_metrics),
    ("POST", "/upload-stats"): wire.json_route(api.Metrics.parse, operator.post_metrics),
    ("POST", "/register-token"): wire.json_route(api.RegisterToken.parse, pool.register_token),
    ("POST", "/save-fcm-token"): wire.json_route(api.RegisterToken.parse, pool.register_token),
    ("POST", "/worker-status"): wire.json_route(api.WorkerStatus.parse, pool.worker_status),
    ("POST", "/update-worker-status"): wire.json_route(api.WorkerStatus.parse, pool.worker_status),
}

ADMIN_ROUTES: wire.Routes = {
    ("POST", "/host-training"): wire.json_route(api.HostTraining.parse, hosting.host_training),
    ("POST", "/hosting-upload-urls"): wire.json_route(
        api.HostingUploadUrls.parse, hosting.hosting_upload_urls
    ),
    ("POST", "/delete-process"): wire.json_route(api.DeleteProcess.parse, hosting.delete_process),
    ("GET", "/status"): wire.query_route(api.ProcessQuery.parse, operator.status),
    ("GET", "/retrieve-model"): wire.query_route(
        api.CheckpointQuery.parse, operator.retrieve_model
    ),
    ("GET", "/training-metrics"): wire.query_route(
        api.MetricsQuery.parse, operator.training_metrics
    ),
    ("GET", "/processes"): wire.query_route(api.ProcessListing.parse, operator.processes),
    ("GET", "/cycles"): wire.query_route(api.CycleHistoryQuery.parse, operator.cycle_history),
    ("GET", "/round-stats"): wire.query_route(api.RoundStatsQuery.parse, operator.round_summaries),
    ("POST", "/tick"): lambda ctx, request: cycles.tick(ctx),
    ("POST", "/push"): wire.json_route(api.Push.parse, pool.operator_push),
}


def _console_asset(ctx: Context, request: flask.Request) -> console.Asset:
    return console.asset(wire.route_path(request))


CONSOLE_ROUTES: wire.Routes = {("GET", path): _console_asset for path in console.FILES}
"""The operator console's page and assets: served without credentials (they hold none;
every data call the page makes carries them)."""


def _admin_guard(ctx: Context, request: flask.Request) -> None:
    wire.require_admin(request, ctx.settings)


@functions_framework.http
def model_centric(request: flask.Request) -> flask.Response:
    """The device API; browsers call it from their app's origin (CORS)."""
    return wire.dispatch(request, DEVICE_ROUTES, context, cors=True)


@functions_framework.http
def admin(request: flask.Request) -> flask.Response:
    path = wire.route_path(request)
    if path in console.FILES:
        if path == console.PAGE and request.path.endswith("/"):
            # The page's links are relative to ``.../console``: from ``.../console/`` they
            # would miss. Relative, so it holds under any prefix or proxy.
            return flask.Response(status=308, headers={"Location": "../console"})
        return wire.dispatch(request, CONSOLE_ROUTES, context)
    return wire.dispatch(request, ADMIN_ROUTES, context, guard=_admin_guard)


@functions_framework.http
def tick(request: flask.Request) -> flask.Response:
    """Cloud Scheduler's target (OIDC-authenticated in production)."""
    return wire.dispatch(
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


@functions_framework.cloud_event
def on_group_written(event: CloudEvent) -> None:
    """A fanned-out closing's group: a new one is aggregated into its partial; one done
    calls the closing, which combines once every group is (both idempotent)."""
    with _trigger("on_group_written"):
        change = _change(event, "on_group_written", events.group_codec)
        process_id, seq = change.params["process"], int(change.params["cycle"])
        if group_created(change.before, change.after):
            fanout.aggregate_group(context(), process_id, seq, int(change.params["group"]))
        elif group_finished(change.before, change.after):
            cycles.close_cycle(context(), process_id, seq)
