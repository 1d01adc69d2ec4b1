"""One error family: each failure a caller can act on has a type and a stable machine code.

Their HTTP statuses are the edge's business (``firegrid.wire.STATUS``).
"""

from __future__ import annotations


class FireGridError(Exception):
    """A failure the caller can act on, with a stable machine code."""

    default_code: str = "internal"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code


class BadRequest(FireGridError):
    default_code = "bad_request"


class Unauthorized(FireGridError):
    default_code = "unauthorized"


class NotFound(FireGridError):
    default_code = "not_found"


class MethodNotAllowed(FireGridError):
    default_code = "method_not_allowed"


class Conflict(FireGridError):
    default_code = "conflict"


class PayloadTooLarge(FireGridError):
    default_code = "too_large"


class Unavailable(FireGridError):
    """Whoever could decide (a store, a third party) cannot be asked now: try again."""

    default_code = "unavailable"
