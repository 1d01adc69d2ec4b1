"""The device API's use cases: authenticate, cycle-request, downloads, report."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from firegrid.domain import blobs
from firegrid.domain.acceptance import RejectReason, Speeds, reject, screen
from firegrid.domain.cycle import Cycle, CycleStatus, ProcessStatus
from firegrid.domain.diffs import payload_bytes, validate_diff
from firegrid.domain.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, Unauthorized
from firegrid.domain.keys import KeyScope, issue_request_key, stable_id, verify_request_key
from firegrid.domain.model import Assignment, Process, Redirect, Worker
from firegrid.services import _fields as fields
from firegrid.services.context import Context
from firegrid.tensors import decode_state, encode_state

AUTH_REQUIRED = "Authentication is required, please pass an 'auth_token'."
SIGNED_URL_TTL = timedelta(minutes=15)


def _process_by_name(ctx: Context, name: str, version: str | None) -> Process:
    process = ctx.repo.find_process(name, version)
    if process is None:
        wanted = f"'{name}'" + (f" version '{version}'" if version else "")
        raise NotFound(f"No training process for model {wanted}", "unknown_process")
    return process


def authenticate(ctx: Context, body: Mapping[str, Any]) -> dict[str, Any]:
    name = fields.required_str(body, "model_name")
    version = fields.optional_version(body, "model_version")
    token = fields.optional_str(body, "auth_token")
    process = _process_by_name(ctx, name, version)
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
            id=stable_id("worker", process.id, subject),
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


def _worker(ctx: Context, worker_id: str) -> Worker:
    worker = ctx.repo.get_worker(worker_id)
    if worker is None:
        raise NotFound("Worker not found: authenticate first", "unknown_worker")
    return worker


def _speeds(body: Mapping[str, Any], required: bool) -> Speeds:
    speeds = Speeds(
        ping=fields.optional_number(body, "ping"),
        download=fields.optional_number(body, "download"),
        upload=fields.optional_number(body, "upload"),
    )
    if required:
        for key in ("ping", "download", "upload"):
            if getattr(speeds, key) is None:
                raise BadRequest(f"'{key}' is required", "speed_test_required")
    return speeds


def request_cycle(ctx: Context, body: Mapping[str, Any]) -> dict[str, Any]:
    worker_id = fields.required_str(body, "worker_id")
    name = fields.required_str(body, "model")
    version = fields.optional_version(body, "version")
    start_key = fields.optional_str(body, "cycle_start_request_key")
    worker = _worker(ctx, worker_id)
    process = _process_by_name(ctx, name, version)
    if worker.process_id != process.id:
        raise Unauthorized("This worker is not authenticated for this process", "wrong_process")
    config = process.server_config
    speeds = _speeds(body, config.requires_speed_test)
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
        existing = ctx.repo.claim_place(process.id, cycle, worker.id, config.max_workers, now)
        if existing is None:
            return reject(RejectReason.CYCLE_FULL, cycle, config, now).to_wire()
    return _accepted(process, cycle, existing)


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
class Place:
    """A worker's valid place in the open cycle, proven by its request key."""

    process: Process
    cycle: Cycle
    assignment: Assignment


def _place(ctx: Context, worker_id: str, request_key: str) -> Place:
    worker = ctx.repo.get_worker(worker_id)
    process = ctx.repo.get_process(worker.process_id) if worker else None
    if worker is None or process is None:
        raise Unauthorized("Invalid request key!", "invalid_request_key")
    scope = verify_request_key(process.key_secret, process.id, worker.id, request_key)
    cycle = ctx.repo.get_cycle(process.id, scope.seq)
    if cycle is None or cycle.status is not CycleStatus.OPEN:
        raise Conflict("The cycle of this request key is no longer open", "cycle_closed")
    assignment = ctx.repo.get_assignment(process.id, scope.seq, worker.id)
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
    place = _place(
        ctx, fields.required_str(args, "worker_id"), fields.required_str(args, "request_key")
    )
    if fields.required_str(args, "model_id") != place.process.id:
        raise NotFound("Model not found!", "unknown_model")
    name = blobs.checkpoint_object(place.process.id, place.cycle.checkpoint)
    return _download(ctx, place.process, name, payload_bytes(place.process.schema))


