"""The operator console: one page, its script and its style sheet, shipped as package data
and served by the admin function at ``console`` (docs/protocol.md, Operator console).

They hold no data and no credentials, so they are served without any: every data call
the page makes carries the admin credentials itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Asset:
    """One file of the console, as served."""

    body: bytes
    content_type: str


PAGE = "/console"
"""The page's path under the admin function."""

FILES = {
    PAGE: ("index.html", "text/html; charset=utf-8"),
    "/console/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/console/style.css": ("style.css", "text/css; charset=utf-8"),
}
"""Path under the admin function -> (package file, content type)."""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Nothing but the console's own files and the admin API it calls: no inline script or
style, no third-party host, no framing."""


@functools.cache
def asset(path: str) -> Asset:
    """The file served at ``path`` (one of ``FILES``), read from the package once."""
    name, content_type = FILES[path]
    return Asset(resources.files(__name__).joinpath(name).read_bytes(), content_type)
