"""The operator console in a real browser (Debian's chromium, headless) against the local
stack while devices train: it refuses without the token, shows what ``admin/status`` says,
draws one chart point per completed cycle, and its tick button acts.

One training run is shared by the module's tests (the last one, the tick, changes it).
Screenshots go to the test's tmp_path and are printed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from firegrid.local.stack import StackInfo, wipe

from .support import Api, register_token, wait_for, wait_past_deadline

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.integration, pytest.mark.browser]

MODEL = "console-digits"
COMPLETED = 3
MAX_WORKERS = 4
REFRESH_WAIT_MS = 15_000


@dataclass(frozen=True)
class Training:
    stack: StackInfo
    api: Api

    @property
    def url(self) -> str:
        return f"{self.stack.base_url}/admin/console"

    def status(self) -> dict[str, Any]:
        return self.api.status(MODEL)


def _train_one_cycle(api: Api, seq: int, reporters: int, joiners: int) -> None:
    """``joiners`` devices take places in cycle ``seq``; the first ``reporters`` of them
    report a diff and post their test accuracy."""
    for index in range(joiners):
        worker_id, accepted = api.join(MODEL)
        assert accepted["cycle_id"] == seq
        register_token(api, worker_id, f"fcm-{seq}-{index}", ram_gb=1 if index == 0 else 4)
        if index >= reporters:
            continue
        assert api.report(worker_id, accepted["request_key"], num_samples=10).status_code == 200
        stats = [
            {"cycle_id": seq, "accuracy": 0.4 + 0.1 * seq + 0.05 * index, "num_samples": 10 + index}
        ]
        posted = api.device("POST", "metrics", json={"worker_id": worker_id, "stats": stats})
        assert posted.status_code == 200, posted.text


@pytest.fixture(scope="module")
def training(stack: StackInfo) -> Iterator[Training]:
    """Three cycles closed by two reports each; in the fourth two devices hold places and
    one has reported (``min_diffs`` 2: its deadline will reset it). No scheduler runs."""
    wipe(stack)
    api = Api(stack.base_url, stack.admin_token)
    api.host(
        name=MODEL, cycle_length=12, num_cycles=10, min_diffs=2, max_diffs=2,
        max_workers=MAX_WORKERS, on_expiry="reset",
    )  # fmt: skip
    for seq in range(1, COMPLETED + 1):
        _train_one_cycle(api, seq, reporters=2, joiners=2)
        wait_for(lambda seq=seq: api.status(MODEL)["latest_checkpoint"] == seq + 1,
                 what=f"cycle {seq} to close")  # fmt: skip
    _train_one_cycle(api, COMPLETED + 1, reporters=1, joiners=2)
    yield Training(stack=stack, api=api)
    wipe(stack)


def _page(browser: Browser, training: Training) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    page.goto(training.url)
    return page


def _signed_in(browser: Browser, training: Training) -> Page:
    page = _page(browser, training)
    page.fill("#token", training.stack.admin_token)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#detail", state="visible", timeout=REFRESH_WAIT_MS)
    return page


def _screenshot(page: Page, out: Path) -> None:
    page.screenshot(path=str(out), full_page=True)
    print(f"console screenshot: {out}")


def _text(page: Page, selector: str) -> str:
    return page.locator(selector).inner_text().strip()


def test_without_the_token_the_console_shows_the_login_and_no_data(
    browser: Browser, training: Training, tmp_path: Path
) -> None:
    page = _page(browser, training)
    page.wait_for_selector("#login", state="visible")

    assert page.locator("#main").is_hidden()
    assert page.locator("#processes tbody tr").count() == 0

    page.fill("#token", "not-the-token")
    page.click("#login-form button[type=submit]")
    page.wait_for_function("() => document.getElementById('login-error').textContent !== ''")

    assert "refused" in _text(page, "#login-error")
    assert page.locator("#main").is_hidden()
    assert page.locator("#processes tbody tr").count() == 0
    assert training.stack.admin_token not in page.url
    _screenshot(page, tmp_path / "console-login.png")
    page.close()


def test_the_console_shows_the_live_cycle_as_admin_status_does(
    browser: Browser, training: Training, tmp_path: Path
) -> None:
    page = _signed_in(browser, training)
    status = training.status()
    cycle, config, pool = status["current_cycle"], status["server_config"], status["pool"]
    page.wait_for_function(
        "s => document.getElementById('cycle-seq').textContent === s", arg=f"#{cycle['seq']}"
    )

    assert cycle["seq"] == COMPLETED + 1 and (cycle["assigned"], cycle["reported"]) == (2, 1)
    assert _text(page, "#places") == f"{cycle['assigned']} / {config['max_workers']}"
    assert _text(page, "#reported") == f"{cycle['reported']} / {config['max_diffs']}"
    for key in ("workers", "registered", "available", "invited", "assigned", "slow"):
        assert _text(page, f"#pool-{key}") == str(pool[key]), key
    assert pool["slow"] > 0 and pool["registered"] > 0
    row = page.locator("#processes tbody tr.selected")
    assert row.get_attribute("data-name") == MODEL
    assert row.locator("td").all_inner_texts() == [
        MODEL, "1.0", "training", str(cycle["seq"]), str(status["latest_checkpoint"]),
        "fedavg", "sync",
    ]  # fmt: skip
    history = training.api.admin("GET", "cycles", params={"name": MODEL}).json()["cycles"]
    shown = page.locator("#cycles tbody tr")
    assert shown.count() == len(history) == COMPLETED + 1
    assert [shown.nth(i).get_attribute("data-seq") for i in range(shown.count())] == [
        str(c["seq"]) for c in history
    ]
    assert shown.nth(1).locator("td").nth(1).inner_text() == "closed"
    assert shown.nth(1).locator("td").nth(2).inner_text() == "2"
    assert page.locator("#pushes tbody tr").count() == len(pool["last_sends"]) > 0
    assert page.locator("#checkpoint").input_value() == str(status["latest_checkpoint"])
    assert page.evaluate("sessionStorage.getItem('firegrid.adminToken')") == (
        training.stack.admin_token
    )
    assert training.stack.admin_token not in page.url
    _screenshot(page, tmp_path / "console.png")
    page.close()


def test_the_chart_has_one_point_per_completed_cycle(browser: Browser, training: Training) -> None:
    page = _signed_in(browser, training)
    page.wait_for_selector("#chart circle.point")
    stats = training.api.admin("GET", "round-stats", params={"name": MODEL}).json()

    points = page.locator("#chart circle.point")
    rounds = [points.nth(i).get_attribute("data-round") for i in range(points.count())]
    assert rounds == [str(n) for n in range(1, COMPLETED + 1)]
    assert training.status()["latest_checkpoint"] - 1 == COMPLETED
    assert page.locator("#chart polygon.band").count() == 1
    titles = points.locator("title").all_text_contents()
    for title, stat in zip(titles, stats["rounds"], strict=True):
        assert f"{stat['weighted_accuracy']:.3f}" in title
        assert f"p10 {stat['p10']:.3f}" in title
    page.close()


def test_pressing_tick_resets_the_expired_cycle(browser: Browser, training: Training) -> None:
    page = _signed_in(browser, training)
    seq = COMPLETED + 1
    page.wait_for_function(
        "s => document.getElementById('cycle-seq').textContent === s", arg=f"#{seq}"
    )
    wait_past_deadline(training.api, MODEL)
    assert training.status()["current_cycle"]["epoch"] == 0  # nothing ticks but the button
    questions: list[str] = []

    def accept(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.click("#tick")
    page.wait_for_function(
        "() => document.getElementById('action-result').textContent.startsWith('tick:')"
    )

    assert questions and "tick" in questions[0].lower()
    assert f"{MODEL}:1.0#{seq}" in _text(page, "#action-result")
    cycle = training.status()["current_cycle"]
    assert (cycle["seq"], cycle["epoch"], cycle["assigned"]) == (seq, 1, 1)
    page.wait_for_function(
        "t => document.getElementById('places').textContent === t", arg=f"1 / {MAX_WORKERS}"
    )
    assert "epoch 1" in _text(page, "#cycle-status")
    page.wait_for_function(
        "() => document.querySelector('#cycles tbody tr td:nth-child(6)').textContent === '1'"
    )
    page.close()
