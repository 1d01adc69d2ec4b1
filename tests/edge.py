"""The HTTP edge for service tests: a raw body parsed as the entry points parse it, the
use case called, its answer rendered as the wire renders it (JSON as Python values)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flask

from firegrid import api, wire
from firegrid.services import devices, hosting, operator, pool
from firegrid.services.context import Context

PARSERS: dict[Callable[..., Any], Callable[[Mapping[str, Any]], Any]] = {
    devices.authenticate: api.Authenticate.parse,
    devices.request_cycle: api.CycleRequest.parse,
    devices.get_model: api.ModelDownload.parse,
    devices.get_plan: api.PlanDownload.parse,
    devices.report: api.Report.parse,
    devices.report_upload_url: api.Keyed.parse,
    devices.speed_test: api.SpeedTest.parse,
    pool.register_token: api.RegisterToken.parse,
    pool.worker_status: api.WorkerStatus.parse,
    pool.operator_push: api.Push.parse,
    operator.post_metrics: api.Metrics.parse,
    operator.status: api.ProcessQuery.parse,
    operator.retrieve_model: api.CheckpointQuery.parse,
    operator.training_metrics: api.MetricsQuery.parse,
    operator.processes: api.ProcessListing.parse,
    operator.cycle_history: api.CycleHistoryQuery.parse,
    operator.round_summaries: api.RoundStatsQuery.parse,
    hosting.host_training: api.HostTraining.parse,
    hosting.hosting_upload_urls: api.HostingUploadUrls.parse,
    hosting.delete_process: api.DeleteProcess.parse,
}
_APP = flask.Flask(__name__)


def rendered(result: Any) -> Any:
    """What the wire makes of a result: the JSON body as Python values, or the bytes."""
    with _APP.app_context():
        response = wire.render(result)
    return response.get_json() if response.is_json else response.get_data()


def call(service: Callable[[Context, Any], Any], ctx: Context, raw: Mapping[str, Any]) -> Any:
    """``service`` on ``raw`` parsed as its route parses it, answered as the wire renders it."""
    return rendered(service(ctx, PARSERS[service](raw)))
