"""FireGrid's own schemathesis checks (loaded by ``firegrid fuzz`` via SCHEMATHESIS_HOOKS)."""

from __future__ import annotations

import re
from typing import Any

import schemathesis

# A traceback's header or one of its frames ("File "/srv/x.py", line 12"); error messages
# may echo what the request sent, so a bare path is not a leak.
_TRACEBACK = re.compile(r'Traceback \(most recent call last\)|File "[^"\n]+", line \d+')


@schemathesis.check
def no_traceback_text(ctx: Any, response: Any, case: Any) -> bool | None:
    """No answer, error or not, carries a traceback."""
    text = response.content.decode("utf-8", errors="replace")
    leak = _TRACEBACK.search(text)
    if leak is not None:
        raise AssertionError(f"the response carries a traceback: {leak.group(0)!r}")
    return None
