from datetime import UTC, datetime, timedelta

import pytest

from firegrid.domain.acceptance import RejectReason, Speeds, reject, screen
from firegrid.domain.config import ServerConfig
from firegrid.domain.cycle import Cycle, CycleStatus, is_last_cycle, is_ready, seconds_until
from firegrid.wire import rejection_body

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _cycle(seq: int = 1, deadline: datetime | None = T0 + timedelta(seconds=60)) -> Cycle:
    return Cycle(
        process_id="p",
        seq=seq,
        status=CycleStatus.OPEN,
        epoch=0,
        opened_at=T0,
        deadline=deadline,
        start_key="key",
    )


def _config(**kw: object) -> ServerConfig:
    return ServerConfig.parse({"cycle_length": 60, "num_cycles": 3} | kw)


@pytest.mark.parametrize(
    ("diffs", "now_s", "ready"),
    [(0, 0, False), (2, 0, False), (3, 0, True), (2, 61, True), (1, 61, False)],
)
def test_readiness_is_pygrids_rule(diffs: int, now_s: int, ready: bool) -> None:
    config = _config(min_diffs=2, max_diffs=3)
    assert is_ready(_cycle(), diffs, config, T0 + timedelta(seconds=now_s)) is ready


def test_without_min_diffs_one_diff_is_enough_at_the_deadline() -> None:
    config = _config()
    assert not is_ready(_cycle(), 0, config, T0 + timedelta(seconds=61))
    assert is_ready(_cycle(), 1, config, T0 + timedelta(seconds=61))


def test_timeouts_are_whole_positive_seconds() -> None:
    assert seconds_until(T0 + timedelta(seconds=10.2), T0, 60) == 11
    assert seconds_until(T0 - timedelta(seconds=5), T0, 60) == 1
    assert seconds_until(None, T0, 60) == 60


def test_training_is_over_without_a_timeout() -> None:
    rejection = reject(RejectReason.FL_COMPLETED, _cycle(), _config(), T0)
    assert rejection_body(rejection) == {"status": "rejected", "reason": "fl_completed"}
    full = rejection_body(reject(RejectReason.CYCLE_FULL, _cycle(), _config(), T0))
    assert full == {"status": "rejected", "reason": "cycle_full", "timeout": 60}


def test_last_cycle() -> None:
    assert is_last_cycle(3, _config())
    assert not is_last_cycle(2, _config())
    assert not is_last_cycle(10**6, _config(num_cycles=0))


def test_screen_rules() -> None:
    fast = Speeds(ping=1, download=10, upload=10)
    assert (
        screen(config=_config(), cycle=_cycle(), speeds=Speeds(), last_cycle=None, start_key=None)
        is None
    )
    slow = _config(minimum_download_speed=20)
    assert (
        screen(config=slow, cycle=_cycle(), speeds=fast, last_cycle=None, start_key=None)
        is RejectReason.TOO_SLOW
    )
    invite = _config(require_invitation=True)
    assert (
        screen(config=invite, cycle=_cycle(), speeds=fast, last_cycle=None, start_key="bad")
        is RejectReason.NOT_INVITED
    )
    assert (
        screen(config=invite, cycle=_cycle(), speeds=fast, last_cycle=None, start_key="key") is None
    )
    reuse = _config(do_not_reuse_workers_until_cycle=2)
    assert (
        screen(config=reuse, cycle=_cycle(seq=3), speeds=fast, last_cycle=2, start_key=None)
        is RejectReason.NOT_REUSABLE
    )
    assert (
        screen(config=reuse, cycle=_cycle(seq=4), speeds=fast, last_cycle=2, start_key=None) is None
    )
