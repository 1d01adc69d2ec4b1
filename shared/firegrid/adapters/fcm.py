"""The Notifier port on Firebase Cloud Messaging (HTTP v1, through firebase-admin).

``messaging.send_each`` posts one HTTP request per message (500 at most per
call, on as many threads). Outcomes are read by exception *type*:

* ``UnregisteredError``, ``SenderIdMismatchError`` and an ``InvalidArgumentError``
  about the token: the token is dead, reported in ``unregistered``;
* ``QuotaExceededError``, ``UnavailableError``, ``InternalError``,
  ``DeadlineExceededError`` (timeouts, and connection failures, which
  firebase-admin raises as ``UnavailableError``): retried, for just those
  messages, with exponential backoff, then counted as failed;
* anything else: failed at once.

This module owns the retry policy: firebase-admin's own transport retries
(up to 4 more tries of a 500/503 with real sleeps) are switched off on the
messaging app, so a send is bounded by ``RetryPolicy`` alone.

The app comes from the composition root (``firegrid.wiring``): in production a
firebase-admin app on Application Default Credentials; locally one bound to the
stack's FCM endpoint (``firegrid.local.fcm_app``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import firebase_admin
import requests.adapters
from firebase_admin import credentials, exceptions, messaging

from firegrid.domain.push import PushMessage, SendReport

APP_NAME = "firegrid-messaging"
MAX_BATCH = 500
"""The most messages ``send_each`` takes in one call."""
PRODUCTION_FCM = "https://fcm.googleapis.com"
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
MAX_ERROR_LINES = 100

DEAD_TOKEN: tuple[type[Exception], ...] = (
    messaging.UnregisteredError,
    messaging.SenderIdMismatchError,
)
TRANSIENT: tuple[type[Exception], ...] = (
    messaging.QuotaExceededError,
    exceptions.UnavailableError,
    exceptions.InternalError,
    exceptions.DeadlineExceededError,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Bounded exponential backoff for transient FCM failures."""

    attempts: int = 4
    """Tries per message, the first included."""
    initial_delay_s: float = 1.0
    """Wait before the second try; doubled before each further one."""
    max_delay_s: float = 30.0
    """Cap on one wait, ``Retry-After`` included."""

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.initial_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("a retry policy needs attempts >= 1 and non-negative delays")

    def delay_s(self, attempt: int, retry_after_s: float = 0.0) -> float:
        """The wait after failed try number ``attempt`` (1-based)."""
        backoff = self.initial_delay_s * 2 ** (attempt - 1)
        return min(max(backoff, retry_after_s), self.max_delay_s)


class FcmNotifier:
    """Sends data-only messages; never raises for a failed message, reports it."""

    def __init__(
        self,
        app: firebase_admin.App | Callable[[], firebase_admin.App],
        *,
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], None] = time.sleep,
        batch_size: int = MAX_BATCH,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH}")
        self._app = app
        """The messaging app, or a factory that builds it on first use."""
        self._retry = retry
        self._sleep = sleep
        self._batch_size = batch_size

    def send(self, messages: Sequence[PushMessage]) -> SendReport:
        if not messages:
            return SendReport(sent=0, failed=0, unregistered=(), errors=())
        app = self._app if isinstance(self._app, firebase_admin.App) else self._app()
        pending = list(messages)
        sent, failures = 0, []
        unregistered: dict[str, None] = {}
        for attempt in range(1, self._retry.attempts + 1):
            retry: list[PushMessage] = []
            retry_after_s = 0.0
            for message, error in self._send_once(app, pending):
                if error is None:
                    sent += 1
                elif is_dead_token(error):
                    unregistered[message.token] = None
                elif isinstance(error, TRANSIENT) and attempt < self._retry.attempts:
                    retry.append(message)
                    retry_after_s = max(retry_after_s, _retry_after_s(error))
                else:
                    failures.append(f"{type(error).__name__} for {_hint(message.token)}: {error}")
            if not retry:
                break
            delay_s = self._retry.delay_s(attempt, retry_after_s)
            log.info("retrying %d push messages in %.1f s", len(retry), delay_s)
            self._sleep(delay_s)
            pending = retry
        if failures:
            log.warning("%d push messages failed, e.g. %s", len(failures), failures[0])
        return SendReport(
            sent=sent,
            failed=len(failures),
            unregistered=tuple(unregistered),
            errors=_capped(failures),
        )

    def _send_once(
        self, app: firebase_admin.App, messages: list[PushMessage]
    ) -> Iterator[tuple[PushMessage, Exception | None]]:
        for start in range(0, len(messages), self._batch_size):
            batch = messages[start : start + self._batch_size]
            try:
                responses = messaging.send_each([_fcm_message(m) for m in batch], app=app).responses
            except exceptions.FirebaseError as error:
                # The whole call failed (e.g. no thread could start): every message shares it.
                yield from ((message, error) for message in batch)
                continue
            for message, response in zip(batch, responses, strict=True):
                yield message, None if response.success else response.exception


