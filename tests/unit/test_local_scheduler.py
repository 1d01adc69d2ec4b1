"""The scheduler loop survives failing ticks and keeps its rhythm."""

from __future__ import annotations

import requests

from firegrid.local.scheduler import run


def test_failures_do_not_stop_the_loop() -> None:
    outcomes: list[Exception | int] = [requests.ConnectionError("down"), 500, 200]
    calls: list[tuple[str, str]] = []
    sleeps: list[float] = []
    now = [100.0]

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    def tick(url: str, token: str) -> requests.Response:
        calls.append((url, token))
        now[0] += 1.0
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        response = requests.Response()
        response.status_code = outcome
        return response

    run(
        "http://functions.test/tick", "secret", 5.0,
        ticks=3, tick=tick, sleep=sleep, clock=lambda: now[0],
    )  # fmt: skip

    assert calls == [("http://functions.test/tick", "secret")] * 3
    assert sleeps == [4.0, 4.0]
