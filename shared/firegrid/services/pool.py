"""The push-driven worker pool: registration, availability, invitations, lifecycle pushes.

Every path that may need workers calls ``invite`` (the worker trigger, cycle
closing, resets, the tick); it is safe to call any number of times, at once:
one invitation round per cycle runs at a time, and a worker is invited into a
cycle at most once.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from firegrid import api
from firegrid.domain.acceptance import may_rejoin
from firegrid.domain.buffered import LOBBY
from firegrid.domain.cycle import Cycle, CycleStatus, ProcessStatus
from firegrid.domain.errors import BadRequest
from firegrid.domain.model import Process, Worker, token_holders_to_clear
from firegrid.domain.push import PushType, messages_to, push_data
from firegrid.domain.selection import Candidate, RoundState, invitations_wanted, select
from firegrid.services.context import Context
from firegrid.services.lookups import known_worker, named_process, process_of
from firegrid.services.results import Done, PoolReport, PushSent

log = logging.getLogger(__name__)

SLOW_RAM_GB = 2.0
"""Devices with less RAM are flagged slow (the fork's rule)."""
INVITE_LOCK = "invite"
INVITE_LOCK_TTL = timedelta(seconds=60)


def register_token(ctx: Context, request: api.RegisterToken) -> Done:
    """``register-token`` (the fork's ``save-fcm-token``): the worker joins the pool."""
    worker = known_worker(ctx, request.worker_id)
    process = process_of(ctx, worker)
    if request.model is not None and request.model != process.name:
        raise BadRequest(
            "'model' is not the process this worker authenticated for", "wrong_process"
        )
    ttl = timedelta(seconds=process.server_config.availability_ttl)
    slow = request.ram_gb is not None and request.ram_gb < SLOW_RAM_GB
    until = ctx.clock.now() + ttl
    token = request.token

    def register(current: Worker) -> Worker:
        return current.with_token(
            token,
            ram_gb=request.ram_gb,
            cpu_cores=request.cpu_cores,
            slow=slow,
            available_until=until,
        )

    ctx.repo.update_worker(worker.id, register)
    holders = ctx.repo.workers_with_tokens(process.id, [token])
    for holder in token_holders_to_clear(holders, worker):
        ctx.repo.update_worker(holder.id, _forget(token))
    return Done()


def worker_status(ctx: Context, request: api.WorkerStatus) -> Done:
    """``worker-status`` (the fork's ``update-worker-status``): confirm or withdraw availability."""
    worker = known_worker(ctx, request.worker_id)
    process = process_of(ctx, worker)
    until = ctx.clock.now() + timedelta(seconds=process.server_config.availability_ttl)
    available = request.available
    ctx.repo.update_worker(worker.id, lambda w: w.with_availability(available, until))
    return Done()


def invite(ctx: Context, process_id: str) -> list[str]:
    """Run an invitation round for the open cycle if it needs workers; the workers invited."""
    process = ctx.repo.get_process(process_id)
    if process is None or process.status is not ProcessStatus.TRAINING:
        return []
    cycle = ctx.repo.get_cycle(process_id, process.current_cycle)
    if cycle is None or cycle.status is not CycleStatus.OPEN:
        return []
    now = ctx.clock.now()
    if not ctx.repo.try_lock(process_id, cycle.seq, INVITE_LOCK, now, now + INVITE_LOCK_TTL):
        return []  # another instance is running this cycle's round
    try:
        return _invitation_round(ctx, process, cycle)
    finally:
        ctx.repo.unlock(process_id, cycle.seq, INVITE_LOCK)


def _invitation_round(ctx: Context, process: Process, cycle: Cycle) -> list[str]:
    now = ctx.clock.now()
    config = process.server_config
    # Async: places are the lobby's, for the whole process; invitations are per buffer.
    assignments = ctx.repo.assignments(process.id, LOBBY if config.is_async else cycle.seq)
    invitations = ctx.repo.invitations(process.id, cycle.seq)
    assigned_now = {a.worker_id for a in assignments if config.is_async or a.epoch == cycle.epoch}
    invited_now = {w for w, epoch in invitations.items() if epoch == cycle.epoch}
    taken = {a.worker_id for a in assignments} | set(invitations)
    pool = {
        w.id: w
        for w in ctx.repo.process_workers(process.id, available_only=True)
        if w.in_pool(now)
        and w.id not in taken
        and may_rejoin(process.server_config, cycle.seq, w.last_cycle)
    }
    last_invited = ctx.repo.last_invited(process.id) if config.pool_selection == "iterate" else {}
    candidates = [
        Candidate(worker_id=w.id, last_invited_at=last_invited.get(w.id)) for w in pool.values()
    ]
    state = RoundState(
        assigned=len(assigned_now),
        invited=len(invited_now),
        invited_and_assigned=len(invited_now & assigned_now),
    )
    wanted = invitations_wanted(config, state, len(candidates))
    if wanted == 0:
        return []
    chosen = select(candidates, wanted, config.pool_selection, ctx.rng)
    invited = ctx.repo.record_invitations(process.id, cycle.seq, cycle.epoch, chosen, now)
    ctx.repo.mark_invited(process.id, invited, now)
    push(
        ctx,
        process,
        PushType.REQUEST_FOR_CYCLE,
        [pool[w] for w in invited],
        cycle=cycle,
        key=_round_key(cycle, invited),
    )
    return invited


def _round_key(cycle: Cycle, invited: list[str]) -> str:
    """One push per invitation round: rounds of a cycle invite disjoint sets of workers."""
    digest = hashlib.sha256("\n".join(sorted(invited)).encode()).hexdigest()[:16]
    return f"{PushType.REQUEST_FOR_CYCLE}-{cycle.seq}-{cycle.epoch}-{digest}"


def push(
    ctx: Context,
    process: Process,
    push_type: PushType,
    workers: Iterable[Worker],
    *,
    cycle: Cycle | None,
    key: str,
    with_start_key: bool = True,
) -> dict[str, Any] | None:
    """Send ``push_type`` to the workers' tokens once per ``key``, and record the send."""
    tokens = sorted({w.fcm_token for w in workers if w.fcm_token})
    record = {
        "type": push_type.value,
        "cycle": cycle.seq if cycle else None,
        "epoch": cycle.epoch if cycle else None,
        "recipients": len(tokens),
        "created_at": ctx.clock.now(),
    }
    if not ctx.repo.claim_push(process.id, key, record):
        return None  # sent already (a redelivered trigger, a concurrent closer)
    data = push_data(
        push_type,
        model=process.name,
        version=process.version,
        cycle_id=cycle.seq if cycle else None,
        cycle_start_request_key=cycle.start_key if cycle and with_start_key else None,
    )
    report = ctx.notifier.send(messages_to(tokens, data)) if tokens else None
    result = {
        "sent": report.sent if report else 0,
        "failed": report.failed if report else 0,
        "unregistered": len(report.unregistered) if report else 0,
    }
    if report and report.unregistered:
        drop_tokens(ctx, process.id, report.unregistered)
    if report and report.errors:
        log.warning("push %s to %s: %s", push_type.value, process.name, report.errors[:3])
    ctx.repo.finish_push(process.id, key, result)
    return record | result


def drop_tokens(ctx: Context, process_id: str, tokens: Iterable[str]) -> None:
    """Tokens FCM will never deliver to again leave the pool."""
    for holder in ctx.repo.workers_with_tokens(process_id, list(tokens)):
        if holder.fcm_token is not None:
            ctx.repo.update_worker(holder.id, _forget(holder.fcm_token))


def _forget(token: str) -> Callable[[Worker], Worker | None]:
    return lambda worker: worker.without_token(token)


def after_cycle_completed(ctx: Context, process_id: str, seq: int) -> None:
    """Lifecycle pushes once cycle ``seq`` closed: the next cycle is open, or training is over."""
    process = ctx.repo.get_process(process_id)
    if process is None or process.status is ProcessStatus.DELETING:
        return
    workers = ctx.repo.process_workers(process_id)
    if process.status is ProcessStatus.COMPLETED:
        push(ctx, process, PushType.FL_COMPLETED, workers, cycle=None, key=f"fl_completed-{seq}")
        return
    if process.server_config.is_async:  # devices keep training: no push per checkpoint
        invite(ctx, process_id)
        return
    next_cycle = ctx.repo.get_cycle(process_id, seq + 1)
    if next_cycle is None:
        return
    now = ctx.clock.now()
    pool = [
        w
        for w in workers
        if w.in_pool(now) and may_rejoin(process.server_config, next_cycle.seq, w.last_cycle)
    ]
    push(
        ctx, process, PushType.CYCLE_COMPLETED, pool,
        cycle=next_cycle, key=f"cycle_completed-{seq}", with_start_key=False,
    )  # fmt: skip
    _ask_for_availability(ctx, process, workers, next_cycle)
    invite(ctx, process_id)


def after_cycle_reset(ctx: Context, process_id: str, seq: int, dropped: Iterable[str]) -> None:
    """A reset cycle tells its dropped assignees and the pool, then invites again."""
    process = ctx.repo.get_process(process_id)
    cycle = ctx.repo.get_cycle(process_id, seq)
    if process is None or process.status is ProcessStatus.DELETING or cycle is None:
        return
    workers = ctx.repo.process_workers(process_id)
    dropped_ids = set(dropped)
    now = ctx.clock.now()
    recipients = [w for w in workers if w.id in dropped_ids or w.in_pool(now)]
    push(
        ctx, process, PushType.CYCLE_RESET, recipients,
        cycle=cycle, key=f"cycle_reset-{seq}-{cycle.epoch}", with_start_key=False,
    )  # fmt: skip
    _ask_for_availability(ctx, process, workers, cycle)
    invite(ctx, process_id)


def _ask_for_availability(
    ctx: Context, process: Process, workers: list[Worker], cycle: Cycle
) -> None:
    push(
        ctx, process, PushType.WORKER_ONLINE_STATUS, workers,
        cycle=cycle, key=f"worker_online_status-{cycle.seq}-{cycle.epoch}", with_start_key=False,
    )  # fmt: skip


def operator_push(ctx: Context, request: api.Push) -> PushSent:
    """``admin/push``: send a message type to every registered worker of a process."""
    process = named_process(ctx, request)
    cycle = ctx.repo.get_cycle(process.id, process.current_cycle)
    result = push(
        ctx, process, request.type, ctx.repo.process_workers(process.id),
        cycle=cycle, key=f"operator-{request.type.value}-{secrets.token_hex(8)}",
        with_start_key=request.type is PushType.REQUEST_FOR_CYCLE,
    )  # fmt: skip
    return PushSent(result or {})


def pool_status(ctx: Context, process: Process, cycle: Cycle | None, assigned: int) -> PoolReport:
    """The pool of a process; ``cycle`` and its ``assigned`` count come from the caller."""
    now = ctx.clock.now()
    workers = ctx.repo.process_workers(process.id)
    invited = 0
    if cycle is not None:
        invited = sum(
            1 for e in ctx.repo.invitations(process.id, cycle.seq).values() if e == cycle.epoch
        )
    return PoolReport(
        workers=len(workers),
        registered=sum(1 for w in workers if w.fcm_token),
        available=sum(1 for w in workers if w.in_pool(now)),
        slow=sum(1 for w in workers if w.slow),
        invited=invited,
        assigned=assigned,
        last_sends=ctx.repo.recent_pushes(process.id),
    )
