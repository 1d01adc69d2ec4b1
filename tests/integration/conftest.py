"""Fixtures that run the real local stack (emulators, functions, router)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from firegrid.local.stack import StackInfo, start_stack, stop_stack, wipe

if TYPE_CHECKING:
    from playwright.sync_api import Browser


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    """One stack for the whole session, without a scheduler: tests fire ticks themselves."""
    directory = tmp_path_factory.mktemp("firegrid")
    info = start_stack(directory, tick_seconds=0)
    try:
        yield info
    finally:
        stop_stack(directory)


@pytest.fixture
def clean_stack(stack: StackInfo) -> StackInfo:
    """The session stack with no documents and an empty bucket."""
    wipe(stack)
    return stack


@pytest.fixture
def stack_env(stack: StackInfo, monkeypatch: pytest.MonkeyPatch) -> StackInfo:
    """The session stack, with this process's Google clients pointed at its emulators."""
    for key, value in stack.client_env().items():
        monkeypatch.setenv(key, value)
    return stack


@pytest.fixture
def ticker(clean_stack: StackInfo) -> Iterator[None]:
    """Fire the scheduled tick every 0.3 s during the test (the session stack has no scheduler)."""
    import threading

    import requests

    stop = threading.Event()

    def loop() -> None:
        headers = {"Authorization": f"Bearer {clean_stack.admin_token}"}
        while not stop.wait(0.3):
            with contextlib.suppress(requests.RequestException):
                requests.post(f"{clean_stack.base_url}/tick", headers=headers, timeout=30)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless chromium (Debian's, installed by scripts/dev.sh), driven by Playwright.

    One per module, not per session: while Playwright's sync API is open it keeps an
    asyncio loop running in this thread, and later tests that call ``asyncio.run`` (as
    firebase-admin's FCM send does) would fail with "cannot be called from a running
    event loop".

    Playwright's own browser download is never used: ``FIREGRID_CHROMIUM`` or
    ``chromium`` on the PATH is the browser.
    """
    from playwright.sync_api import sync_playwright

    from firegrid.local.web_page import chromium_executable

    executable = chromium_executable()
    if executable is None:
        pytest.fail("the browser tests need chromium: `bash scripts/dev.sh test` installs it")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()
