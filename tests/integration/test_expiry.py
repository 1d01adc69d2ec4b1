"""Deadlines enforced by the scheduled tick."""

from __future__ import annotations

import time
from datetime import UTC

import pytest

from .support import Api, cycle_seq, wait_for, wait_past_deadline

pytestmark = pytest.mark.integration


@pytest.fixture
def api(clean_stack) -> Api:
    return Api(clean_stack.base_url, clean_stack.admin_token)


def test_deadline_with_enough_diffs_aggregates(api: Api) -> None:
    api.host(cycle_length=2, min_diffs=1, max_diffs=5, max_workers=5)
    worker_id, accepted = api.join()
    api.join()  # a second worker that never reports
    assert api.report(worker_id, accepted["request_key"]).status_code == 200
    assert api.tick()["closed"] == []  # not yet: the deadline has not passed
    wait_past_deadline(api)
    assert api.tick()["closed"] == ["mnist:1.0#1"]
    wait_for(lambda: cycle_seq(api) == 2, what="cycle 2 to open")
    assert api.status()["checkpoints"] == [1, 2]


def test_deadline_with_too_few_diffs_resets_and_keeps_reported_work(api: Api) -> None:
    api.host(cycle_length=2, min_diffs=2, max_diffs=2, max_workers=2)
    reporter, reporter_cycle = api.join()
    idle, idle_cycle = api.join()
    assert api.cycle_request(api.authenticate())["reason"] == "cycle_full"
    assert api.report(reporter, reporter_cycle["request_key"]).status_code == 200
    old_deadline = api.status()["current_cycle"]["deadline"]
    wait_past_deadline(api)

    assert api.tick()["reset"] == ["mnist:1.0#1"]
    current = api.status()["current_cycle"]
    assert current["seq"] == 1 and current["status"] == "open"
    assert current["deadline"] > old_deadline
    assert current["reported"] == 1 and current["assigned"] == 1  # the idle worker's place is freed
    params = {
        "worker_id": idle,
        "request_key": idle_cycle["request_key"],
        "model_id": idle_cycle["model_id"],
    }
    dropped = api.device("GET", "get-model", params=params)
    assert dropped.status_code == 409
    late = api.report(idle, idle_cycle["request_key"])
    assert late.status_code == 409

    newcomer, newcomer_cycle = api.join()  # takes the freed place
    assert api.report(newcomer, newcomer_cycle["request_key"]).status_code == 200
    # The diff kept through the reset plus the newcomer's fill max_diffs: the cycle closes.
    wait_for(lambda: cycle_seq(api) == 2, what="cycle 2 to open")


def test_extend_keeps_assignments(api: Api) -> None:
    api.host(cycle_length=1, min_diffs=1, max_diffs=2, max_workers=2, on_expiry="extend")
    worker_id, accepted = api.join()
    wait_past_deadline(api)
    assert api.tick()["extended"] == ["mnist:1.0#1"]
    assert api.report(worker_id, accepted["request_key"]).status_code == 200


def test_tick_redrives_a_cycle_whose_aggregator_died(api: Api, stack_env) -> None:
    from datetime import datetime, timedelta

    from google.cloud import firestore

    process_id = api.host(cycle_length=600, max_diffs=2, max_workers=2)
    worker_id, accepted = api.join()
    assert api.report(worker_id, accepted["request_key"]).status_code == 200
    cycle = firestore.Client(project=stack_env.project_id).document(
        f"processes/{process_id}/cycles/1"
    )
    # An aggregator took the lease and died: the trigger finds the lease held and backs off.
    lease_until = datetime.now(UTC) + timedelta(seconds=1.5)
    cycle.update({"status": "closing", "closing_lease_until": lease_until})
    assert api.tick()["redriven"] == []
    assert cycle_seq(api) == 1
    time.sleep(1.7)
    assert api.tick()["redriven"] == ["mnist:1.0#1"]
    assert cycle_seq(api) == 2
    assert cycle.get().get("num_diffs") == 1
