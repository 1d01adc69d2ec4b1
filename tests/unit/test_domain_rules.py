"""The rules the repository used to decide, now pure domain functions: transitions of a
cycle and a process, report admission, token moves, the current version, slot choice."""

from __future__ import annotations

import dataclasses
import math
import random
from datetime import UTC, datetime, timedelta

import pytest

from firegrid.domain.config import ServerConfig
from firegrid.domain.cycle import Cycle, CycleStatus, CycleSummary, ProcessStatus
from firegrid.domain.errors import Conflict
from firegrid.domain.model import (
    HOSTING_STALE_AFTER,
    Assignment,
    Process,
    Report,
    Worker,
    current_version,
    first_assignment,
    token_holders_to_clear,
)
from firegrid.domain.selection import PROBES, Places

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
OPEN = Cycle(
    process_id="p",
    seq=1,
    status=CycleStatus.OPEN,
    epoch=0,
    opened_at=T0,
    deadline=T0 + timedelta(minutes=1),
    start_key="k",
)
SUMMARY = CycleSummary(num_diffs=2, total_samples=9, checkpoint_out=2, closed_at=T0)


def test_a_cycle_closes_once_and_one_holder_aggregates() -> None:
    closing = OPEN.begin_closing(T0)
    assert closing is not None and closing.status is CycleStatus.CLOSING
    assert closing.closing_at == T0
    assert closing.begin_closing(T0) is None

    leased = closing.take_lease(T0, T0 + timedelta(minutes=2), "a")
    assert leased is not None and leased.aggregation_runs == 1
    assert leased.take_lease(T0 + timedelta(minutes=1), T0, "b") is None  # still held
    again = leased.take_lease(T0 + timedelta(minutes=2), T0 + timedelta(minutes=4), "b")
    assert again is not None and again.aggregation_runs == 2  # expired: re-driven
    assert OPEN.take_lease(T0, T0, "a") is None

    # The overtaken holder "a" can no longer renew, complete, fail, release or reopen.
    assert again.renew_lease("a", T0 + timedelta(hours=1)) is None
    assert again.complete("a", SUMMARY) is None
    assert again.record_failure("a", "boom") is None
    assert again.release_lease("a") is None
    assert again.reopen("a", None, {}, drop_unreported=True) is None
    renewed = again.renew_lease("b", T0 + timedelta(minutes=6))
    assert renewed is not None and renewed.closing_lease_until == T0 + timedelta(minutes=6)

    done = renewed.complete("b", SUMMARY)
    assert done is not None
    assert (done.status, done.summary, done.closing_lease_until, done.closing_lease_holder) == (
        CycleStatus.COMPLETED,
        SUMMARY,
        None,
        None,
    )
    assert done.complete("b", SUMMARY) is None
    assert OPEN.complete("b", SUMMARY) is None


def test_a_reset_applies_once_to_the_cycle_it_saw() -> None:
    later = T0 + timedelta(hours=1)
    dropped = OPEN.reset(OPEN, later, drop_unreported=True)
    extended = OPEN.reset(OPEN, later, drop_unreported=False)

    assert dropped == dataclasses.replace(
        OPEN, deadline=later, epoch=1, resets=1, drop_pending=True
    )
    assert extended == dataclasses.replace(OPEN, deadline=later, resets=1)
    assert dropped.places_dropped(1) == dataclasses.replace(dropped, drop_pending=False)
    assert dropped.places_dropped(0) is None  # a later reset is pending: not done yet
    assert OPEN.places_dropped(0) is None and extended.places_dropped(0) is None
    assert dropped.reset(OPEN, later, drop_unreported=True) is None  # someone reset it first
    assert OPEN.begin_closing(T0).reset(OPEN, later, drop_unreported=True) is None


def test_a_reset_drops_only_unreported_places_of_earlier_epochs() -> None:
    placed = first_assignment("w", OPEN, T0, slot=3)
    reported = dataclasses.replace(placed, reported_at=T0)
    assert placed.dropped_by_reset(1)
    assert not placed.dropped_by_reset(0)
    assert not reported.dropped_by_reset(1)


def _process(**changes: object) -> Process:
    base = Process(
        id="p",
        name="mnist",
        version="1",
        client_config={},
        server_config=ServerConfig.parse({"cycle_length": 5, "num_cycles": 2}),
        status=ProcessStatus.HOSTING,
        current_cycle=1,
        latest_checkpoint=1,
        key_secret="s",
        schema={},
        created_at=T0,
    )
    return dataclasses.replace(base, **changes)


def test_a_process_moves_on_after_each_cycle_and_completes_after_the_last() -> None:
    training = _process().started()
    assert training.status is ProcessStatus.TRAINING

    moved = training.after_cycle(2, 2)
    assert (moved.current_cycle, moved.latest_checkpoint, moved.status) == (
        2,
        2,
        ProcessStatus.TRAINING,
    )
    done = moved.after_cycle(3, None)
    assert (done.current_cycle, done.latest_checkpoint, done.status) == (
        2,
        3,
        ProcessStatus.COMPLETED,
    )


def test_the_current_version_is_the_newest_one_neither_hosting_nor_deleting() -> None:
    old = _process(id="a", status=ProcessStatus.COMPLETED)
    new = _process(id="b", status=ProcessStatus.TRAINING, created_at=T0 + timedelta(1))
    being_hosted = _process(id="c", created_at=T0 + timedelta(2))
    deleting = _process(id="d", status=ProcessStatus.DELETING, created_at=T0 + timedelta(3))

    assert current_version([old, new, being_hosted, deleting]) == new
    assert current_version([being_hosted, deleting]) is None
    assert current_version([]) is None


