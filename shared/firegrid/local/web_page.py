"""The browser SDK on a page of its own 127.0.0.1 origin (for the browser tests and
``bench/browser.py``): calls from it to the device API are cross-origin, as from an app."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from firegrid.local.serving import serving

SDK = "firegrid-device.js"
PAGE = b"""<!doctype html>
<meta charset="utf-8">
<title>FireGrid browser device</title>
<script type="module">
  import * as firegrid from "./firegrid-device.js";
  window.firegrid = firegrid;
  window.bytesOf = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  window.sdkReady = true;
</script>
"""


def sdk_source() -> bytes:
    """The SDK as the package ships it (package data, found like any installed file)."""
    return (resources.files("firegrid") / "web" / SDK).read_bytes()


def chromium_executable() -> str | None:
    """Debian's chromium (``scripts/dev.sh`` installs it), or ``FIREGRID_CHROMIUM``."""
    return shutil.which(os.environ.get("FIREGRID_CHROMIUM", "chromium"))


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        files = {"/": ("text/html", PAGE), f"/{SDK}": ("text/javascript", sdk_source())}
        content_type, body = files.get(self.path, ("text/plain", b""))
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        """Quiet: the test's output is the assertions."""


@contextlib.contextmanager
def served_page() -> Iterator[str]:
    """The page's origin, on a free 127.0.0.1 port, for as long as the context lasts."""
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _Handler)) as base_url:
        yield f"{base_url}/"
