"""Closing cycles (aggregation), deadlines and the scheduled tick."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import numpy as np

from firegrid.domain import blobs, optimizers, privacy
from firegrid.domain.aggregation import (
    Aggregation,
    AggregationFailed,
    StateDict,
    Step,
    Tensors,
    apply_step,
    combine,
    fedavg_weights,
)
from firegrid.domain.buffered import (
    LOBBY,
    damped_weights,
    is_full,
    mean_staleness,
    place_expired,
    undamp,
)
from firegrid.domain.cycle import (
    Cycle,
    CycleStatus,
    CycleSummary,
    ProcessStatus,
    deadline_for,
    has_enough,
    is_expired,
    is_last_cycle,
    is_ready,
)
from firegrid.domain.fanout import fans_out
from firegrid.domain.model import Assignment, Process
from firegrid.services import fanout, pool
from firegrid.services.context import Context
from firegrid.services.hosting import new_cycle
from firegrid.services.leases import Lease, LeaseLost
from firegrid.services.lookups import checkpoint_object
from firegrid.services.stored_diffs import StoredDiffs
from firegrid.tensors import decode_state, encode_state, view_state
from firegrid.transient import is_transient

log = logging.getLogger(__name__)


def on_report(ctx: Context, process_id: str, seq: int) -> bool:
    """After a report: mark the cycle ``closing`` if it is full (its trigger then
    aggregates it). True if this call marked it."""
    process = ctx.repo.get_process(process_id)
    cycle = ctx.repo.get_cycle(process_id, seq)
    if process is None or process.status is not ProcessStatus.TRAINING:
        return False  # a process being deleted starts no closing
    if cycle is None or cycle.status is not CycleStatus.OPEN:
        return False
    if process.server_config.is_async:
        return _fill(ctx, process, seq)
    reported = ctx.repo.count_reported(process_id, seq)
    if not is_ready(cycle, reported, process.server_config, ctx.clock.now()):
        return False
    now = ctx.clock.now()
    return ctx.repo.update_cycle(process_id, seq, lambda c: c.begin_closing(now)) is not None


def _fill(ctx: Context, process: Process, seq: int) -> bool:
    """Async: a buffer holding ``buffer_size`` reports closes and, in the same write, the
    next one opens and becomes the process's current buffer, so a report recorded
    meanwhile lands in exactly one of them (its transaction read the buffer ``open``,
    or it finds it closed and goes to the next). True if this call closed it."""
    if not is_full(ctx.repo.count_reported(process.id, seq), process.server_config):
        return False
    now = ctx.clock.now()
    if is_last_cycle(seq, process.server_config):  # no buffer after the last
        return ctx.repo.update_cycle(process.id, seq, lambda c: c.begin_closing(now)) is not None
    filled = ctx.repo.complete_cycle(
        process.id,
        seq,
        lambda c: c.begin_closing(now),
        new_cycle(process, seq + 1, ctx),
        lambda stored: stored.after_cycle(stored.latest_checkpoint, seq + 1),
    )
    return filled is not None


def close_cycle(ctx: Context, process_id: str, seq: int) -> bool:
    """Aggregate a ``closing`` cycle and open the next one; safe to call any number of times.

    The one closing path: the cycle trigger calls it when a cycle enters ``closing``,
    and the tick calls it for a closing cycle nobody is aggregating. Each call is an
    attempt with its own lease, renewed while it works; every write it makes is fenced
    by that lease, so an attempt overtaken after its lease ran out changes nothing.
    It never jams: a diff that cannot be used is left out (and recorded); too few usable
    diffs reopen the cycle as an expired one would be; any other failure releases the
    lease for the next attempt, and after ``MAX_AGGREGATION_ATTEMPTS`` the cycle is
    ``failed``. A process being deleted is not aggregated; an aggregation that was
    already running when the deletion began cannot complete (``Process.after_cycle``
    declines) and deletes the checkpoint it wrote. True if this call completed the cycle.
    """
    process = ctx.repo.get_process(process_id)
    if process is None or process.status is not ProcessStatus.TRAINING:
        return False
    if process.server_config.is_async and process.latest_checkpoint < seq:
        return False  # its checkpoint is not out yet: that closing calls this one when done
    lease = cycle_lease(ctx, process_id, seq)
    cycle = lease.take()
    if cycle is None:
        return False
    with lease.kept():
        try:
            return _aggregate(ctx, process, cycle, lease)
        except LeaseLost:
            log.warning("aggregation of %s/%d overtaken: it changes nothing", process_id, seq)
            return False
        except Exception as error:
            if is_transient(error):  # the store or network, briefly: try again soon
                lease.update(lambda c: c.release_lease(lease.holder))
                raise
            _record_failure(lease, f"{type(error).__name__}: {error}"[:500])
            return False


def cycle_lease(ctx: Context, process_id: str, seq: int) -> Lease[Cycle]:
    def update(change: Callable[[Cycle], Cycle | None]) -> Cycle | None:
        return ctx.repo.update_cycle(process_id, seq, change)

    return Lease(ctx, update, f"cycle {process_id}/{seq}")


def _record_failure(lease: Lease[Cycle], reason: str) -> None:
    failed = lease.update(lambda c: c.record_failure(lease.holder, reason))
    log.error("aggregation of %s failed: %s", lease.what, reason)
    if failed is not None and failed.status is CycleStatus.FAILED:
        log.error("%s is failed after %d attempts", lease.what, failed.aggregation_runs)


def _aggregate(ctx: Context, process: Process, cycle: Cycle, lease: Lease[Cycle]) -> bool:
    config, seq = process.server_config, cycle.seq
    if config.is_async:  # a buffer's checkpoint was published after the buffer opened
        cycle = replace(cycle, model_object=checkpoint_object(ctx, process, seq))
    checkpoint = decode_state(ctx.blobs.get(cycle.model), "checkpoint")
    reported = list(ctx.repo.reported_assignments(process.id, seq))
    counts = [a.num_samples or 0 for a in reported]
    skipped: dict[str, str] = {}
    weights = base = fedavg_weights(counts, config.max_weight_fraction)
    method = config.aggregation
    if config.is_async:  # FedBuff: damped by staleness, then divided by the undamped total
        base = weights if method is Aggregation.FEDAVG else [1.0] * len(reported)
        stalenesses = [a.staleness or 0 for a in reported]
        weights = damped_weights(base, stalenesses, config.staleness_exponent)
        method = Aggregation.FEDAVG
    clip_norm = _clip_norm(ctx, process, cycle)
    try:
        if fans_out(len(reported), config):
            step = fanout.gather(ctx, process, seq, reported, weights, skipped)
            if step is None:  # groups still at work: each one done calls the closing again
                lease.update(lambda c: c.release_lease(lease.holder))
                return False
        else:
            diffs = StoredDiffs(ctx.blobs, process.schema, reported, weights, skipped)
            step = combine(
                checkpoint,
                diffs,
                method=method,
                trim_fraction=config.trim_fraction,
                clip_norm=clip_norm,
            )
        usable = step.num_diffs
    except AggregationFailed:
        if not skipped:
            raise
        step, usable = None, 0  # every diff was unusable
    lease.check()
    for worker_id, reason in skipped.items():
        ctx.repo.update_assignment(process.id, seq, worker_id, _skip(reason))
    reasons = dict(Counter(skipped.values()))
    if config.is_async:
        if step is None:  # a buffer cannot reopen: the next one took its place
            raise AggregationFailed(f"no usable diff in buffer {seq}: {reasons}")
        undamp(
            step, sum(b for a, b in zip(reported, base, strict=True) if a.worker_id not in skipped)
        )
    if step is None or not has_enough(usable, config):
        _reopen(ctx, process, seq, lease, reasons)
        return False
    spending = _privatize(ctx, process, cycle, step, clip_norm)
    updated, optimizer_state = _next_checkpoint(ctx, process, cycle, checkpoint, step)
    _check_finite(updated)
    lease.check()
    published = blobs.checkpoint_object(process.id, seq + 1, lease.holder)
    ctx.blobs.put(published, encode_state(updated))
    state_object = None
    if optimizer_state is not None:
        state_object = blobs.optimizer_state_object(process.id, seq + 1, lease.holder)
        ctx.blobs.put(state_object, encode_state(optimizer_state))
    total_samples = sum(a.num_samples or 0 for a in reported if a.worker_id not in skipped)
    summary = CycleSummary(
        num_diffs=usable,
        total_samples=total_samples,  # a Python int: no overflow whatever the counts
        checkpoint_out=seq + 1,
        closed_at=ctx.clock.now(),
        checkpoint_object=published,
        optimizer_state_object=state_object,
        epsilon=spending.epsilon if spending else None,
        privacy_spent=spending.spent if spending else None,
        mean_staleness=mean_staleness(reported) if config.is_async else None,
        next_clip_norm=spending.next_clip_norm if spending else None,
    )
    last = is_last_cycle(seq, config) or (spending is not None and spending.exhausted)
    next_cycle = None if last or config.is_async else new_cycle(process, seq + 1, ctx, published)
    completed = ctx.repo.complete_cycle(
        process.id,
        seq,
        lambda c: c.complete(lease.holder, summary, reasons),
        next_cycle,
        lambda stored: stored.after_cycle(seq + 1, _next_of(stored, next_cycle, last)),
    )
    if completed is None:  # overtaken since the last check, or the process is being deleted
        for written in (published, state_object):
            if written is not None:
                ctx.blobs.delete(written)
        raise LeaseLost
    _notify(pool.after_cycle_completed, ctx, process.id, seq)
    log.info(
        "cycle %s/%d closed: %d diffs, %d samples, %d skipped",
        *(process.id, seq, usable, total_samples, len(skipped)),
    )
    if config.is_async:
        _close_next_buffer(ctx, process.id, seq + 1)
    return True


def _next_of(stored: Process, next_cycle: Cycle | None, last: bool) -> int | None:
    """The cycle training goes on in: the one this closing opens; async, the buffer
    already open (opened when this one filled); None once training is over."""
    if last:
        return None
    return next_cycle.seq if next_cycle is not None else stored.current_cycle


def _close_next_buffer(ctx: Context, process_id: str, seq: int) -> None:
    """Async: a buffer that filled while the one before was aggregated waited for this
    checkpoint; aggregate it now (the tick does, if this instance dies first)."""
    following = ctx.repo.get_cycle(process_id, seq)
    if following is not None and following.status is CycleStatus.CLOSING:
        close_cycle(ctx, process_id, seq)


def _next_checkpoint(
    ctx: Context, process: Process, cycle: Cycle, checkpoint: Tensors, step: Step
) -> tuple[StateDict, StateDict | None]:
    """The checkpoint the step makes, and the server optimizer's state to store with it
    (None without one). The state read is the one stored with the checkpoint this cycle
    trained from, so a closing done again starts from the same state: it counts once."""
    config = process.server_config
    if config.server_optimizer is None:
        return apply_step(checkpoint, step, config.server_lr), None
    before = optimizers.OptimizerState()
    previous = _previous_summary(ctx, process, cycle)
    if previous is not None:
        name = previous.optimizer_state_object
        if name is None:
            raise AggregationFailed(f"checkpoint {cycle.seq} has no server optimizer state")
        before = optimizers.decode(view_state(ctx.blobs.get(name), "optimizer state"))
    updated, after = optimizers.step(checkpoint, step.delta, config.server_optimizer, before)
    return updated, optimizers.encode(after)


def _previous_summary(ctx: Context, process: Process, cycle: Cycle) -> CycleSummary | None:
    """What the closing before this cycle stored (None for the first cycle)."""
    if cycle.seq == 1:
        return None
    previous = ctx.repo.get_cycle(process.id, cycle.seq - 1)
    if previous is None or previous.summary is None:
        raise AggregationFailed(f"cycle {cycle.seq - 1} has no summary")
    return previous.summary


def _clip_norm(ctx: Context, process: Process, cycle: Cycle) -> float | None:
    """``dp``: the clip norm of this closing. Adaptive, the one the completion that
    published this cycle's checkpoint stored (``clip_norm`` for the first cycle), so a
    closing done again clips as the first attempt did and only published updates count."""
    dp = process.server_config.dp
    if dp is None:
        return None
    previous = _previous_summary(ctx, process, cycle) if dp.target_quantile else None
    if previous is not None and previous.next_clip_norm is None:
        raise AggregationFailed(f"cycle {cycle.seq - 1} has no adaptive clip norm")
    return dp.clip_norm_after(previous.next_clip_norm if previous else None)


def _privatize(
    ctx: Context, process: Process, cycle: Cycle, step: Step, clip_norm: float | None
) -> privacy.Spending | None:
    """``dp``: Gaussian noise of std ``z * C / m`` (adaptive: ``z_delta * C / m``) added
    to the clipped mean (in place), the privacy spent so far and, adaptive, the next
    clip norm. The cycles before are the ones stored with the checkpoint this cycle
    trained from, so a closing done again counts once."""
    dp, config = process.server_config.dp, process.server_config
    if dp is None or clip_norm is None:
        return None
    privacy.add_noise(step.delta, dp.noise_std(step.num_diffs, clip_norm), ctx.noise())
    previous = _previous_summary(ctx, process, cycle)
    before = previous.privacy_spent if previous is not None else {}
    if before is None:
        raise AggregationFailed(f"cycle {cycle.seq - 1} has no privacy accounting")
    population = dp.population or len(ctx.repo.process_workers(process.id))
    next_diffs = config.max_workers or step.num_diffs  # dp requires max_workers
    spending = privacy.account(dp, before, step.num_diffs, population, next_diffs)
    within = step.within_clip or 0
    next_clip = dp.next_clip_norm(clip_norm, within, step.num_diffs, ctx.noise())
    return replace(spending, next_clip_norm=next_clip)


def _skip(reason: str) -> Callable[[Assignment], Assignment | None]:
    return lambda assignment: assignment.skip(reason) if assignment.reported else None


def _check_finite(state: Mapping[str, Any]) -> None:
    """A checkpoint that is not finite would poison every later cycle: refuse it."""
    for name, tensor in state.items():
        if np.issubdtype(tensor.dtype, np.floating) and not np.isfinite(tensor).all():
            raise AggregationFailed(f"the new checkpoint's '{name}' is not finite")


def _reopen(
    ctx: Context, process: Process, seq: int, lease: Lease[Cycle], skipped: Mapping[str, int]
) -> None:
    """Too few usable diffs: the cycle takes reports again, as at an expired deadline."""
    config = process.server_config
    drop = config.on_expiry == "reset"
    deadline = deadline_for(ctx.clock.now(), config)
    reopened = lease.update(
        lambda c: c.reopen(lease.holder, deadline, skipped, drop_unreported=drop)
    )
    if reopened is None:
        raise LeaseLost
    log.warning("cycle %s/%d reopened: too few usable diffs (%s)", process.id, seq, skipped)
    if drop:
        _drop_places(ctx, process.id, reopened)


def _drop_places(ctx: Context, process_id: str, cycle: Cycle) -> None:
    """Free the unreported places a reset into ``cycle.epoch`` dropped, record that it is
    done, and tell the workers. Safe to repeat: the tick does it again for a reset whose
    instance died before recording it (each place is freed once, each push sent once)."""
    dropped = ctx.repo.drop_assignments(
        process_id, cycle.seq, lambda a: a.dropped_by_reset(cycle.epoch)
    )
    ctx.repo.update_cycle(process_id, cycle.seq, lambda c: c.places_dropped(cycle.epoch))
    _notify(pool.after_cycle_reset, ctx, process_id, cycle.seq, dropped)


def _notify(send: Callable[..., None], *args: Any) -> None:
    """Lifecycle pushes follow a committed transition; their failure must not undo it."""
    try:
        send(*args)
    except Exception:
        log.exception("lifecycle push %s failed", send.__name__)


@dataclass
class TickReport:
    closed: list[str] = field(default_factory=list)
    reset: list[str] = field(default_factory=list)
    extended: list[str] = field(default_factory=list)
    redriven: list[str] = field(default_factory=list)
    invited: list[str] = field(default_factory=list)
    freed: list[str] = field(default_factory=list)
    """Async: processes whose abandoned places were freed."""
    failed: list[str] = field(default_factory=list)


def tick(ctx: Context) -> TickReport:
    """Enforce deadlines and re-drive stuck closings, for every training process.

    Re-drives run on one background thread (one aggregation in memory at a time), so a
    long aggregation does not hold up the other processes' deadlines and invitations;
    the tick answers once they are done too."""
    report = TickReport()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="redrive") as redrives:
        pending: list[tuple[str, Future[bool]]] = []
        for process in ctx.repo.training_processes():
            label = f"{process.name}:{process.version}#{process.current_cycle}"
            try:
                redrive = _tick_process(ctx, process, label, report)
                if redrive is not None:
                    pending.append((label, redrives.submit(_redrive, ctx, process.id, redrive)))
            except Exception:  # one broken process must not stop the others' deadlines
                log.exception("tick failed for %s", label)
                report.failed.append(label)
        for label, outcome in pending:
            try:
                if outcome.result():
                    report.redriven.append(label)
            except Exception:
                log.exception("re-driving %s failed", label)
                report.failed.append(label)
    return report


def _redrive(ctx: Context, process_id: str, seq: int) -> bool:
    """True if this attempt completed the closing, False if another attempt holds it;
    raises if it failed."""
    if close_cycle(ctx, process_id, seq):
        return True
    after = ctx.repo.get_cycle(process_id, seq)
    if after is not None and after.last_error is not None:
        raise AggregationFailed(after.last_error)
    return False


def _tick_process(ctx: Context, process: Process, label: str, report: TickReport) -> int | None:
    """The process's tick work; the number of a closing cycle to re-drive, if any."""
    redrive = _enforce_deadline(ctx, process, label, report)
    # Catches what triggers missed: pools that filled up, availability that lapsed.
    if pool.invite(ctx, process.id):
        report.invited.append(label)
    return redrive


