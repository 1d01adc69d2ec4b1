"""Push messages as FCM carries them to devices: data-only, every value a string.

Data-only (no ``notification`` block) so that a backgrounded app still receives
them. The checks here are FCM's own payload rules; a message that passes them
can only be refused by FCM for its *token*, which is what lets the FCM adapter
read an ``INVALID_ARGUMENT`` answer as "this token is bad".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

MAX_DATA_BYTES = 4096
"""FCM's limit on a message's data, keys and values together (UTF-8)."""
RESERVED_KEYS = frozenset({"from", "notification", "message_type"})
"""Data keys FCM uses itself and refuses in a payload."""
RESERVED_PREFIXES = ("google", "gcm")
"""Key prefixes FCM reserves."""


class PushType(StrEnum):
    """The ``type`` of a push, as listed in the protocol's push table."""

    REQUEST_FOR_CYCLE = "request_for_cycle"
    CYCLE_COMPLETED = "cycle_completed"
    CYCLE_RESET = "cycle_reset"
    FL_COMPLETED = "fl_completed"
    WORKER_ONLINE_STATUS = "worker_online_status"


@dataclass(frozen=True)
class PushMessage:
    """One data-only message to one device registration token."""

    token: str
    data: Mapping[str, str]

    def __post_init__(self) -> None:
        if not isinstance(self.token, str) or not self.token:
            raise ValueError("a push message needs a non-empty token")
        if not isinstance(self.data, Mapping):
            raise TypeError("push data must be a mapping")
        for key, value in self.data.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"push data must map strings to strings; {key!r}: {value!r}")
            if not key or key in RESERVED_KEYS or key.startswith(RESERVED_PREFIXES):
                raise ValueError(f"push data key {key!r} is empty or reserved by FCM")
        size = sum(len(key.encode()) + len(value.encode()) for key, value in self.data.items())
        if size > MAX_DATA_BYTES:
            raise ValueError(f"push data is {size} bytes; FCM accepts {MAX_DATA_BYTES}")
        # A read-only copy: the caller's dict may change after the message is built.
        object.__setattr__(self, "data", MappingProxyType(dict(self.data)))


def push_data(
    push_type: PushType,
    *,
    model: str,
    version: str,
    cycle_id: int | str | None = None,
    cycle_start_request_key: str | None = None,
) -> dict[str, str]:
    """The protocol's payload; every key is always present and absent values are ``""``,
    so devices parse one fixed shape."""
    if isinstance(cycle_id, bool):
        raise TypeError("cycle_id must be an int or a str")
    return {
        "type": PushType(push_type).value,
        "model": model,
        "version": version,
        "cycle_id": "" if cycle_id is None else str(cycle_id),
        "cycle_start_request_key": cycle_start_request_key or "",
    }


def messages_to(tokens: Iterable[str], data: Mapping[str, str]) -> tuple[PushMessage, ...]:
    """The same payload to each token, each token once (first occurrence kept)."""
    return tuple(PushMessage(token, data) for token in dict.fromkeys(tokens))


@dataclass(frozen=True)
class SendReport:
    """What became of a batch of messages.

    Each message lands in exactly one place: ``sent``, ``failed`` (after any
    retries) or, by its token (listed once), ``unregistered``.
    """

    sent: int
    failed: int
    unregistered: tuple[str, ...]
    """Tokens FCM will never deliver to again; remove them from the pool."""
    errors: tuple[str, ...]
    """One line per failure, for logs; not meant to be parsed."""
