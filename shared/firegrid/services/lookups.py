"""What the device and operator use cases look up first: a process by name, a worker by id.

A worker id is the device's credential: an id this server does not know, and
an id of another process, are answered alike (401 ``unknown_worker``), so a
caller learns nothing about other processes' workers.
"""

from __future__ import annotations

from firegrid import api
from firegrid.domain import blobs
from firegrid.domain.errors import NotFound, Unauthorized
from firegrid.domain.keys import WORKER_ID
from firegrid.domain.model import Process, Worker, current_version
from firegrid.services.context import Context

UNKNOWN_WORKER = "Unknown worker for this model: authenticate first"


def checkpoint_object(ctx: Context, process: Process, number: int) -> str:
    """Where checkpoint ``number`` is stored: the hosted model, or what the closing of
    cycle ``number - 1`` published."""
    if number == 1:
        return blobs.checkpoint_object(process.id, 1)
    before = ctx.repo.get_cycle(process.id, number - 1)
    if before is None or before.summary is None:
        raise NotFound(f"Checkpoint {number} is not published", "unknown_checkpoint")
    return before.summary.checkpoint_object or blobs.checkpoint_object(process.id, number)


def process_by_name(ctx: Context, name: str, version: str | None) -> Process:
    """What the name (and version) means to devices; one being deleted is a 409 that says so."""
    named = ctx.repo.processes_named(name, version)
    process = current_version(named)
    if process is None:
        for candidate in named:
            candidate.in_service()  # one being deleted says so
        wanted = f"'{name}'" + (f" version '{version}'" if version else "")
        raise NotFound(f"No training process for model {wanted}", "unknown_process")
    return process


def named_process(ctx: Context, query: api.ProcessQuery) -> Process:
    """The process an operator call names with ``name`` and an optional ``version``."""
    return process_by_name(ctx, query.name, query.version)


def find_worker(ctx: Context, worker_id: str) -> Worker | None:
    """The worker, if ``worker_id`` has the form this server issues and is stored."""
    return ctx.repo.get_worker(worker_id) if WORKER_ID.fullmatch(worker_id) else None


def known_worker(ctx: Context, worker_id: str, process: Process | None = None) -> Worker:
    """The worker, or 401: an unknown id and another process's id look the same."""
    worker = find_worker(ctx, worker_id)
    if worker is None or (process is not None and worker.process_id != process.id):
        raise Unauthorized(UNKNOWN_WORKER, "unknown_worker")
    return worker


def process_of(ctx: Context, worker: Worker) -> Process:
    """The worker's process, which must still exist (404) and not be being deleted (409)."""
    process = ctx.repo.get_process(worker.process_id)
    if process is None:
        raise NotFound("The worker's process no longer exists", "unknown_process")
    return process.in_service()
