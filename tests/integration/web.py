"""Playwright pages with FireGrid's browser SDK loaded (``firegrid.local.web_page``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from firegrid.local.web_page import served_page

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page


@contextlib.contextmanager
def sdk_page(browser: Browser) -> Iterator[Page]:
    """A fresh page with the SDK loaded as ``window.firegrid``; its console errors fail it."""
    errors: list[str] = []
    with served_page() as origin:
        page = browser.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            page.goto(origin)
            page.wait_for_function("window.sdkReady === true", timeout=30_000)
            yield page
        finally:
            page.close()
    assert not errors, errors
