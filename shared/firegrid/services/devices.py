"""The device API's use cases: authenticate, cycle-request, downloads, report, speed test.

A worker id is the device's credential: every call that names one treats an
id it does not know, or one of another process, alike (401 ``unknown_worker``).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from firegrid.domain import blobs, limits
from firegrid.domain.acceptance import RejectReason, Speeds, reject, screen
from firegrid.domain.config import ServerConfig
from firegrid.domain.cycle import Cycle, CycleStatus, ProcessStatus
from firegrid.domain.diffs import max_file_bytes, payload_bytes, validate_diff
from firegrid.domain.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from firegrid.domain.fields import Fields
from firegrid.domain.keys import KeyScope, derive_worker_id, issue_request_key, verify_request_key
from firegrid.domain.model import Assignment, Process, Redirect, Report, Worker
from firegrid.domain.selection import free_slot
from firegrid.services.context import Context
from firegrid.services.lookups import (
    find_worker,
    known_worker,
    model_name,
    process_by_name,
    worker_id_field,
)
from firegrid.tensors import decode_state, encode_state

AUTH_REQUIRED = "Authentication is required, please pass an 'auth_token'."
INVALID_KEY = "Invalid request key!"
SIGNED_URL_TTL = timedelta(minutes=15)
CONTENT_LENGTH_RANGE = "x-goog-content-length-range"


def authenticate(ctx: Context, body: Mapping[str, Any]) -> dict[str, Any]:
    fields = Fields(body)
    name = model_name(fields, "model_name")
    version = fields.version("model_version")
    token = fields.text("auth_token", max_length=limits.MAX_TOKEN_LENGTH)
    process = process_by_name(ctx, name, version)
    auth = process.server_config.authentication
    if auth.required:
        if token is None:
            raise Unauthorized(AUTH_REQUIRED, "auth_required")
        subject = hashlib.sha256(ctx.verifier.subject(token, auth).encode()).hexdigest()
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
    return {
        "status": "success",
        "worker_id": worker.id,
        "requires_speed_test": process.server_config.requires_speed_test,
    }


def _speeds(fields: Fields, required: bool) -> Speeds:
    def speed(key: str) -> float | None:
        return fields.number(key, maximum=limits.MAX_SPEED, strings=True)

    speeds = Speeds(ping=speed("ping"), download=speed("download"), upload=speed("upload"))
    if required:
        for key in ("ping", "download", "upload"):
            if getattr(speeds, key) is None:
                raise BadRequest(f"'{key}' is required", "speed_test_required")
    return speeds


def request_cycle(ctx: Context, body: Mapping[str, Any]) -> dict[str, Any]:
    fields = Fields(body)
    worker_id = worker_id_field(fields)
    name = model_name(fields, "model")
    version = fields.version("version")
    start_key = fields.text("cycle_start_request_key", max_length=limits.MAX_KEY_LENGTH)
    process = process_by_name(ctx, name, version)
    worker = known_worker(ctx, worker_id, process)
    config = process.server_config
    speeds = _speeds(fields, config.requires_speed_test)
    cycle = _current_cycle(ctx, process)
    now = ctx.clock.now()
    if process.status is ProcessStatus.COMPLETED:
        return reject(RejectReason.FL_COMPLETED, cycle, config, now).to_wire()
    if cycle.status is not CycleStatus.OPEN:
        return reject(RejectReason.CYCLE_CLOSING, cycle, config, now).to_wire()

    existing = ctx.repo.get_assignment(process.id, cycle.seq, worker.id)
    if existing is not None and existing.reported:
        return reject(RejectReason.ALREADY_REPORTED, cycle, config, now).to_wire()
    if existing is None or existing.epoch != cycle.epoch:
        reason = screen(
            config=config,
            cycle=cycle,
            speeds=speeds,
            last_cycle=worker.last_cycle,
            start_key=start_key,
        )
        if reason is not None:
            return reject(reason, cycle, config, now).to_wire()
        existing = ctx.repo.claim_place(process.id, cycle, worker.id, now, _slots(ctx, config))
        if existing is None:
            return reject(RejectReason.CYCLE_FULL, cycle, config, now).to_wire()
    return _accepted(process, cycle, existing)


def _slots(ctx: Context, config: ServerConfig) -> Callable[[set[int]], int | None] | None:
    """How a capped cycle's places are chosen (None: the cycle is not capped)."""
    cap = config.max_workers
    if cap is None:
        return None
    return lambda taken: free_slot(taken, cap, ctx.rng)


