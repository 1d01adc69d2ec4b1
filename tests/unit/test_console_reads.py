"""The operator reads the console refreshes: the process list, the cycle history, pages of
round summaries and the deadline countdown, each a bounded read (in-memory fakes)."""

from __future__ import annotations

from typing import Any

import pytest

from firegrid.domain import limits
from firegrid.domain.errors import BadRequest
from firegrid.domain.rounds import round_stats, rounds_page
from firegrid.services import hosting, operator
from firegrid.services.context import Context
from tests.edge import call
from tests.unit.test_services import (
    constant_diff,
    host,
    host_body,
    join,
    on_report,
    send_report,
    tick,
)


def metric(client: str, cycle_id: int, accuracy: float, num_samples: int = 10) -> dict[str, Any]:
    return {
        "client_id": client,
        "cycle_id": cycle_id,
        "accuracy": accuracy,
        "num_samples": num_samples,
        "set": "test",
    }


def test_processes_are_listed_newest_first_with_what_the_console_shows(ctx, tiny) -> None:
    first = host(ctx, tiny)
    ctx.clock.advance(1)
    body = host_body(tiny, aggregation="mean", mode="async", buffer_size=2, max_concurrency=3)
    del body["server_config"]["max_diffs"]
    body["client_config"]["version"] = "2.0"
    second = call(hosting.host_training, ctx, body)["process_id"]

    listed = call(operator.processes, ctx, {})["processes"]
    newest = call(operator.processes, ctx, {"limit": "1"})["processes"]

    assert [p["process_id"] for p in listed] == [second, first]
    assert newest == listed[:1]
    assert listed[1] == {
        "process_id": first,
        "name": "mnist",
        "version": "1.0",
        "status": "training",
        "current_cycle": 1,
        "latest_checkpoint": 1,
        "aggregation": "fedavg",
        "mode": "sync",
        "created_at": listed[1]["created_at"],
    }
    assert (listed[0]["version"], listed[0]["aggregation"], listed[0]["mode"]) == (
        "2.0",
        "mean",
        "async",
    )


def close_one(ctx: Context, tiny, process_id: str, seq: int) -> None:
    worker_id, key = join(ctx)
    send_report(ctx, worker_id, key, constant_diff(tiny, 0.1), num_samples=7)
    assert on_report(ctx, process_id, seq)


@pytest.mark.parametrize(("on_expiry", "counts"), [("reset", (1, 0)), ("extend", (0, 1))])
def test_the_cycle_history_says_how_each_cycle_ended_newest_first(
    ctx, tiny, on_expiry: str, counts: tuple[int, int]
) -> None:
    process_id = host(ctx, tiny, max_diffs=1, min_diffs=1, on_expiry=on_expiry)
    ctx.clock.advance(61)  # cycle 1 expires with no diff
    tick(ctx)
    ctx.clock.advance(5)
    close_one(ctx, tiny, process_id, 1)

    history = call(operator.cycle_history, ctx, {"name": "mnist"})["cycles"]
    latest = call(operator.cycle_history, ctx, {"name": "mnist", "limit": "1"})["cycles"]

    assert [c["seq"] for c in history] == [2, 1]
    assert latest == history[:1]
    closed = history[1]
    assert (closed["status"], closed["outcome"]) == ("completed", "closed")
    assert (closed["num_diffs"], closed["total_samples"]) == (1, 7)
    assert (closed["resets"], closed["extensions"]) == counts
    assert closed["duration_s"] == 66.0
    assert history[0]["outcome"] == "open"
    assert history[0]["duration_s"] is None and history[0]["num_diffs"] is None


def test_status_counts_down_to_the_deadline_and_stops_at_zero(ctx, tiny) -> None:
    host(ctx, tiny)
    ctx.clock.advance(20)
    assert call(operator.status, ctx, {"name": "mnist"})["current_cycle"]["seconds_left"] == 40
    ctx.clock.advance(50)
    assert call(operator.status, ctx, {"name": "mnist"})["current_cycle"]["seconds_left"] == 0


def completed_cycles(ctx: Context, process_id: str, count: int) -> None:
    """Mark ``count`` cycles completed, as their closings would have (checkpoint n+1)."""
    ctx.repo.processes[process_id] = ctx.repo.processes[process_id].after_cycle(
        count + 1, count + 1
    )


def test_round_stats_summarise_completed_rounds_a_page_at_a_time(
    ctx, tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    process_id = host(ctx, tiny)
    rows = [metric(c, n, 0.1 * n + 0.01 * i) for n in (1, 2, 3, 4) for i, c in enumerate("ab")]
    ctx.repo.add_metrics(process_id, rows)
    completed_cycles(ctx, process_id, 3)  # round 4 is still running: not summarised
    monkeypatch.setattr(limits, "METRICS_PAGE_ROWS", 3)

    pages = []
    after = 0
    while True:
        page = call(operator.round_summaries, ctx, {"name": "mnist", "after": str(after)})
        pages.append(page)
        if not page["more"]:
            break
        after = page["through"]

    assert [[r["round"] for r in p["rounds"]] for p in pages] == [[1], [2], [3]]
    assert [p["through"] for p in pages] == [1, 2, 3]
    assert {p["completed"] for p in pages} == {3}
    everything = [r for p in pages for r in p["rounds"]]
    expected = round_stats([row for row in rows if row["cycle_id"] <= 3])
    assert everything == [vars(stat) for stat in expected]


def test_round_stats_after_the_last_completed_round_are_empty(ctx, tiny) -> None:
    host(ctx, tiny)
    page = call(operator.round_summaries, ctx, {"name": "mnist", "after": "5"})
    assert page == {"rounds": [], "through": 0, "completed": 0, "more": False}


def test_a_round_larger_than_a_page_is_summarised_from_the_rows_read() -> None:
    rows = [metric(f"c{i}", 2, 0.5) for i in range(4)]

    page = rounds_page(rows[:3], after=1, last=3, full=True)

    assert page.through == 2
    assert [(s.round, s.devices) for s in page.stats] == [(2, 3)]


@pytest.mark.parametrize(
    ("service", "query", "field"),
    [
        (operator.processes, {"limit": "0"}, "limit"),
        (operator.processes, {"limit": str(limits.MAX_PROCESSES_LISTED + 1)}, "limit"),
        (operator.processes, {"limit": "ten"}, "limit"),
        (operator.cycle_history, {"name": "mnist", "limit": "101"}, "limit"),
        (operator.cycle_history, {"limit": "3"}, "name"),
        (operator.round_summaries, {"name": "mnist", "after": "-1"}, "after"),
        (operator.round_summaries, {"name": "mnist", "after": "1e3"}, "after"),
    ],
)
def test_a_bad_listing_query_is_a_400_naming_the_field(ctx, service, query, field) -> None:
    with pytest.raises(BadRequest) as refused:
        call(service, ctx, query)
    assert f"'{field}'" in refused.value.message
