"""The Repository port's contract, run against the in-memory fake and against Firestore.

The same tests, the same domain rules passed in: if the fake and the adapter ever
disagree about storage or atomicity, one of the two parametrisations fails. The
Firestore runs use a project of their own, which no trigger watches, so the
functions of the session stack never act on these documents.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from firegrid.domain.aggregation import Step
from firegrid.domain.buffered import LOBBY, BufferClosed, BufferedReport
from firegrid.domain.config import AuthConfig, ServerConfig
from firegrid.domain.cycle import Cycle, CycleStatus, CycleSummary, ProcessStatus
from firegrid.domain.diffs import TensorSpec
from firegrid.domain.errors import Conflict
from firegrid.domain.fanout import GroupStatus, partition
from firegrid.domain.model import Assignment, Process, Report, Worker
from firegrid.domain.selection import PROBES, Places
from firegrid.ports import Repository
from tests.fakes import FakeRepository

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
CONTRACT_PROJECT = "demo-contract"


@pytest.fixture(params=["fake", "firestore"])
def repo(request: pytest.FixtureRequest) -> Iterator[Repository]:
    if request.param == "fake":
        yield FakeRepository()
        return
    import requests
    from google.cloud import firestore

    from firegrid.adapters.firestore_repo import FirestoreRepository

    stack = request.getfixturevalue("stack_env")
    host = stack.firestore_host
    url = f"http://{host}/emulator/v1/projects/{CONTRACT_PROJECT}/databases/(default)/documents"
    requests.delete(url, timeout=30).raise_for_status()
    yield FirestoreRepository(firestore.Client(project=CONTRACT_PROJECT))


def process(pid: str = "p1", *, name: str = "mnist", version: str = "1.0", **kw: Any) -> Process:
    fields: dict[str, Any] = {
        "id": pid,
        "name": name,
        "version": version,
        "client_config": {"name": name, "version": version, "nested": {"k": [1, 2.5, "x"]}},
        "server_config": ServerConfig.parse(
            {
                "cycle_length": 60,
                "num_cycles": 3,
                "max_diffs": 2,
                "aggregation": "trimmed_mean",
                "authentication": {"secret": "abc"},
            }
        ),
        "status": ProcessStatus.HOSTING,
        "current_cycle": 1,
        "latest_checkpoint": 1,
        "key_secret": "s3cret",
        "schema": {
            "w.weight": TensorSpec("float32", (3, 4)),
            "w.bias": TensorSpec("float32", (3,)),
        },
        "plans": {"training_plan": "training_plan"},
        "plan_sizes": {"training_plan": 1234},
        "variant_sizes": {"layers": {"training_plan": 567}},
        "created_at": T0,
    }
    return Process(**(fields | kw))


def cycle(pid: str = "p1", seq: int = 1, **kw: Any) -> Cycle:
    fields: dict[str, Any] = {
        "process_id": pid,
        "seq": seq,
        "status": CycleStatus.OPEN,
        "epoch": 0,
        "opened_at": T0,
        "deadline": T0 + timedelta(minutes=1),
        "start_key": "start",
    }
    return Cycle(**(fields | kw))


def worker(wid: str, pid: str = "p1", **kw: Any) -> Worker:
    return Worker(**({"id": wid, "process_id": pid, "subject": f"s-{wid}", "created_at": T0} | kw))


def hosted(repo: Repository, pid: str = "p1", **kw: Any) -> Process:
    started = process(pid, **kw)
    repo.create_hosting(started)
    repo.start_training(started.started(), cycle(pid))
    return started.started()


def concurrently(count: int, call: Callable[[int], Any]) -> list[Any]:
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = call(index)
        except Exception as error:  # the test inspects what each call raised
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


# -- processes ----------------------------------------------------------------------


def test_a_process_round_trips_and_is_created_once(repo: Repository) -> None:
    original = process()
    repo.create_hosting(original)

    assert repo.get_process("p1") == original
    with pytest.raises(Conflict) as twice:
        repo.create_hosting(dataclasses.replace(original, key_secret="other"))
    assert twice.value.code == "duplicate_process"
    assert repo.get_process("p1") == original
    assert repo.get_process("nope") is None
    assert repo.get_process("p1").server_config.authentication == AuthConfig(secret="abc")


def test_start_training_opens_cycle_one_and_stores_the_status(repo: Repository) -> None:
    started = hosted(repo)

    assert repo.get_process("p1") == started
    assert repo.get_cycle("p1", 1) == cycle()
    assert repo.training_processes() == [started]
    assert repo.get_cycle("p1", 2) is None


def test_processes_are_found_by_name_and_version_and_deleted(repo: Repository) -> None:
    repo.create_hosting(process("a", version="1"))
    repo.create_hosting(process("b", version="2"))
    repo.create_hosting(process("c", name="other"))

    assert {p.id for p in repo.processes_named("mnist", None)} == {"a", "b"}
    assert [p.id for p in repo.processes_named("mnist", "2")] == ["b"]
    assert repo.processes_named("cifar", None) == []
    repo.delete_process("a")
    assert repo.get_process("a") is None


def test_recent_processes_lists_the_newest_hostings_first_in_any_status(
    repo: Repository,
) -> None:
    hostings = [process(f"p{i}", version=f"{i}.0", created_at=T0 + timedelta(i)) for i in range(4)]
    for hosting in hostings:
        repo.create_hosting(hosting)
    repo.start_training(hostings[1].started(), cycle("p1"))

    newest = repo.recent_processes(3)

    assert [p.id for p in newest] == ["p3", "p2", "p1"]
    assert newest[2].status is ProcessStatus.TRAINING
    assert newest[2].server_config == process().server_config
    assert repo.recent_processes(10)[-1].id == "p0"


def test_an_abandoned_hosting_is_taken_over_by_exactly_one_retry(repo: Repository) -> None:
    repo.create_hosting(process())
    later = T0 + timedelta(hours=1)
    retries = [process(created_at=later, key_secret=f"retry-{i}") for i in range(6)]

    taken = concurrently(6, lambda i: repo.update_process("p1", lambda p: p.taken_over_by(
        retries[i], later)))  # fmt: skip

    winners = [t for t in taken if t is not None]
    assert len(winners) == 1 and winners[0] in retries
    assert repo.get_process("p1") == winners[0]
    assert repo.update_process("p1", lambda p: p.taken_over_by(retries[0], later)) is None
    assert repo.update_process("absent", lambda p: p) is None


def test_a_process_marked_for_deletion_never_completes_a_cycle(repo: Repository) -> None:
    hosted(repo)
    leased(repo, "h")
    marked = repo.update_process("p1", lambda p: p.marked_for_deletion(T0))
    summary = CycleSummary(num_diffs=1, total_samples=3, checkpoint_out=2, closed_at=T0)

    done = repo.complete_cycle(
        "p1", 1, lambda c: c.complete("h", summary), cycle(seq=2), lambda p: p.after_cycle(2, 2)
    )

    assert done is None
    assert repo.get_process("p1") == marked and marked.status is ProcessStatus.DELETING
    assert repo.get_cycle("p1", 1).status is CycleStatus.CLOSING
    assert repo.get_cycle("p1", 2) is None
    assert repo.training_processes() == []


def test_deleting_a_process_removes_every_document_it_owns(repo: Repository) -> None:
    hosted(repo)
    hosted(repo, "other", name="other")
    open_cycle = repo.get_cycle("p1", 1)
    rng = random.Random(0)
    for wid in ("w1", "w2", "w3"):
        repo.save_worker(worker(wid))
        repo.claim_place("p1", open_cycle, wid, T0, Places(5, rng))
    repo.save_worker(worker("x", pid="other"))
    repo.record_report("p1", 1, "w1", report())
    repo.record_invitations("p1", 1, 0, ["w1", "w2"], T0)
    repo.mark_invited("p1", ["w1", "w2"], T0)
    assert repo.try_lock("p1", 1, "invite", T0, T0 + timedelta(seconds=60))
    leased(repo, "h")
    summary = CycleSummary(num_diffs=1, total_samples=7, checkpoint_out=2, closed_at=T0)
    repo.complete_cycle(
        "p1", 1, lambda c: c.complete("h", summary), cycle(seq=2), lambda p: p.after_cycle(2, 2)
    )
    repo.claim_push("p1", "k", {"type": "t", "created_at": T0})
    row = {"client_id": "c", "cycle_id": 1, "accuracy": 0.5, "num_samples": 3, "set": "test"}
    repo.add_metrics("p1", [row | {"client_id": f"c{i}"} for i in range(300)])
    repo.add_metrics("p1", [row | {"client_id": f"d{i}"} for i in range(300)])  # > one batch
    repo.update_process("p1", lambda p: p.marked_for_deletion(T0))

    deleted = repo.delete_process("p1")

    assert deleted == {
        "processes": 1,
        "cycles": 2,
        "assignments": 3,
        "slots": 3,
        "invitations": 2,
        "locks": 1,
        "report_claims": 1,
        "invited": 2,
        "pushes": 1,
        "metrics": 600,
        "workers": 3,
    }
    assert repo.get_process("p1") is None and repo.processes_named("mnist", None) == []
    assert repo.get_cycle("p1", 1) is None and repo.get_cycle("p1", 2) is None
    assert repo.assignments("p1", 1) == [] and repo.invitations("p1", 1) == {}
    assert repo.process_workers("p1") == [] and repo.last_invited("p1") == {}
    assert repo.list_metrics("p1") == [] and repo.recent_pushes("p1") == []
    assert repo.get_process("other") is not None and repo.get_cycle("other", 1) is not None
    assert [w.id for w in repo.process_workers("other")] == ["x"]
    assert repo.delete_process("p1") == {}  # nothing left: a second run is harmless


def test_a_second_deletion_finds_what_a_crashed_one_left_under_a_deleted_process(
    repo: Repository,
) -> None:
    row = {"client_id": "c", "cycle_id": 1, "accuracy": 0.5, "num_samples": 3, "set": "test"}
    repo.add_metrics("gone", [row])  # no process document above it
    repo.save_worker(worker("w1", pid="gone"))

    assert repo.delete_process("gone") == {"metrics": 1, "workers": 1}
    assert repo.list_metrics("gone") == [] and repo.get_worker("w1") is None


# -- workers ------------------------------------------------------------------------


def test_a_worker_is_saved_once_and_round_trips(repo: Repository) -> None:
    first = worker("w1", fcm_token="t", available=True, available_until=T0, ram_gb=1.5)

    assert repo.save_worker(first) == first
    assert repo.save_worker(worker("w1")) == first  # create-if-absent: the stored one wins
    assert repo.get_worker("w1") == first
    assert repo.get_worker("w2") is None


def test_update_worker_applies_a_change_without_losing_concurrent_ones(repo: Repository) -> None:
    repo.save_worker(worker("w1", cpu_cores=0))

    def increment(_: int) -> Worker | None:
        return repo.update_worker(
            "w1", lambda w: dataclasses.replace(w, cpu_cores=(w.cpu_cores or 0) + 1)
        )

    concurrently(12, increment)

    assert repo.get_worker("w1").cpu_cores == 12
    assert repo.update_worker("w1", lambda w: None) is None  # declined: nothing written
    assert repo.update_worker("absent", lambda w: w) is None
    assert repo.get_worker("absent") is None


def test_workers_are_listed_by_process_availability_and_token(repo: Repository) -> None:
    for i in range(35):
        repo.save_worker(worker(f"w{i}", fcm_token=f"tok-{i}", available=i % 2 == 0))
    repo.save_worker(worker("x", pid="p2", fcm_token="tok-1"))

    assert len(repo.process_workers("p1")) == 35
    assert {w.id for w in repo.process_workers("p1", available_only=True)} == {
        f"w{i}" for i in range(0, 35, 2)
    }
    tokens = [f"tok-{i}" for i in range(35)]  # more than one 'in' filter holds
    assert len(repo.workers_with_tokens("p1", tokens)) == 35
    assert [w.id for w in repo.workers_with_tokens("p2", ["tok-1"])] == ["x"]


def test_invitation_times_are_kept_apart_from_workers(repo: Repository) -> None:
    repo.save_worker(worker("w1"))
    repo.mark_invited("p1", ["w1", "w2"], T0)
    repo.mark_invited("p1", ["w2"], T0 + timedelta(hours=1))

    assert repo.last_invited("p1") == {"w1": T0, "w2": T0 + timedelta(hours=1)}
    assert repo.last_invited("p2") == {}
    assert repo.get_worker("w1") == worker("w1")


# -- cycles -------------------------------------------------------------------------


def test_update_cycle_applies_the_domain_transition_once(repo: Repository) -> None:
    hosted(repo)
    now = T0 + timedelta(minutes=2)

    closing = concurrently(8, lambda _: repo.update_cycle("p1", 1, lambda c: c.begin_closing(now)))
    assert sum(1 for c in closing if c is not None) == 1

    leases = concurrently(
        8,
        lambda _: repo.update_cycle("p1", 1, lambda c: c.take_lease(now, now + timedelta(1), "h")),
    )
    assert sum(1 for c in leases if c is not None) == 1
    stored = repo.get_cycle("p1", 1)
    assert (stored.status, stored.aggregation_runs) == (CycleStatus.CLOSING, 1)
    assert stored.closing_at == now
    assert repo.update_cycle("p1", 9, lambda c: c) is None


def test_counters_survive_concurrent_changes(repo: Repository) -> None:
    hosted(repo)

    concurrently(
        10,
        lambda _: repo.update_cycle("p1", 1, lambda c: dataclasses.replace(c, resets=c.resets + 1)),
    )

    assert repo.get_cycle("p1", 1).resets == 10


def leased(repo: Repository, holder: str) -> None:
    """Cycle 1 closing, its aggregation lease held by ``holder``."""
    repo.update_cycle("p1", 1, lambda c: c.begin_closing(T0))
    repo.update_cycle("p1", 1, lambda c: c.take_lease(T0, T0 + timedelta(minutes=1), holder))


def test_complete_cycle_opens_the_next_and_moves_the_process_on(repo: Repository) -> None:
    hosted(repo)
    leased(repo, "h")
    summary = CycleSummary(
        num_diffs=2,
        total_samples=2**70,
        checkpoint_out=2,
        closed_at=T0,
        checkpoint_object="c2",
        optimizer_state_object="o2",
        epsilon=1.25,
        privacy_spent={"20/100": 3, "5/100": 1},  # map keys with a slash
        next_clip_norm=0.75,
    )

    def progressed(p: Process) -> Process | None:
        return p.after_cycle(2, 2)

    overtaken = repo.complete_cycle(
        "p1", 1, lambda c: c.complete("old", summary), cycle(seq=2), progressed
    )

    done = repo.complete_cycle(
        "p1", 1, lambda c: c.complete("h", summary), cycle(seq=2), progressed
    )
    again = repo.complete_cycle("p1", 1, lambda c: c.complete("h", summary), None, progressed)

    assert overtaken is None and done is not None and again is None
    assert repo.get_cycle("p1", 1).status is CycleStatus.COMPLETED
    assert repo.get_cycle("p1", 1).summary == summary  # beyond int64, kept; the names, dp too
    assert repo.get_cycle("p1", 2) == cycle(seq=2)
    stored = repo.get_process("p1")
    assert (stored.current_cycle, stored.latest_checkpoint) == (2, 2)
    assert stored.status is ProcessStatus.TRAINING


def test_recent_cycles_lists_the_highest_seq_first_up_to_a_limit(repo: Repository) -> None:
    hosted(repo)
    summary = CycleSummary(num_diffs=1, total_samples=3, checkpoint_out=2, closed_at=T0)
    for seq in range(1, 12):  # past 10, so that an order of seq as text would show
        repo.update_cycle("p1", seq, lambda c: c.begin_closing(T0))
        repo.update_cycle("p1", seq, lambda c: c.take_lease(T0, T0 + timedelta(1), "h"))
        repo.complete_cycle(
            "p1", seq, lambda c: c.complete("h", summary), cycle(seq=seq + 1),
            lambda p, after=seq + 1: p.after_cycle(after, after),
        )  # fmt: skip

    latest = repo.recent_cycles("p1", 3)

    assert [c.seq for c in latest] == [12, 11, 10]
    assert latest[0].status is CycleStatus.OPEN
    assert latest[1].summary == summary
    assert [c.seq for c in repo.recent_cycles("p1", 20)] == list(range(12, 0, -1))
    assert repo.recent_cycles("p2", 10) == []


def test_the_last_cycle_completes_the_process(repo: Repository) -> None:
    hosted(repo)
    leased(repo, "h")
    summary = CycleSummary(num_diffs=1, total_samples=3, checkpoint_out=2, closed_at=T0)

    repo.complete_cycle(
        "p1", 1, lambda c: c.complete("h", summary), None, lambda p: p.after_cycle(2, None)
    )

    assert repo.get_process("p1").status is ProcessStatus.COMPLETED
    assert repo.training_processes() == []


def test_a_process_read_again_is_fresh_and_another_hosting_of_its_id_is_read_whole(
    repo: Repository,
) -> None:
    hosted(repo)
    assert repo.get_process("p1").status is ProcessStatus.TRAINING  # now known to the instance
    leased(repo, "h")
    summary = CycleSummary(num_diffs=1, total_samples=3, checkpoint_out=2, closed_at=T0)
    repo.complete_cycle(
        "p1", 1, lambda c: c.complete("h", summary), cycle(seq=2), lambda p: p.after_cycle(2, 2)
    )
    progressed = repo.get_process("p1")
    assert (progressed.current_cycle, progressed.latest_checkpoint) == (2, 2)
    repo.update_process("p1", lambda p: p.marked_for_deletion(T0))
    assert repo.get_process("p1").status is ProcessStatus.DELETING  # the 409 cannot be stale
    assert [p.status for p in repo.processes_named("mnist", None)] == [ProcessStatus.DELETING]
    repo.delete_process("p1")
    assert repo.get_process("p1") is None and repo.processes_named("mnist", None) == []

    later = T0 + timedelta(hours=1)
    again = hosted(repo, key_secret="another", created_at=later, plans={"p": "p"}, plan_sizes={})

    assert repo.get_process("p1") == again
    assert repo.processes_named("mnist", "1.0") == [again]


def test_an_uncapped_place_is_claimed_once_per_worker(repo: Repository) -> None:
    hosted(repo)
    open_cycle = repo.get_cycle("p1", 1)

    first = repo.claim_place("p1", open_cycle, "w1", T0, None)
    again = repo.claim_place("p1", open_cycle, "w1", T0 + timedelta(1), None)

    assert first == again == Assignment(worker_id="w1", seq=1, epoch=0, assigned_at=T0)
    assert repo.get_assignment("p1", 1, "w1") == first
    assert repo.count_assigned("p1", 1) == 1


def test_capped_places_are_never_overbooked(repo: Repository) -> None:
    hosted(repo)
    open_cycle = repo.get_cycle("p1", 1)

    def claim(i: int) -> Assignment | None:
        return repo.claim_place("p1", open_cycle, f"w{i}", T0, Places(5, random.Random(i)))

    claims = concurrently(16, claim)

    placed = [a for a in claims if a is not None]
    assert len(placed) == 5 and claims.count(None) == 11
    assert sorted(a.slot for a in placed) == [0, 1, 2, 3, 4]
    assert repo.count_assigned("p1", 1) == 5
    again = repo.claim_place("p1", open_cycle, placed[0].worker_id, T0, Places(5, random.Random()))
    assert again == placed[0]


def test_the_last_free_places_are_found_when_every_probe_is_taken(repo: Repository) -> None:
    hosted(repo)
    open_cycle = repo.get_cycle("p1", 1)
    cap = 3 * PROBES

    placed = [
        repo.claim_place("p1", open_cycle, f"w{i}", T0, Places(cap, random.Random(i)))
        for i in range(cap + 1)
    ]

    assert sorted(a.slot for a in placed[:cap]) == list(range(cap))  # none refused early
    assert placed[cap] is None  # then exactly full
    assert repo.count_assigned("p1", 1) == cap


def report(epoch: int = 0, diff: str = "diffs/a") -> Report:
    return Report(epoch=epoch, num_samples=7, diff_object=diff, at=T0 + timedelta(seconds=5))


def test_a_report_is_counted_once_by_the_domain_rule(repo: Repository) -> None:
    hosted(repo)
    repo.save_worker(worker("w1"))
    repo.claim_place("p1", repo.get_cycle("p1", 1), "w1", T0, None)

    counted = repo.record_report("p1", 1, "w1", report())

    assert counted.reported and counted.num_samples == 7 and counted.diff_object == "diffs/a"
    assert repo.get_assignment("p1", 1, "w1") == counted
    assert repo.get_worker("w1").last_cycle == 1
    assert repo.count_reported("p1", 1) == 1
    assert list(repo.reported_assignments("p1", 1)) == [counted]
    with pytest.raises(Conflict) as twice:
        repo.record_report("p1", 1, "w1", report(diff="diffs/b"))
    assert twice.value.code == "already_reported"
    assert repo.get_assignment("p1", 1, "w1").diff_object == "diffs/a"


@pytest.mark.parametrize(
    ("setup", "code"),
    [
        ("closed", "cycle_closed"),
        ("stale_epoch", "assignment_dropped"),
        ("no_place", "assignment_dropped"),
    ],
)
def test_a_report_the_rule_refuses_changes_nothing(repo: Repository, setup: str, code: str) -> None:
    hosted(repo)
    repo.save_worker(worker("w1"))
    if setup != "no_place":
        repo.claim_place("p1", repo.get_cycle("p1", 1), "w1", T0, None)
    if setup == "closed":
        repo.update_cycle("p1", 1, lambda c: c.begin_closing(T0))

    with pytest.raises(Conflict) as refused:
        repo.record_report("p1", 1, "w1", report(epoch=1 if setup == "stale_epoch" else 0))

    assert refused.value.code == code
    assert repo.count_reported("p1", 1) == 0
    assert repo.get_worker("w1").last_cycle is None


def test_a_skipped_diff_no_longer_counts_and_cannot_be_sent_again(repo: Repository) -> None:
    hosted(repo)
    repo.save_worker(worker("w1"))
    repo.claim_place("p1", repo.get_cycle("p1", 1), "w1", T0, None)
    repo.record_report("p1", 1, "w1", report())

    skipped = repo.update_assignment("p1", 1, "w1", lambda a: a.skip("missing_object"))

    assert skipped is not None and skipped.skipped == "missing_object"
    assert repo.get_assignment("p1", 1, "w1") == skipped
    assert repo.count_reported("p1", 1) == 0 and list(repo.reported_assignments("p1", 1)) == []
    with pytest.raises(Conflict) as again:
        repo.record_report("p1", 1, "w1", report())
    assert again.value.code == "diff_skipped"
    assert repo.update_assignment("p1", 1, "nobody", lambda a: a) is None


def test_twin_reports_are_counted_once(repo: Repository) -> None:
    hosted(repo)
    repo.save_worker(worker("w1"))
    repo.claim_place("p1", repo.get_cycle("p1", 1), "w1", T0, None)

    outcomes = concurrently(6, lambda i: repo.record_report("p1", 1, "w1", report(diff=f"d{i}")))

    counted = [o for o in outcomes if isinstance(o, Assignment)]
    refused = [o for o in outcomes if isinstance(o, Conflict)]
    assert len(counted) == 1 and len(refused) == 5
    assert {r.code for r in refused} == {"already_reported"}
    assert repo.get_assignment("p1", 1, "w1") == counted[0]


def test_a_reset_drops_unreported_places_and_frees_their_slots(repo: Repository) -> None:
    hosted(repo)
    open_cycle = repo.get_cycle("p1", 1)
    rng = random.Random(0)

    choose = Places(2, rng)
    for wid in ("w1", "w2"):
        repo.save_worker(worker(wid))
        repo.claim_place("p1", open_cycle, wid, T0, choose)
    repo.record_report("p1", 1, "w1", report())
    assert repo.claim_place("p1", open_cycle, "w3", T0, choose) is None  # full

    reset = repo.update_cycle(
        "p1", 1, lambda c: c.reset(open_cycle, T0 + timedelta(hours=1), drop_unreported=True)
    )
    assert reset is not None and reset.epoch == 1 and reset.resets == 1
    assert (
        repo.update_cycle("p1", 1, lambda c: c.reset(open_cycle, None, drop_unreported=True))
        is None
    )
    assert repo.get_cycle("p1", 1).drop_pending
    dropped = repo.drop_assignments("p1", 1, lambda a: a.dropped_by_reset(reset.epoch))
    assert repo.drop_assignments("p1", 1, lambda a: a.dropped_by_reset(reset.epoch)) == []
    assert repo.update_cycle("p1", 1, lambda c: c.places_dropped(reset.epoch)) is not None
    assert not repo.get_cycle("p1", 1).drop_pending

    assert dropped == ["w2"]
    assert {a.worker_id for a in repo.assignments("p1", 1)} == {"w1"}
    placed = repo.claim_place("p1", reset, "w3", T0, choose)
    assert placed is not None and placed.epoch == 1  # the freed slot is taken again


def test_invitations_are_recorded_once_per_worker(repo: Repository) -> None:
    hosted(repo)

    first = repo.record_invitations("p1", 1, 0, ["w1", "w2"], T0)
    second = repo.record_invitations("p1", 1, 1, ["w2", "w3"], T0)

    assert (first, second) == (["w1", "w2"], ["w3"])
    assert repo.invitations("p1", 1) == {"w1": 0, "w2": 0, "w3": 1}


def test_a_lock_is_held_until_released_or_expired(repo: Repository) -> None:
    hosted(repo)
    until = T0 + timedelta(seconds=60)

    taken = concurrently(6, lambda _: repo.try_lock("p1", 1, "invite", T0, until))
    assert taken.count(True) == 1
    assert not repo.try_lock("p1", 1, "invite", T0 + timedelta(seconds=30), until)
    assert repo.try_lock("p1", 1, "invite", until, until + timedelta(seconds=60))  # expired
    repo.unlock("p1", 1, "invite")
    assert repo.try_lock("p1", 1, "invite", until, until + timedelta(seconds=60))


# -- metrics and pushes ---------------------------------------------------------------


def test_metrics_rows_are_kept_one_per_client_cycle_and_set(repo: Repository) -> None:
    row = {"client_id": "c1", "cycle_id": 1, "accuracy": 0.5, "num_samples": 3, "set": "test"}
    repo.add_metrics("p1", [row, row | {"client_id": "c0"}, row | {"set": "train"}])
    repo.add_metrics("p1", [row | {"accuracy": 0.75}])

    rows = repo.list_metrics("p1")
    assert [(r["client_id"], r["set"]) for r in rows] == [
        ("c0", "test"),
        ("c1", "test"),
        ("c1", "train"),
    ]
    assert rows[1]["accuracy"] == 0.75


def test_metrics_of_cycles_reads_a_range_in_cycle_then_document_order_up_to_a_limit(
    repo: Repository,
) -> None:
    row = {"accuracy": 0.5, "num_samples": 3, "set": "test"}
    repo.add_metrics(
        "p1",
        [row | {"client_id": c, "cycle_id": n} for n in (1, 2, 3, 4) for c in ("cb", "ca")]
        + [row | {"client_id": "ca", "cycle_id": 2, "set": "train"}],
    )

    rows = repo.metrics_of_cycles("p1", 2, 3, 100)
    limited = repo.metrics_of_cycles("p1", 2, 3, 3)

    assert [(r["cycle_id"], r["client_id"], r["set"]) for r in rows] == [
        (2, "ca", "test"),
        (2, "ca", "train"),
        (2, "cb", "test"),
        (3, "ca", "test"),
        (3, "cb", "test"),
    ]
    assert limited == rows[:3]
    assert repo.metrics_of_cycles("p2", 1, 4, 10) == []


def test_a_push_is_claimed_once_and_listed_newest_first(repo: Repository) -> None:
    for i in range(7):
        claimed = repo.claim_push("p1", f"k{i}", {"type": "t", "created_at": T0 + timedelta(i)})
        assert claimed
    assert not repo.claim_push("p1", "k0", {"type": "again", "created_at": T0})
    repo.finish_push("p1", "k6", {"sent": 3})

    recent = repo.recent_pushes("p1", limit=3)
    assert [r["created_at"] for r in recent] == [T0 + timedelta(i) for i in (6, 5, 4)]
    assert recent[0]["sent"] == 3


def test_groups_are_created_once_and_completed_once_by_their_holder(repo: Repository) -> None:
    hosted(repo)
    groups = partition("p1", 1, [("w2", 2.0), ("w1", 1.0), ("w3", 3.0)], 2, T0)

    created = repo.create_groups("p1", 1, groups)
    again = repo.create_groups("p1", 1, [dataclasses.replace(g, weights=(9.0,)) for g in groups])

    assert created == groups and again == groups  # a re-driven closing keeps what it made
    assert repo.groups("p1", 1) == groups and repo.groups("p1", 2) == []
    until = T0 + timedelta(minutes=1)
    taken = concurrently(
        6, lambda i: repo.update_group("p1", 1, 0, lambda g: g.take_lease(T0, until, f"h{i}"))
    )
    [holder] = [t.lease_holder for t in taken if t is not None]
    step = Step(delta={}, num_diffs=2, total_weight=3.0)
    assert repo.update_group("p1", 1, 0, lambda g: g.complete("other", "x", step, {})) is None
    done = repo.update_group("p1", 1, 0, lambda g: g.complete(holder, "x", step, {"w9": "c"}))
    assert done is not None and repo.groups("p1", 1)[0] == done
    assert (done.status, done.weight, done.num_diffs, dict(done.skipped)) == (
        GroupStatus.DONE, 3.0, 2, {"w9": "c"}
    )  # fmt: skip
    assert repo.update_group("p1", 1, 7, lambda g: g) is None


def test_assignments_of_reads_the_named_ones_that_exist(repo: Repository) -> None:
    hosted(repo)
    open_cycle = repo.get_cycle("p1", 1)
    for wid in ("w1", "w2", "w3"):
        repo.save_worker(worker(wid))
        repo.claim_place("p1", open_cycle, wid, T0, None)

    found = repo.assignments_of("p1", 1, ["w3", "absent", "w1"])

    assert [a.worker_id for a in found] == ["w3", "w1"]


# -- async mode: places in the lobby, reports moved into a buffer ---------------


def lobby_and_buffer(repo: Repository) -> None:
    started = process()
    repo.create_hosting(started)
    repo.start_training(started.started(), cycle(seq=LOBBY, deadline=None), cycle(deadline=None))


def buffered_report(epoch: int = 1, staleness: int = 0) -> BufferedReport:
    return BufferedReport(report=report(epoch=epoch), staleness=staleness)


def test_start_training_creates_every_opening_cycle(repo: Repository) -> None:
    lobby_and_buffer(repo)
    assert repo.get_cycle("p1", LOBBY) == cycle(seq=LOBBY, deadline=None)
    assert repo.get_cycle("p1", 1) == cycle(deadline=None)


def test_a_buffered_report_moves_the_place_into_the_buffer(repo: Repository) -> None:
    lobby_and_buffer(repo)
    repo.save_worker(worker("w1"))
    joining = dataclasses.replace(repo.get_cycle("p1", LOBBY), epoch=1)
    place = repo.claim_place("p1", joining, "w1", T0, Places(4, random.Random(0)))
    assert place is not None and place.epoch == 1

    entry = repo.record_buffered("p1", 1, "w1", buffered_report(staleness=2))

    assert entry == dataclasses.replace(
        place,
        seq=1,
        slot=None,
        reported_at=T0 + timedelta(seconds=5),
        num_samples=7,
        diff_object="diffs/a",
        staleness=2,
    )
    assert list(repo.reported_assignments("p1", 1)) == [entry]
    assert repo.count_assigned("p1", LOBBY) == 0  # the place is free again
    again = repo.claim_place("p1", joining, "w2", T0, Places(1, random.Random(0)))
    assert again is not None and again.slot == 0
    assert repo.get_worker("w1").last_cycle == 1


def test_a_buffered_report_is_refused_without_its_place_or_when_the_buffer_is_full(
    repo: Repository,
) -> None:
    lobby_and_buffer(repo)
    repo.save_worker(worker("w1"))
    joining = dataclasses.replace(repo.get_cycle("p1", LOBBY), epoch=1)
    repo.claim_place("p1", joining, "w1", T0, Places(4, random.Random(0)))
    with pytest.raises(Conflict) as other_checkpoint:
        repo.record_buffered("p1", 1, "w1", buffered_report(epoch=2))
    assert other_checkpoint.value.code == "assignment_dropped"
    repo.update_cycle("p1", 1, lambda c: c.begin_closing(T0))
    with pytest.raises(BufferClosed):
        repo.record_buffered("p1", 1, "w1", buffered_report())
    assert repo.count_assigned("p1", LOBBY) == 1  # nothing moved
    assert repo.count_reported("p1", 1) == 0


def test_twin_buffered_reports_are_counted_once(repo: Repository) -> None:
    lobby_and_buffer(repo)
    repo.save_worker(worker("w1"))
    joining = dataclasses.replace(repo.get_cycle("p1", LOBBY), epoch=1)
    repo.claim_place("p1", joining, "w1", T0, Places(4, random.Random(0)))

    outcomes = concurrently(8, lambda i: repo.record_buffered("p1", 1, "w1", buffered_report()))

    counted = [o for o in outcomes if isinstance(o, Assignment)]
    refused = [o for o in outcomes if isinstance(o, Conflict)]
    assert len(counted) == 1 and len(refused) == 7, outcomes
    assert repo.count_reported("p1", 1) == 1
    assert repo.count_assigned("p1", LOBBY) == 0