def get_plan(ctx: Context, args: Mapping[str, Any]) -> bytes | Redirect:
    place = _place(
        ctx, fields.required_str(args, "worker_id"), fields.required_str(args, "request_key")
    )
    plan_id = fields.required_str(args, "plan_id")
    variant = fields.optional_str(args, "receive_operations_as") or "torch"
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
    """A signed PUT URL for a diff too large to send inline; then ``report`` with ``uploaded``."""
    worker_id = fields.required_str(body, "worker_id")
    place = _place(ctx, worker_id, fields.required_str(body, "request_key"))
    if place.assignment.reported:
        raise Conflict("This worker already reported for this cycle", "already_reported")
    name = blobs.upload_object(place.process.id, place.cycle.seq, worker_id, place.assignment.epoch)
    expires_at = ctx.clock.now() + SIGNED_URL_TTL
    return {
        "upload_url": ctx.blobs.signed_url(name, method="PUT", expires_in=SIGNED_URL_TTL),
        "expires_at": expires_at.isoformat(),
        "method": "PUT",
        "content_type": "application/octet-stream",
        "max_bytes": ctx.settings.max_upload_bytes,
    }


def report(ctx: Context, body: Mapping[str, Any]) -> dict[str, Any]:
    worker_id = fields.required_str(body, "worker_id")
    request_key = fields.required_str(body, "request_key")
    num_samples = fields.positive_int(body, "num_samples", "train_num_samples")
    uploaded = body.get("uploaded", False)
    if not isinstance(uploaded, bool):
        raise BadRequest("'uploaded' must be true or false", "invalid_field")
    inline = None if uploaded else fields.base64_bytes(body.get("diff"), "diff")
    place = _place(ctx, worker_id, request_key)
    if place.assignment.reported:
        raise Conflict("This worker already reported for this cycle", "already_reported")
    upload = blobs.upload_object(
        place.process.id, place.cycle.seq, worker_id, place.assignment.epoch
    )
    diff_bytes = inline if inline is not None else _uploaded_diff(ctx, upload)
    config = place.process.server_config
    diff = validate_diff(
        decode_state(diff_bytes, "diff"),
        place.process.schema,
        max_norm=config.max_diff_norm,
        clip=config.clip_diffs,
    )
    if config.clip_diffs:
        diff_bytes = encode_state(diff)
    digest = hashlib.sha256(diff_bytes).hexdigest()
    name = blobs.diff_object(
        place.process.id, place.cycle.seq, worker_id, place.assignment.epoch, digest
    )
    stored = ctx.blobs.put(name, diff_bytes, if_absent=True)
    try:
        ctx.repo.record_report(
            place.process.id,
            place.cycle.seq,
            worker_id,
            place.assignment.epoch,
            num_samples,
            name,
            ctx.clock.now(),
        )
    except Conflict:
        if stored:  # the cycle closed (or a twin report won) meanwhile: leave no orphan
            ctx.blobs.delete(name)
        raise
    if uploaded:
        ctx.blobs.delete(upload)
    return {"status": "success"}


def _uploaded_diff(ctx: Context, name: str) -> bytes:
    try:
        return ctx.blobs.get(name, max_bytes=ctx.settings.max_upload_bytes)
    except NotFound as missing:
        if missing.code == "too_large":
            raise PayloadTooLarge("The uploaded diff is too large", "too_large") from None
        raise BadRequest(
            "No uploaded diff found: PUT it to the URL from report-upload-url first",
            "missing_upload",
        ) from None