def is_dead_token(error: Exception) -> bool:
    """True when FCM will never deliver to the message's token.

    FCM answers ``INVALID_ARGUMENT`` both for a malformed token and for a
    malformed message; the structured ``details`` tell them apart (an
    ``FcmError`` detail for the token, a ``BadRequest`` field violation for
    the message), never the message text.
    """
    if isinstance(error, DEAD_TOKEN):
        return True
    if not isinstance(error, exceptions.InvalidArgumentError):
        return False
    details = _error_details(error)
    fields = [
        violation.get("field")
        for detail in details
        if detail.get("@type") == BAD_REQUEST
        for violation in detail.get("fieldViolations", [])
        if isinstance(violation, dict)
    ]
    if fields:
        return all(field in ("message.token", "message.fid") for field in fields)
    return any(detail.get("@type") == FCM_ERROR for detail in details)


def _error_details(error: exceptions.FirebaseError) -> list[dict[str, Any]]:
    response = error.http_response
    if response is None:
        return []
    try:
        details = response.json()["error"]["details"]
    except (ValueError, KeyError, TypeError):
        return []
    return [detail for detail in details if isinstance(detail, dict)]


def _retry_after_s(error: Exception) -> float:
    response = getattr(error, "http_response", None)
    value = response.headers.get("Retry-After", "") if response is not None else ""
    return float(value) if value.isdigit() else 0.0


def _fcm_message(message: PushMessage) -> messaging.Message:
    fcm = messaging.Message(data=dict(message.data))
    # Devices register FCM registration tokens; 7.x's ``fid`` is a Firebase
    # installation ID, another identifier. Set after construction because
    # only ``__init__`` warns, and global warning filters are not thread-safe.
    fcm.token = message.token
    return fcm


def _hint(token: str) -> str:
    """Enough of a token to tell failures apart in a log, not enough to use it."""
    return f"token {token[:8]}..."


def _capped(lines: list[str]) -> tuple[str, ...]:
    if len(lines) <= MAX_ERROR_LINES:
        return tuple(lines)
    return (*lines[:MAX_ERROR_LINES], f"... and {len(lines) - MAX_ERROR_LINES} more")


def messaging_app(
    project_id: str,
    *,
    credential: credentials.Base | None = None,
    url: str = PRODUCTION_FCM,
    name: str = APP_NAME,
) -> firebase_admin.App:
    """A firebase-admin app for messaging (Application Default Credentials unless a
    ``credential`` is given), with its transport retries off: ``RetryPolicy`` decides."""
    app = firebase_admin.initialize_app(credential, {"projectId": project_id}, name=name)
    _without_transport_retries(app, url)
    return app


def _without_transport_retries(app: firebase_admin.App, url: str) -> None:
    """Make each ``send_each`` request a single try, so ``RetryPolicy`` is the only retry.

    firebase-admin has no option for this; its messaging session is private.
    The pool blocks at 100 connections rather than opening (and discarding,
    with a warning each) one per thread of a 500-message batch.
    """
    parts = urlsplit(url)
    adapter = requests.adapters.HTTPAdapter(
        pool_connections=1, pool_maxsize=100, pool_block=True, max_retries=0
    )
    try:
        session = messaging._get_messaging_service(app)._client.session
    except AttributeError:
        log.warning("firebase-admin internals changed; its transport retries stay on")
        return
    session.mount(f"{parts.scheme}://{parts.netloc}", adapter)
