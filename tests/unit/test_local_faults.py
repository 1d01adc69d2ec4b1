"""The fault injector: parsing, seeded draws, and what the router and scheduler do
with them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests
from werkzeug.test import Client

from firegrid.local.faults import Faults, Injector
from firegrid.local.router import STATUS_PATH, TriggerRouter
from firegrid.local.scheduler import read_counts, run
from tests.unit.test_local_router import EMULATOR_EVENT, FUNCTIONS_URL


def test_a_fault_spec_parses_and_bad_ones_say_why() -> None:
    faults = Faults.parse("duplicate=0.3, drop=0.1,delay=1")
    assert faults == Faults(duplicate=0.3, drop=0.1, delay=1.0)
    assert str(Faults.parse(str(faults))) == str(faults)
    assert not Faults.parse("")
    for spec, message in [
        ("lose=0.1", "not one of"),
        ("drop", "not one of"),
        ("drop=x", "needs a number"),
        ("drop=1.5", "between 0 and 1"),
        ("delay=-1", "between 0 and 60"),
        ("drop=0.1,drop=0.2", "given twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            Faults.parse(spec)


def test_the_same_seed_draws_the_same_fates() -> None:
    faults = Faults(duplicate=0.3, drop=0.1, delay=1.0, reorder=0.2)
    first, second = Injector(faults, 7), Injector(faults, 7)
    fates = [first.fate() for _ in range(500)]
    assert fates == [second.fate() for _ in range(500)]
    counts = first.injected
    assert counts["deliveries"] == 500
    assert 25 < counts["dropped"] < 80  # 10% of 500, give or take
    assert 100 < counts["duplicated"] < 170  # 30% of the ~450 not dropped
    assert all(0.0 <= delay <= 1.0 for fate in fates for delay in fate.copies)


class Recorder:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def __call__(self, url: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes, str]:
        self.sent.append(headers["ce-id"])
        return 200, b"", "text/plain"


def deliver(router: TriggerRouter, event_id: str) -> int:
    headers = EMULATOR_EVENT["headers"] | {"ce-id": event_id}
    response = Client(router).post(
        EMULATOR_EVENT["path"], headers=headers, data=EMULATOR_EVENT["body"]
    )
    return response.status_code


def settle(router: TriggerRouter, timeout_s: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = json.loads(Client(router).get(STATUS_PATH).get_data())
        if state["in_flight"] == 0:
            return state
        time.sleep(0.01)
    raise AssertionError("deliveries still in flight")


@pytest.mark.parametrize(
    ("faults", "expected"),
    [
        (Faults(drop=1.0), []),
        (Faults(duplicate=1.0), ["a", "a", "b", "b"]),
        (Faults(), ["a", "b"]),
    ],
)
def test_the_router_drops_and_duplicates_deliveries(faults: Faults, expected) -> None:
    functions = Recorder()
    router = TriggerRouter(FUNCTIONS_URL, "demo-firegrid", post=functions)
    router._injector = Injector(faults, 0)  # every delivery goes through the fault path

    assert deliver(router, "a") == 200 and deliver(router, "b") == 200  # accepted at once
    state = settle(router)

    assert sorted(functions.sent) == expected
    assert state["faults"]["injected"]["deliveries"] == 2


def test_a_held_delivery_goes_out_after_the_next_one() -> None:
    functions = Recorder()
    injector = Injector(Faults(reorder=1.0), 0)
    router = TriggerRouter(FUNCTIONS_URL, "demo-firegrid", post=functions, injector=injector)
    deliver(router, "first")
    injector.faults = Faults()  # the second is not held: it overtakes the first
    deliver(router, "second")
    settle(router)

    assert functions.sent == ["second", "first"]
    assert injector.injected["reordered"] == 1


def test_the_scheduler_skips_ticks_and_keeps_its_counts(tmp_path: Path) -> None:
    state = tmp_path / "scheduler.json"
    ticked: list[str] = []

    def tick(url: str, token: str) -> requests.Response:
        ticked.append(url)
        response = requests.Response()
        response.status_code = 200
        return response

    injector = Injector(Faults(drop=0.5), 3)
    run(
        "http://f/tick",
        "t",
        0,
        ticks=40,
        tick=tick,
        sleep=lambda _: None,
        injector=injector,
        state=state,
    )
    counts = read_counts(state)
    assert counts["ticks"] == 40 and counts["skipped"] + len(ticked) == 40
    assert 5 < counts["skipped"] < 35 and counts["failed"] == 0

    run("http://f/tick", "t", 0, ticks=2, tick=tick, sleep=lambda _: None, state=state)
    assert read_counts(state)["ticks"] == 42  # a restarted scheduler goes on counting
