"""An HTTP server answering on a thread of this process, for as long as a context lasts:
the browser SDK's page, and the stand-ins the tests run (third-party auth endpoints,
a canned admin API, the FCM endpoint)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import HTTPServer


@contextlib.contextmanager
def serving(server: HTTPServer) -> Iterator[str]:
    """``server`` (bound to 127.0.0.1) serving on a daemon thread; its base URL, without a
    trailing slash. On exit it stops, closes its socket and its thread is joined."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
