"""The device API's use cases: authenticate, cycle-request, downloads, report, speed test.

Each takes a typed request (``firegrid.api``) and answers a domain result
(``firegrid.services.results``); ``firegrid.wire`` turns both into HTTP.
A worker id is the device's credential: every call that names one treats an id it
does not know, or one of another process, alike (401 ``unknown_worker``).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from firegrid import api
from firegrid.domain import blobs, plan_formats
from firegrid.domain.acceptance import Rejection, RejectReason, Speeds, reject, screen
from firegrid.domain.config import ServerConfig
from firegrid.domain.cycle import Cycle, CycleStatus, ProcessStatus
from firegrid.domain.diffs import max_file_bytes, payload_bytes, validate_diff
from firegrid.domain.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, Unauthorized
from firegrid.domain.keys import KeyScope, derive_worker_id, issue_request_key, verify_request_key
from firegrid.domain.model import Assignment, Process, Report, Worker
from firegrid.domain.selection import Places
from firegrid.services.context import Context
from firegrid.services.lookups import find_worker, known_worker, process_by_name
from firegrid.services.results import (
    Authenticated,
    Done,
    Empty,
    Offer,
    SignedUrl,
    UploadGrant,
)
from firegrid.services.signed import download, read_upload, upload_grant
from firegrid.tensors import decode_state, encode_state

AUTH_REQUIRED = "Authentication is required, please pass an 'auth_token'."
INVALID_KEY = "Invalid request key!"


def authenticate(ctx: Context, request: api.Authenticate) -> Authenticated:
    process = process_by_name(ctx, request.model_name, request.model_version)
    auth = process.server_config.authentication
    if auth.required:
        if request.auth_token is None:
            raise Unauthorized(AUTH_REQUIRED, "auth_required")
        verified = ctx.verifier.subject(request.auth_token, auth)
        subject = hashlib.sha256(verified.encode()).hexdigest()
    else:
        # An open process cannot trust any identity claim: every login is a new worker.
        subject = "anonymous:" + secrets.token_hex(16)
    worker = ctx.repo.save_worker(
        Worker(
            id=derive_worker_id(process.key_secret, process.id, subject),
            process_id=process.id,
            subject=subject,
            created_at=ctx.clock.now(),
        )
    )
    return Authenticated(
        worker_id=worker.id, requires_speed_test=process.server_config.requires_speed_test
    )


def _require_speeds(speeds: Speeds) -> None:
    for key in ("ping", "download", "upload"):
        if getattr(speeds, key) is None:
            raise BadRequest(f"'{key}' is required", "speed_test_required")


def request_cycle(ctx: Context, request: api.CycleRequest) -> Offer | Rejection:
    process = process_by_name(ctx, request.model, request.version)
    worker = known_worker(ctx, request.worker_id, process)
    config = process.server_config
    if config.requires_speed_test:
        _require_speeds(request.speeds)
    cycle = _current_cycle(ctx, process)
    now = ctx.clock.now()
    if process.status is ProcessStatus.COMPLETED:
        return reject(RejectReason.FL_COMPLETED, cycle, config, now)
    if cycle.status is CycleStatus.FAILED:
        return reject(RejectReason.CYCLE_FAILED, cycle, config, now)
    if cycle.status is not CycleStatus.OPEN:
        return reject(RejectReason.CYCLE_CLOSING, cycle, config, now)

    existing = ctx.repo.get_assignment(process.id, cycle.seq, worker.id)
    if existing is not None and existing.reported:
        return reject(RejectReason.ALREADY_REPORTED, cycle, config, now)
    if existing is None or existing.epoch != cycle.epoch:
        reason = screen(
            config=config,
            cycle=cycle,
            speeds=request.speeds,
            last_cycle=worker.last_cycle,
            start_key=request.start_key,
        )
        if reason is not None:
            return reject(reason, cycle, config, now)
        existing = ctx.repo.claim_place(process.id, cycle, worker.id, now, _places(ctx, config))
        if existing is None:
            return reject(RejectReason.CYCLE_FULL, cycle, config, now)
    scope = KeyScope(cycle.seq, existing.epoch)
    key = issue_request_key(process.key_secret, process.id, existing.worker_id, scope)
    return Offer(process=process, cycle=cycle, assignment=existing, request_key=key)


def _places(ctx: Context, config: ServerConfig) -> Places | None:
    """The places of a capped cycle (None: the cycle is not capped)."""
    return None if config.max_workers is None else Places(config.max_workers, ctx.rng)


def _current_cycle(ctx: Context, process: Process) -> Cycle:
    cycle = ctx.repo.get_cycle(process.id, process.current_cycle)
    if cycle is None:
        raise NotFound("The process has no cycle", "unknown_cycle")
    return cycle


@dataclass(frozen=True)
class Grant:
    """A genuine request key: whose it is and the cycle and epoch it was issued for."""

    worker_id: str
    process: Process
    scope: KeyScope

    def upload_object(self) -> str:
        return blobs.upload_object(
            self.process.id, self.scope.seq, self.worker_id, self.scope.epoch
        )


@dataclass(frozen=True)
class Place:
    """A worker's valid place in the open cycle, proven by its request key."""

    process: Process
    cycle: Cycle
    assignment: Assignment


def _grant(ctx: Context, request: api.Keyed) -> Grant:
    worker = find_worker(ctx, request.worker_id)
    process = ctx.repo.get_process(worker.process_id) if worker else None
    if worker is None or process is None:
        raise Unauthorized(INVALID_KEY, "invalid_request_key")
    scope = verify_request_key(process.key_secret, process.id, worker.id, request.request_key)
    return Grant(worker.id, process.in_service(), scope)


