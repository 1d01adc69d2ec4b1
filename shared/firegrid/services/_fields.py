"""Reading request fields with clear 400s (the wire is JSON, so types vary)."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from typing import Any

from firegrid.domain.errors import BadRequest


def required_str(body: Mapping[str, Any], key: str, *aliases: str) -> str:
    value = optional_str(body, key, *aliases)
    if value is None:
        raise BadRequest(f"'{key}' is required", "missing_field")
    return value


def optional_str(body: Mapping[str, Any], key: str, *aliases: str) -> str | None:
    for name in (key, *aliases):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise BadRequest(f"'{name}' must be a non-empty string", "invalid_field")
        return value
    return None


def optional_version(body: Mapping[str, Any], key: str) -> str | None:
    """Versions are strings, but PyGrid clients often send numbers."""
    value = body.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return optional_str(body, key)


def optional_number(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise BadRequest(f"'{key}' must be a number", "invalid_field") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"'{key}' must be a number", "invalid_field")
    if value < 0:
        raise BadRequest(f"'{key}' must not be negative", "invalid_field")
    return float(value)


def positive_int(body: Mapping[str, Any], key: str, *aliases: str) -> int:
    for name in (key, *aliases):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f"'{name}' must be an integer", "invalid_field")
        if value < 1:
            raise BadRequest(f"'{name}' must be >= 1", "invalid_field")
        return value
    raise BadRequest(f"'{key}' is required", "missing_field")


def base64_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"'{what}' must be a base64 string", "invalid_field")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"'{what}' is not valid base64", "invalid_base64") from None