def _current_cycle(ctx: Context, process: Process) -> Cycle:
    cycle = ctx.repo.get_cycle(process.id, process.current_cycle)
    if cycle is None:
        raise NotFound("The process has no cycle", "unknown_cycle")
    return cycle


def _accepted(process: Process, cycle: Cycle, assignment: Assignment) -> dict[str, Any]:
    scope = KeyScope(cycle.seq, assignment.epoch)
    return {
        "status": "accepted",
        "request_key": issue_request_key(
            process.key_secret, process.id, assignment.worker_id, scope
        ),
        "cycle_id": cycle.seq,
        "model": process.name,
        "version": process.version,
        "model_id": process.id,
        "plans": dict(process.plans),
        "protocols": {},
        "client_config": dict(process.client_config),
        "deadline": cycle.deadline.isoformat() if cycle.deadline else None,
    }


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


def _grant(ctx: Context, fields: Fields) -> Grant:
    worker_id = worker_id_field(fields)
    request_key = fields.text("request_key", required=True, max_length=limits.MAX_KEY_LENGTH)
    worker = find_worker(ctx, worker_id)
    process = ctx.repo.get_process(worker.process_id) if worker else None
    if worker is None or process is None:
        raise Unauthorized(INVALID_KEY, "invalid_request_key")
    scope = verify_request_key(process.key_secret, process.id, worker.id, request_key)
    return Grant(worker.id, process, scope)


def _place(ctx: Context, grant: Grant) -> Place:
    process, scope = grant.process, grant.scope
    cycle = ctx.repo.get_cycle(process.id, scope.seq)
    if cycle is None or cycle.status is not CycleStatus.OPEN:
        raise Conflict("The cycle of this request key is no longer open", "cycle_closed")
    assignment = ctx.repo.get_assignment(process.id, scope.seq, grant.worker_id)
    if assignment is None or assignment.epoch != scope.epoch:
        raise Conflict("This assignment was dropped when the cycle was reset", "assignment_dropped")
    return Place(process, cycle, assignment)


def _inline_limit(ctx: Context, process: Process) -> int:
    lowered = process.server_config.max_inline_bytes
    return min(ctx.settings.inline_limit_bytes, lowered or ctx.settings.inline_limit_bytes)


def _download(ctx: Context, process: Process, name: str, size: int) -> bytes | Redirect:
    """Small payloads inline; larger ones by a short-lived signed URL."""
    if size <= _inline_limit(ctx, process):
        return ctx.blobs.get(name)
    return Redirect(ctx.blobs.signed_url(name, method="GET", expires_in=SIGNED_URL_TTL))


def get_model(ctx: Context, args: Mapping[str, Any]) -> bytes | Redirect:
    fields = Fields(args, what="the query")
    place = _place(ctx, _grant(ctx, fields))
    if fields.text("model_id", required=True, max_length=limits.MAX_KEY_LENGTH) != place.process.id:
        raise NotFound("Model not found!", "unknown_model")
    name = blobs.checkpoint_object(place.process.id, place.cycle.checkpoint)
    return _download(ctx, place.process, name, payload_bytes(place.process.schema))


def get_plan(ctx: Context, args: Mapping[str, Any]) -> bytes | Redirect:
    fields = Fields(args, what="the query")
    place = _place(ctx, _grant(ctx, fields))
    plan_id = fields.text("plan_id", required=True, max_length=limits.MAX_KEY_LENGTH)
    variant = fields.text("receive_operations_as", max_length=limits.MAX_KEY_LENGTH) or "torch"
    if variant != "torch":
        raise BadRequest(
            f"receive_operations_as '{variant}' is not available; use 'torch'",
            "unsupported_plan_format",
        )
    if plan_id not in place.process.plans:
        raise NotFound("Plan ID not found!", "unknown_plan")
    size = place.process.plan_sizes.get(plan_id, 0)
    return _download(ctx, place.process, blobs.plan_object(place.process.id, plan_id), size)


