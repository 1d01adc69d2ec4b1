"""Which failures are worth another try.

A trigger that raises is redelivered (the deploy uses ``--retry``), so a trigger
re-raises what a retry can cure (the store or the network being briefly
unavailable) and logs and drops the rest: a retry of a permanent failure would
only fail again, until the event expires.
"""

from __future__ import annotations

import google.auth.exceptions
import requests
from google.api_core import exceptions as gexc

from firegrid.domain.errors import Unavailable

_TRANSIENT: tuple[type[BaseException], ...] = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.GatewayTimeout,
    gexc.TooManyRequests,
    gexc.ResourceExhausted,
    gexc.Aborted,
    gexc.RetryError,
    google.auth.exceptions.TransportError,
    requests.ConnectionError,
    requests.Timeout,
    ConnectionError,
    TimeoutError,
    Unavailable,
)


def is_transient(error: BaseException) -> bool:
    if isinstance(error, _TRANSIENT):
        return True
    # Firestore's transaction helper wraps its last Aborted in a ValueError.
    return isinstance(error, ValueError) and isinstance(error.__cause__, gexc.Aborted)
