"""One error family; each error knows its wire form (HTTP status, code, message)."""

from __future__ import annotations


class FireGridError(Exception):
    """A failure the caller can act on, with a stable machine code."""

    status: int = 500
    default_code: str = "internal"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code

    def to_wire(self) -> dict[str, str]:
        return {"error": self.message, "code": self.code}


class BadRequest(FireGridError):
    status = 400
    default_code = "bad_request"


class Unauthorized(FireGridError):
    status = 401
    default_code = "unauthorized"


class NotFound(FireGridError):
    status = 404
    default_code = "not_found"


class MethodNotAllowed(FireGridError):
    status = 405
    default_code = "method_not_allowed"


class Conflict(FireGridError):
    status = 409
    default_code = "conflict"


class PayloadTooLarge(FireGridError):
    status = 413
    default_code = "too_large"


class Unavailable(FireGridError):
    status = 503
    default_code = "unavailable"