def _tend_buffers(ctx: Context, process: Process, label: str, report: TickReport) -> int | None:
    """Async: free the places not reported by their deadline, close a full buffer whose
    report events were lost, and re-drive the oldest closing buffer if nobody aggregates
    it (the ones after it wait for its checkpoint and follow it)."""
    now, config = ctx.clock.now(), process.server_config
    if ctx.repo.drop_assignments(process.id, LOBBY, lambda a: place_expired(a, now, config)):
        report.freed.append(label)
    if on_report(ctx, process.id, process.current_cycle):
        report.closed.append(label)
    oldest = ctx.repo.get_cycle(process.id, process.latest_checkpoint)
    grace = timedelta(seconds=ctx.settings.redrive_grace_s)
    if oldest is not None and oldest.needs_redrive(now, grace):
        return oldest.seq
    return None


def _enforce_deadline(ctx: Context, process: Process, label: str, report: TickReport) -> int | None:
    if process.server_config.is_async:
        return _tend_buffers(ctx, process, label, report)
    cycle = ctx.repo.get_cycle(process.id, process.current_cycle)
    if cycle is None:
        return None
    now = ctx.clock.now()
    if cycle.status is CycleStatus.CLOSING:
        grace = timedelta(seconds=ctx.settings.redrive_grace_s)
        return cycle.seq if cycle.needs_redrive(now, grace) else None
    if cycle.status is not CycleStatus.OPEN:
        return None
    if cycle.drop_pending:  # the instance that reset it died before freeing the places
        _drop_places(ctx, process.id, cycle)
    config = process.server_config
    # PyGrid's readiness rule: also catches a full cycle whose report events were lost.
    if is_ready(cycle, ctx.repo.count_reported(process.id, cycle.seq), config, now):
        if ctx.repo.update_cycle(process.id, cycle.seq, lambda c: c.begin_closing(now)):
            report.closed.append(label)  # the cycle trigger aggregates it
        return None
    if not is_expired(cycle, now):
        return None
    drop = config.on_expiry == "reset"
    deadline = deadline_for(now, config)
    reset = ctx.repo.update_cycle(
        process.id, cycle.seq, lambda c: c.reset(cycle, deadline, drop_unreported=drop)
    )
    if reset is None:  # another tick got there first
        return None
    (report.reset if drop else report.extended).append(label)
    if drop:
        _drop_places(ctx, process.id, reset)
    return None