def report_upload_url(ctx: Context, body: Mapping[str, Any]) -> dict[str, Any]:
    """A signed PUT URL for a diff too large to send inline; then ``report`` with ``uploaded``.

    The URL only accepts bodies up to the largest diff file of this model.
    """
    grant = _grant(ctx, Fields(body))
    place = _place(ctx, grant)
    if place.assignment.reported:
        raise Conflict("This worker already reported for this cycle", "already_reported")
    max_bytes = max_file_bytes(place.process.schema)
    headers = {
        "Content-Type": "application/octet-stream",
        CONTENT_LENGTH_RANGE: f"0,{max_bytes}",
    }
    url = ctx.blobs.signed_url(
        grant.upload_object(), method="PUT", expires_in=SIGNED_URL_TTL, headers=headers
    )
    return {
        "upload_url": url,
        "expires_at": (ctx.clock.now() + SIGNED_URL_TTL).isoformat(),
        "method": "PUT",
        "content_type": "application/octet-stream",
        "headers": headers,
        "max_bytes": max_bytes,
    }


def report(ctx: Context, body: Mapping[str, Any]) -> dict[str, Any]:
    """Store a diff and count it, once; a refused report leaves no object behind."""
    fields = Fields(body)
    num_samples = fields.integer("num_samples", "train_num_samples", required=True, minimum=1)
    uploaded = fields.flag("uploaded")
    inline = None if uploaded else fields.base64("diff")
    grant = _grant(ctx, fields)
    upload = grant.upload_object() if uploaded else None
    try:
        _report(ctx, grant, num_samples, inline, upload)
    finally:
        if upload is not None:
            ctx.blobs.delete(upload)
    return {"status": "success"}


def _report(
    ctx: Context, grant: Grant, num_samples: int, inline: bytes | None, upload: str | None
) -> None:
    place = _place(ctx, grant)
    if place.assignment.reported:
        raise Conflict("This worker already reported for this cycle", "already_reported")
    config = place.process.server_config
    if num_samples > config.max_num_samples:
        raise BadRequest(
            f"'num_samples' must be <= {config.max_num_samples} (server_config.max_num_samples)",
            "too_many_samples",
        )
    max_bytes = max_file_bytes(place.process.schema)
    if inline is None:
        assert upload is not None
        diff_bytes = _uploaded_diff(ctx, place, upload, max_bytes)
    elif len(inline) > max_bytes:
        raise PayloadTooLarge(f"The diff is larger than this model's ({max_bytes} bytes)")
    else:
        diff_bytes = inline
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
    try:
        report = Report(epoch=epoch, num_samples=num_samples, diff_object=name, at=ctx.clock.now())
        ctx.repo.record_report(place.process.id, seq, grant.worker_id, report)
    except Conflict:  # the cycle closed or a twin report won meanwhile: drop our own bytes
        ctx.blobs.delete(name)
        raise


def _uploaded_diff(ctx: Context, place: Place, name: str, max_bytes: int) -> bytes:
    try:
        return ctx.blobs.get(name, max_bytes=max_bytes)
    except NotFound as missing:
        if missing.code == "too_large":
            raise PayloadTooLarge(
                f"The uploaded diff is larger than this model's ({max_bytes} bytes)"
            ) from None
        seq, worker_id = place.cycle.seq, place.assignment.worker_id
        now = ctx.repo.get_assignment(place.process.id, seq, worker_id)
        if now is not None and now.reported:  # a twin report took the upload and counted
            raise Conflict(
                "This worker already reported for this cycle", "already_reported"
            ) from None
        raise BadRequest(
            "No uploaded diff found: PUT it to the URL from report-upload-url first",
            "missing_upload",
        ) from None


def admit_speed_test(ctx: Context, args: Mapping[str, Any]) -> None:
    """The speed test is for known workers of a training process only."""
    fields = Fields(args, what="the query")
    worker = known_worker(ctx, worker_id_field(fields))
    fields.text("random", required=True, max_length=limits.MAX_KEY_LENGTH)
    process = ctx.repo.get_process(worker.process_id)
    if process is None or process.status is not ProcessStatus.TRAINING:
        raise Conflict("The speed test is for workers of a training process", "not_training")


def speed_test(ctx: Context, args: Mapping[str, Any]) -> bytes | dict[str, Any]:
    """PyGrid's download speed test: a random sample, or ``{}`` for a ping."""
    admit_speed_test(ctx, args)
    if args.get("is_ping") in ("1", "true", "True"):
        return {}
    return secrets.token_bytes(ctx.settings.speed_test_bytes)
