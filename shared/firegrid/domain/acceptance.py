"""Whether a worker may join the open cycle (everything but the capacity cap).

The ``max_workers`` cap is enforced by the repository with create-if-absent
slots, because only the store can decide it atomically under load.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from firegrid.domain.config import ServerConfig
from firegrid.domain.cycle import Cycle, seconds_until


class RejectReason(StrEnum):
    FL_COMPLETED = "fl_completed"
    CYCLE_CLOSING = "cycle_closing"
    CYCLE_FULL = "cycle_full"
    ALREADY_REPORTED = "already_reported"
    NOT_REUSABLE = "not_reusable"
    TOO_SLOW = "too_slow"
    NOT_INVITED = "not_invited"
    CYCLE_FAILED = "cycle_failed"
    CONCURRENCY_FULL = "concurrency_full"
    """Async: ``max_concurrency`` devices are training."""


# A closing cycle opens the next one within seconds; ask again soon.
CLOSING_RETRY_S = 5


@dataclass(frozen=True, kw_only=True)
class Speeds:
    ping: float | None = None
    download: float | None = None
    upload: float | None = None


@dataclass(frozen=True, kw_only=True)
class Rejection:
    reason: RejectReason
    timeout: int | None
    """Seconds until the device should ask again; None means training is over."""


def reject(reason: RejectReason, cycle: Cycle, config: ServerConfig, now: datetime) -> Rejection:
    if reason is RejectReason.FL_COMPLETED:
        return Rejection(reason=reason, timeout=None)
    if reason is RejectReason.CYCLE_CLOSING:
        return Rejection(reason=reason, timeout=CLOSING_RETRY_S)
    if reason is RejectReason.CYCLE_FAILED:  # until an operator acts
        return Rejection(reason=reason, timeout=config.retry_after)
    return Rejection(reason=reason, timeout=seconds_until(cycle.deadline, now, config.retry_after))


def screen(
    *,
    config: ServerConfig,
    cycle: Cycle,
    speeds: Speeds,
    last_cycle: int | None,
    start_key: str | None,
) -> RejectReason | None:
    """The first rule the worker fails, or None if it may take a place."""
    if config.require_invitation and start_key != cycle.start_key:
        return RejectReason.NOT_INVITED
    if not may_rejoin(config, cycle.seq, last_cycle):
        return RejectReason.NOT_REUSABLE
    if _below(speeds.download, config.minimum_download_speed) or _below(
        speeds.upload, config.minimum_upload_speed
    ):
        return RejectReason.TOO_SLOW
    return None


def may_rejoin(config: ServerConfig, seq: int, last_cycle: int | None) -> bool:
    """``do_not_reuse_workers_until_cycle``: cycles that must pass after a worker's last one."""
    gap = config.do_not_reuse_workers_until_cycle
    return last_cycle is None or gap == 0 or seq - last_cycle >= gap


def _below(measured: float | None, minimum: float | None) -> bool:
    return minimum is not None and (measured is None or measured < minimum)