def test_a_hosting_is_abandoned_only_once_stale_and_then_taken_over() -> None:
    hosting = _process()
    fresh = _process(key_secret="fresh", created_at=hosting.hosting_retry_at)
    just_before = hosting.hosting_retry_at - timedelta(microseconds=1)

    assert hosting.hosting_retry_at == T0 + HOSTING_STALE_AFTER
    assert not hosting.hosting_abandoned(just_before)
    assert hosting.taken_over_by(fresh, just_before) is None
    assert hosting.taken_over_by(fresh, hosting.hosting_retry_at) == fresh
    assert fresh.taken_over_by(hosting, hosting.hosting_retry_at) is None  # a second retry loses
    for status in (ProcessStatus.TRAINING, ProcessStatus.COMPLETED, ProcessStatus.DELETING):
        assert not _process(status=status).hosting_abandoned(T0 + timedelta(days=9))


def test_a_process_marked_for_deletion_takes_no_more_work() -> None:
    training = _process(status=ProcessStatus.TRAINING)

    marked = training.marked_for_deletion(T0)

    assert marked.status is ProcessStatus.DELETING
    assert marked.after_cycle(2, 2) is None and _process().after_cycle(2, 2) is None
    assert training.in_service() == training
    with pytest.raises(Conflict) as deleting:
        marked.in_service()
    assert deleting.value.code == "process_deleting"
    with pytest.raises(Conflict) as busy:
        _process().marked_for_deletion(T0)
    assert busy.value.code == "hosting_in_progress"
    assert _process().marked_for_deletion(T0 + HOSTING_STALE_AFTER).status is ProcessStatus.DELETING


def test_report_admission() -> None:
    placed = first_assignment("w", OPEN, T0, slot=None)
    report = Report(epoch=0, num_samples=4, diff_object="d", at=T0)

    counted = report.admit(OPEN, placed)
    assert counted == dataclasses.replace(placed, reported_at=T0, num_samples=4, diff_object="d")
    cases: list[tuple[Cycle | None, Assignment | None, Report, str]] = [
        (None, placed, report, "cycle_closed"),
        (OPEN.begin_closing(T0), placed, report, "cycle_closed"),
        (OPEN, None, report, "assignment_dropped"),
        (OPEN, placed, dataclasses.replace(report, epoch=1), "assignment_dropped"),
        (OPEN, counted, report, "already_reported"),
    ]
    for cycle, assignment, sent, code in cases:
        with pytest.raises(Conflict) as refused:
            sent.admit(cycle, assignment)
        assert refused.value.code == code


def test_a_token_belongs_to_one_worker_of_a_process() -> None:
    worker = Worker(id="new", process_id="p", subject="s", created_at=T0)
    holders = [
        dataclasses.replace(worker, id="old", fcm_token="t"),
        dataclasses.replace(worker, fcm_token="t"),
        dataclasses.replace(worker, id="other-process", process_id="q", fcm_token="t"),
    ]
    assert [h.id for h in token_holders_to_clear(holders, worker)] == ["old"]

    registered = worker.with_token("t", ram_gb=1.0, cpu_cores=2, slow=True, available_until=T0)
    assert (registered.fcm_token, registered.available, registered.slow) == ("t", True, True)
    assert registered.without_token("other") is None  # it holds another token by now
    cleared = registered.without_token("t")
    assert cleared is not None and (cleared.fcm_token, cleared.available) == (None, False)
    withdrawn = registered.with_availability(False, T0)
    assert (withdrawn.available, withdrawn.available_until) == (False, None)


def test_probes_are_a_few_distinct_random_places_drawn_by_the_injected_rng() -> None:
    probes = Places(1000, random.Random(7)).probes()
    assert len(probes) == len(set(probes)) == PROBES and all(0 <= p < 1000 for p in probes)
    assert probes == Places(1000, random.Random(7)).probes()
    assert sorted(Places(3, random.Random(0)).probes()) == [0, 1, 2]  # never more than the cap
    firsts = {Places(1000, random.Random(seed)).probes()[0] for seed in range(50)}
    assert len(firsts) > 40  # spread, so concurrent claimants rarely collide


class CountingPlaces:
    """Taken places, counted per range as the store would, recording each count."""

    def __init__(self, taken: set[int]) -> None:
        self.taken, self.counts = taken, 0

    def __call__(self, lo: int, hi: int) -> int:
        self.counts += 1
        return sum(lo <= t < hi for t in self.taken)


@pytest.mark.parametrize("free", [0, 1, 517, 999])
def test_the_free_place_is_found_by_bisecting_counts_of_taken_places(free: int) -> None:
    store = CountingPlaces(set(range(1000)) - {free})

    assert Places(1000, random.Random(free)).free_place(store) == free
    assert store.counts <= 1 + math.ceil(math.log2(1000))  # not a listing of the 999 taken


def test_a_full_cycle_is_known_from_one_count() -> None:
    store = CountingPlaces(set(range(1000)))
    assert Places(1000, random.Random(0)).free_place(store) is None
    assert store.counts == 1
    assert Places(1, random.Random(0)).free_place(CountingPlaces(set())) == 0
