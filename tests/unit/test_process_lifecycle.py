"""A hosting that died half-way, and deleting a process with everything it owns, on the
in-memory fakes with the clock held still."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from firegrid.domain import blobs
from firegrid.domain.cycle import CycleStatus, ProcessStatus
from firegrid.domain.errors import Conflict, NotFound
from firegrid.domain.model import HOSTING_STALE_AFTER
from firegrid.manifest import FUNCTIONS
from firegrid.services import cycles, devices, hosting, operator, pool
from firegrid.services.context import Context
from firegrid.wire import status_of
from tests.common import b64, checkpoint_prefix
from tests.edge import call
from tests.fakes import FakeBlobStore, make_context
from tests.unit.test_services import (
    begin_closing,
    constant_diff,
    host,
    host_body,
    join,
    login,
    send_report,
)

MNIST = {"name": "mnist", "version": "1.0"}


class Killed(BaseException):
    """The instance stopped mid-request: no ``except Exception`` clean-up runs."""


def die_after_uploads(ctx: Context) -> None:
    def killed(process, first_cycle) -> None:
        raise Killed

    ctx.repo.start_training = killed


def hosting_killed_half_way(ctx: Context, tiny, **body: Any) -> str:
    """A host-training whose instance died after the process document and the uploads;
    the process id it left."""
    die_after_uploads(ctx)
    with pytest.raises(Killed):
        call(hosting.host_training, ctx, host_body(tiny) | body)
    del ctx.repo.start_training  # the next instance runs the real code
    (process_id,) = ctx.repo.processes
    return process_id


def delete(ctx: Context, **named: str) -> dict[str, Any]:
    return call(hosting.delete_process, ctx, MNIST | named)


def refused(run: Any) -> tuple[int, str]:
    with pytest.raises(Conflict) as conflict:
        run()
    return status_of(conflict.value), conflict.value.code


# -- a hosting that died half-way ---------------------------------------------------


def test_no_hosting_outlives_the_admin_function_that_runs_it() -> None:
    (admin,) = [f for f in FUNCTIONS if f.name == "admin"]
    assert HOSTING_STALE_AFTER.total_seconds() > admin.timeout_s


def test_a_hosting_in_progress_is_409_and_says_when_it_may_be_retried(ctx, tiny) -> None:
    process_id = hosting_killed_half_way(ctx, tiny)
    left = dict(ctx.blobs.objects)
    ctx.clock.advance(HOSTING_STALE_AFTER.total_seconds() - 1)

    with pytest.raises(Conflict) as busy:
        host(ctx, tiny)

    assert (status_of(busy.value), busy.value.code) == (409, "hosting_in_progress")
    retry_at = ctx.repo.get_process(process_id).hosting_retry_at
    assert retry_at.isoformat() in busy.value.message
    assert ctx.repo.get_process(process_id).status is ProcessStatus.HOSTING
    assert ctx.blobs.objects == left


def test_a_hosting_that_died_half_way_is_taken_over_once_stale(ctx, tiny) -> None:
    _, plan = tiny
    extra_plan = {"plans": {"training_plan": b64(plan), "old_plan": b64(plan)}}
    process_id = hosting_killed_half_way(ctx, tiny, **extra_plan)
    assert blobs.plan_object(process_id, "old_plan") in ctx.blobs.objects
    ctx.clock.advance(HOSTING_STALE_AFTER.total_seconds())

    assert host(ctx, tiny, num_cycles=7) == process_id

    process = ctx.repo.get_process(process_id)
    assert process.status is ProcessStatus.TRAINING
    assert process.server_config.num_cycles == 7 and process.created_at == ctx.clock.now()
    assert sorted(ctx.blobs.objects) == sorted(
        [blobs.checkpoint_object(process_id, 1), blobs.plan_object(process_id, "training_plan")]
    )  # the dead attempt's other plan is gone
    assert ctx.repo.get_cycle(process_id, 1).status is CycleStatus.OPEN
    worker_id, _ = join(ctx)
    assert worker_id


def test_of_two_retries_of_a_dead_hosting_exactly_one_wins(ctx, tiny) -> None:
    hosting_killed_half_way(ctx, tiny)
    ctx.clock.advance(HOSTING_STALE_AFTER.total_seconds() + 1)
    barrier = threading.Barrier(2)
    outcomes: list[Any] = []

    def retry() -> None:
        barrier.wait()
        try:
            outcomes.append(host(ctx, tiny))
        except Conflict as conflict:
            outcomes.append(conflict)

    threads = [threading.Thread(target=retry) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    losers = [o for o in outcomes if isinstance(o, Conflict)]
    assert len(losers) == 1 and len(outcomes) == 2
    assert status_of(losers[0]) == 409
    assert losers[0].code in ("duplicate_process", "hosting_in_progress")
    assert len(ctx.repo.processes) == 1 and len(ctx.repo.cycles) == 1


def test_a_finished_process_is_never_taken_over(ctx, tiny) -> None:
    host(ctx, tiny)
    ctx.clock.advance(HOSTING_STALE_AFTER.total_seconds() * 10)

    assert refused(lambda: host(ctx, tiny)) == (409, "duplicate_process")


# -- deleting a process ---------------------------------------------------------------


def busy_process(ctx: Context, tiny) -> str:
    """A process past its first cycle, with workers, metrics, pushes and diff objects."""
    process_id = host(ctx, tiny, min_diffs=1, max_diffs=2)
    for _ in range(2):
        worker_id, key = join(ctx)
        send_report(ctx, worker_id, key, constant_diff(tiny, 0.1))
    assert cycles.on_report(ctx, process_id, 1) and cycles.close_cycle(ctx, process_id, 1)
    pool_worker = login(ctx)
    call(pool.register_token, ctx, {"worker_id": pool_worker, "fcm_token": "tok"})
    call(
        operator.post_metrics,
        ctx,
        {"worker_id": pool_worker, "stats": [{"cycle_id": 1, "accuracy": 0.5, "num_samples": 3}]},
    )
    return process_id


def test_deleting_a_process_removes_everything_it_owns_and_frees_its_name(ctx, tiny) -> None:
    process_id = busy_process(ctx, tiny)
    other = call(
        hosting.host_training,
        ctx,
        host_body(tiny) | {"client_config": {"name": "other", "version": "1"}},
    )["process_id"]
    objects = sum(1 for name in ctx.blobs.objects if name.startswith(f"processes/{process_id}/"))

    answer = delete(ctx)

    assert answer["status"] == "success" and answer["process_id"] == process_id
    assert answer["objects"] == objects == 5  # 2 checkpoints, the plan, 2 diffs
    documents = answer["documents"]
    assert (documents["processes"], documents["cycles"], documents["workers"]) == (1, 2, 3)
    assert (documents["assignments"], documents["metrics"]) == (2, 1)
    assert documents["pushes"] >= 1
    assert set(ctx.repo.processes) == {other}
    assert {key[0] for key in ctx.repo.cycles} == {other}
    assert all(w.process_id == other for w in ctx.repo.workers.values())
    assert process_id not in ctx.repo.metrics and process_id not in ctx.repo.pushes
    assert not [n for n in ctx.blobs.objects if n.startswith(f"processes/{process_id}/")]
    assert host(ctx, tiny) == process_id  # the name and version may be hosted again


def test_deleting_what_does_not_exist_is_404(ctx, tiny) -> None:
    host(ctx, tiny)

    with pytest.raises(NotFound) as unknown:
        delete(ctx, version="2.0")

    assert (status_of(unknown.value), unknown.value.code) == (404, "unknown_process")


def test_a_hosting_in_progress_is_not_deleted_but_an_abandoned_one_is(ctx, tiny) -> None:
    process_id = hosting_killed_half_way(ctx, tiny)

    assert refused(lambda: delete(ctx)) == (409, "hosting_in_progress")
    assert ctx.repo.get_process(process_id) is not None

    ctx.clock.advance(HOSTING_STALE_AFTER.total_seconds())
    assert delete(ctx)["documents"] == {"processes": 1}
    assert ctx.repo.processes == {} and ctx.blobs.objects == {}


def test_a_deletion_that_died_half_way_leaves_a_process_that_takes_no_work(ctx, tiny) -> None:
    process_id = busy_process(ctx, tiny)
    worker_id, key = join(ctx)
    pushes_before = len(ctx.notifier.sent)

    def killed(process_id: str) -> dict[str, int]:
        raise Killed

    ctx.repo.delete_process = killed
    with pytest.raises(Killed):
        delete(ctx)
    del ctx.repo.delete_process
    assert ctx.repo.get_process(process_id).status is ProcessStatus.DELETING

    assert refused(lambda: login(ctx)) == (409, "process_deleting")
    device_calls = [
        lambda: call(devices.request_cycle, ctx, {"worker_id": worker_id, "model": "mnist"}),
        lambda: send_report(ctx, worker_id, key, constant_diff(tiny, 0.1)),
        lambda: call(pool.register_token, ctx, {"worker_id": worker_id, "fcm_token": "t2"}),
        lambda: call(
            operator.post_metrics,
            ctx,
            {"worker_id": worker_id, "stats": [{"cycle_id": 1, "accuracy": 1, "num_samples": 1}]},
        ),
        lambda: call(hosting.host_training, ctx, host_body(tiny)),
    ]
    for device_call in device_calls:
        assert refused(device_call) == (409, "process_deleting")
    ctx.clock.advance(3600)
    assert cycles.tick(ctx).reset == []
    assert begin_closing(ctx, process_id, 2)
    assert not cycles.close_cycle(ctx, process_id, 2)  # no aggregation starts
    assert pool.invite(ctx, process_id) == []
    assert len(ctx.notifier.sent) == pushes_before

    answer = delete(ctx)  # the second run finishes the job

    assert answer["documents"]["processes"] == 1
    assert ctx.repo.processes == {} and ctx.repo.cycles == {} and ctx.repo.workers == {}
    assert ctx.blobs.objects == {}


class RacingBlobStore(FakeBlobStore):
    """Runs ``hook[1]`` just before an object whose name starts with ``hook[0]`` is written."""

    def __init__(self) -> None:
        super().__init__()
        self.hook: tuple[str, Any] | None = None

    def put(self, name: str, data: bytes, *, if_absent: bool = False) -> bool:
        if self.hook is not None and name.startswith(self.hook[0]):
            self.hook[1]()
        return super().put(name, data, if_absent=if_absent)


@pytest.fixture
def closing(tiny) -> tuple[Context, str]:
    """A full cycle marked closing, its aggregation about to start."""
    ctx = make_context(blobs=RacingBlobStore())
    process_id = host(ctx, tiny, min_diffs=1, max_diffs=1)
    worker_id, key = join(ctx)
    send_report(ctx, worker_id, key, constant_diff(tiny, 0.1))
    assert cycles.on_report(ctx, process_id, 1)
    return ctx, process_id


def test_an_aggregation_running_when_a_deletion_starts_completes_nothing(closing) -> None:
    ctx, process_id = closing
    now = ctx.clock.now()
    ctx.blobs.hook = (
        checkpoint_prefix(process_id, 2),
        lambda: ctx.repo.update_process(process_id, lambda p: p.marked_for_deletion(now)),
    )  # the deletion marked the process while the diffs were being averaged

    assert not cycles.close_cycle(ctx, process_id, 1)

    assert ctx.repo.get_process(process_id).status is ProcessStatus.DELETING
    assert ctx.repo.get_cycle(process_id, 1).status is CycleStatus.CLOSING
    assert ctx.repo.get_cycle(process_id, 2) is None
    assert not [
        name for name in ctx.blobs.objects if name.startswith(checkpoint_prefix(process_id, 2))
    ]
    assert ctx.notifier.sent == []
    delete(ctx)
    assert ctx.repo.processes == {} and ctx.repo.cycles == {} and ctx.blobs.objects == {}


def test_an_aggregation_outlived_by_the_deletion_leaves_no_object(closing) -> None:
    ctx, process_id = closing
    ctx.blobs.hook = (checkpoint_prefix(process_id, 2), lambda: delete(ctx))

    assert not cycles.close_cycle(ctx, process_id, 1)

    assert ctx.repo.processes == {} and ctx.repo.cycles == {}
    assert ctx.blobs.objects == {}  # the checkpoint written after the sweep went too


def test_the_cli_deletes_nothing_without_a_yes(capsys) -> None:
    from firegrid.commands import main

    target = ["--base-url", "http://127.0.0.1:9", "--token", "t"]  # nothing listens there

    assert main(["delete-process", "mnist", "1.0", *target]) == 1
    assert "not deleted: pass --yes" in capsys.readouterr().err