def _place(ctx: Context, grant: Grant) -> Place:
    process, scope = grant.process, grant.scope
    cycle = ctx.repo.get_cycle(process.id, scope.seq)
    if cycle is None or cycle.status is not CycleStatus.OPEN:
        raise Conflict("The cycle of this request key is no longer open", "cycle_closed")
    assignment = ctx.repo.get_assignment(process.id, scope.seq, grant.worker_id)
    if assignment is None or assignment.epoch != scope.epoch:
        raise Conflict("This assignment was dropped when the cycle was reset", "assignment_dropped")
    return Place(process, cycle, assignment)


def get_model(ctx: Context, request: api.ModelDownload) -> bytes | SignedUrl:
    place = _place(ctx, _grant(ctx, request))
    if request.model_id != place.process.id:
        raise NotFound("Model not found!", "unknown_model")
    name = place.cycle.model
    return download(ctx, place.process, name, payload_bytes(place.process.schema))


def get_plan(ctx: Context, request: api.PlanDownload) -> bytes | SignedUrl:
    place = _place(ctx, _grant(ctx, request))
    if request.plan_id not in place.process.plans:
        raise NotFound("Plan ID not found!", "unknown_plan")
    sizes = place.process.plan_sizes
    key = plan_formats.hosted_key(request.plan_id, request.variant, frozenset(sizes))
    return download(ctx, place.process, blobs.plan_object(place.process.id, key), sizes.get(key, 0))


def report_upload_url(ctx: Context, request: api.Keyed) -> UploadGrant:
    """A signed PUT URL for a diff too large to send inline; then ``report`` with ``uploaded``.

    The URL only accepts bodies up to the largest diff file of this model.
    """
    grant = _grant(ctx, request)
    place = _place(ctx, grant)
    if place.assignment.reported:
        raise Conflict("This worker already reported for this cycle", "already_reported")
    return upload_grant(ctx, grant.upload_object(), max_file_bytes(place.process.schema))


def report(ctx: Context, request: api.Report) -> Done:
    """Store a diff and count it, once; a refused report leaves no object behind."""
    grant = _grant(ctx, request)
    upload = grant.upload_object() if request.uploaded else None
    try:
        _report(ctx, grant, request, upload)
    finally:
        if upload is not None:
            ctx.blobs.delete(upload)
    return Done()


def _report(ctx: Context, grant: Grant, request: api.Report, upload: str | None) -> None:
    place = _place(ctx, grant)
    if place.assignment.reported:
        raise Conflict("This worker already reported for this cycle", "already_reported")
    config = place.process.server_config
    if request.num_samples > config.max_num_samples:
        raise BadRequest(
            f"'num_samples' must be <= {config.max_num_samples} (server_config.max_num_samples)",
            "too_many_samples",
        )
    max_bytes = max_file_bytes(place.process.schema)
    if request.diff is None:
        assert upload is not None
        diff_bytes = _uploaded_diff(ctx, place, upload, max_bytes)
    elif len(request.diff) > max_bytes:
        raise PayloadTooLarge(f"The diff is larger than this model's ({max_bytes} bytes)")
    else:
        diff_bytes = request.diff
    diff = validate_diff(
        decode_state(diff_bytes, "diff"),
        place.process.schema,
        max_norm=config.max_diff_norm,
        clip=config.clip_diffs,
    )
    if config.clip_diffs:
        diff_bytes = encode_state(diff)
    seq, epoch = place.cycle.seq, place.assignment.epoch
    name = blobs.diff_object(place.process.id, seq, grant.worker_id, epoch, secrets.token_hex(8))
    ctx.blobs.put(name, diff_bytes, if_absent=True)
    counted = Report(
        epoch=epoch, num_samples=request.num_samples, diff_object=name, at=ctx.clock.now()
    )
    try:
        ctx.repo.record_report(place.process.id, seq, grant.worker_id, counted)
    except Conflict:  # the cycle closed or a twin report won meanwhile: drop our own bytes
        ctx.blobs.delete(name)
        raise


def _uploaded_diff(ctx: Context, place: Place, name: str, max_bytes: int) -> bytes:
    uploaded = read_upload(ctx, name, max_bytes, "diff")
    if uploaded is not None:
        return uploaded
    seq, worker_id = place.cycle.seq, place.assignment.worker_id
    now = ctx.repo.get_assignment(place.process.id, seq, worker_id)
    if now is not None and now.reported:  # a twin report took the upload and counted
        raise Conflict("This worker already reported for this cycle", "already_reported")
    raise BadRequest(
        "No uploaded diff found: PUT it to the URL from report-upload-url first",
        "missing_upload",
    )


def admit_speed_test(ctx: Context, request: api.SpeedTest) -> None:
    """The speed test is for known workers of a training process only."""
    worker = known_worker(ctx, request.worker_id)
    process = ctx.repo.get_process(worker.process_id)
    if process is None or process.status is not ProcessStatus.TRAINING:
        raise Conflict("The speed test is for workers of a training process", "not_training")


def speed_test(ctx: Context, request: api.SpeedTest) -> bytes | Empty:
    """PyGrid's download speed test: a random sample, or ``{}`` for a ping."""
    admit_speed_test(ctx, request)
    return Empty() if request.ping else secrets.token_bytes(ctx.settings.speed_test_bytes)
