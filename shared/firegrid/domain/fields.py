"""Reading typed values out of JSON objects: one toolkit for request bodies, query strings
and process configs.

Every failure is a ``BadRequest`` that names the field; every value that passes
fits where it is going (int64, finite floats, bounded strings, Firestore-safe ids
and keys), so nothing accepted here can fail later in a write or a query.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar, overload

from firegrid.domain import limits
from firegrid.domain.errors import BadRequest

N = TypeVar("N", int, float)

INVALID = "invalid_field"
MISSING = "missing_field"

_ASCII_DIGITS = re.compile(r"[0-9]{1,18}", re.ASCII)
_RESERVED_ID = re.compile(r"__.*__", re.DOTALL)


def is_reserved_name(name: str) -> bool:
    """Firestore reserves ids and field names of the form ``__x__``."""
    return _RESERVED_ID.fullmatch(name) is not None


class Fields:
    """Typed access to one JSON object.

    ``prefix`` names the object in messages (``'server_config.max_workers'``);
    ``invalid`` and ``missing`` are the error codes of a bad and an absent field.
    """

    def __init__(
        self,
        raw: object,
        *,
        what: str = "the request body",
        prefix: str = "",
        invalid: str = INVALID,
        missing: str = MISSING,
    ) -> None:
        if not isinstance(raw, Mapping):
            raise BadRequest(f"{what} must be a JSON object", invalid)
        self.raw: Mapping[str, Any] = raw
        self._prefix = prefix
        self._invalid = invalid
        self._missing = missing

    def bad(self, key: str, problem: str) -> BadRequest:
        return BadRequest(f"'{self._prefix}{key}' {problem}", self._invalid)

    def _absent(self, key: str) -> BadRequest:
        return BadRequest(f"'{self._prefix}{key}' is required", self._missing)

    def _find(self, key: str, aliases: tuple[str, ...]) -> tuple[str, Any]:
        """``key`` or the one alias of it that is present and not null."""
        present = [name for name in (key, *aliases) if self.raw.get(name) is not None]
        if len(present) > 1:
            names = " and ".join(f"'{self._prefix}{name}'" for name in present)
            raise BadRequest(f"{names} name the same field: send one of them", self._invalid)
        return (present[0], self.raw[present[0]]) if present else (key, None)

    def present(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def only(self, allowed: Iterable[str], *, ignored: Iterable[str] = (), kind: str = "") -> None:
        """Refuse keys outside ``allowed`` (a typo must not silently change behaviour)."""
        unknown = set(self.raw) - set(allowed) - set(ignored)
        if unknown:
            label = f"unknown {kind} keys" if kind else "unknown keys"
            raise BadRequest(f"{label}: {', '.join(sorted(unknown))}", self._invalid)

    @overload
    def text(
        self,
        key: str,
        *aliases: str,
        required: Literal[True],
        max_length: int = ...,
        pattern: re.Pattern[str] | None = ...,
    ) -> str: ...

    @overload
    def text(
        self,
        key: str,
        *aliases: str,
        required: bool = ...,
        max_length: int = ...,
        pattern: re.Pattern[str] | None = ...,
    ) -> str | None: ...

    def text(
        self,
        key: str,
        *aliases: str,
        required: bool = False,
        max_length: int = limits.MAX_TEXT_LENGTH,
        pattern: re.Pattern[str] | None = None,
    ) -> str | None:
        """A non-empty string of at most ``max_length`` characters (matching ``pattern``)."""
        name, value = self._find(key, aliases)
        if value is None:
            if required:
                raise self._absent(key)
            return None
        if not isinstance(value, str) or not value:
            raise self.bad(name, "must be a non-empty string")
        if len(value) > max_length:
            raise self.bad(name, f"must be at most {max_length} characters")
        if pattern is not None and pattern.fullmatch(value) is None:
            raise self.bad(name, "has characters or a form that is not allowed")
        return value

    def version(self, key: str) -> str | None:
        """Versions are strings, but PyGrid clients often send numbers."""
        value = self.raw.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value) if math.isfinite(value) else None
            if value is None or len(value) > limits.MAX_VERSION_LENGTH:
                raise self.bad(key, "must be a string")
            return value
        return self.text(key, max_length=limits.MAX_VERSION_LENGTH)

    @overload
    def integer(
        self,
        key: str,
        *aliases: str,
        required: Literal[True],
        minimum: int = ...,
        maximum: int = ...,
    ) -> int: ...

    @overload
    def integer(
        self,
        key: str,
        *aliases: str,
        required: bool = ...,
        minimum: int = ...,
        maximum: int = ...,
    ) -> int | None: ...

    def integer(
        self,
        key: str,
        *aliases: str,
        required: bool = False,
        minimum: int = 0,
        maximum: int = limits.INT64_MAX,
    ) -> int | None:
        """A JSON integer within ``[minimum, maximum]`` (never beyond int64)."""
        name, value = self._find(key, aliases)
        if value is None:
            if required:
                raise self._absent(key)
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.bad(name, "must be an integer")
        return self._within(name, value, minimum, maximum)

    def whole_number(self, key: str, *, minimum: int = 0, maximum: int) -> int | None:
        """An integer that may arrive as ``4.0`` (device profiles from loosely typed clients)."""
        value = self.raw.get(key)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return self._within(key, int(value), minimum, maximum)
        return self.integer(key, minimum=minimum, maximum=maximum)

    @overload
    def number(
        self,
        key: str,
        *aliases: str,
        required: Literal[True],
        minimum: float = ...,
        maximum: float = ...,
        strings: bool = ...,
    ) -> float: ...

    @overload
    def number(
        self,
        key: str,
        *aliases: str,
        required: bool = ...,
        minimum: float = ...,
        maximum: float = ...,
        strings: bool = ...,
    ) -> float | None: ...

    def number(
        self,
        key: str,
        *aliases: str,
        required: bool = False,
        minimum: float = 0.0,
        maximum: float = 1e300,
        strings: bool = False,
    ) -> float | None:
        """A finite number within ``[minimum, maximum]``; numeric strings if ``strings``."""
        name, value = self._find(key, aliases)
        if value is None:
            if required:
                raise self._absent(key)
            return None
        if strings and isinstance(value, str) and len(value) <= 64:
            try:
                value = float(value)
            except ValueError:
                raise self.bad(name, "must be a number") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.bad(name, "must be a number")
        try:
            number = float(value)
        except OverflowError:  # an integer literal with hundreds of digits
            raise self.bad(name, "is out of range") from None
        if not math.isfinite(number):
            raise self.bad(name, "must be a finite number")
        return self._within(name, number, minimum, maximum)

    def _within(self, name: str, value: N, minimum: float, maximum: float) -> N:
        if value < minimum:
            if minimum == 0:
                raise self.bad(name, "must not be negative")
            raise self.bad(name, f"must be >= {_shown(minimum)}")
        if value > maximum:
            raise self.bad(name, f"must be <= {_shown(maximum)}")
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.raw.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.bad(key, "must be true or false")
        return value

    def choice(self, key: str, choices: Iterable[str], default: str) -> str:
        options = tuple(choices)
        value = self.raw.get(key)
        if value is None:
            return default
        if value not in options:
            raise self.bad(key, f"must be one of {', '.join(options)}")
        return str(value)

    def int_choice(self, key: str, choices: tuple[int, ...]) -> int:
        value = self.raw.get(key, choices[0])
        if isinstance(value, bool) or value not in choices:
            raise self.bad(key, f"must be one of {', '.join(map(str, choices))}")
        return int(value)

    def digits(self, key: str) -> int | None:
        """A whole number written in ASCII digits (query strings, ``checkpoint=3``)."""
        value = self.text(key, max_length=18)
        if value is None:
            return None
        if _ASCII_DIGITS.fullmatch(value) is None:
            raise self.bad(key, "must be a number")
        return int(value)

    def base64(self, key: str) -> bytes:
        value = self.raw.get(key)
        if not isinstance(value, str) or not value:
            raise self.bad(key, "must be a base64 string")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            message = f"'{self._prefix}{key}' is not valid base64"
            raise BadRequest(message, "invalid_base64") from None


def _shown(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def check_storable(value: object, what: str, *, code: str = INVALID, depth: int = 0) -> None:
    """Refuse JSON a Firestore document cannot hold: ints beyond int64, non-finite
    floats, maps nested deeper than Firestore allows, reserved or empty field names.
    ``what`` names the value in messages; nested values are named by their path."""
    if depth > limits.MAX_NESTING:
        raise BadRequest(f"{what} is nested too deeply", code)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if not limits.INT64_MIN <= value <= limits.INT64_MAX:
            raise BadRequest(f"{what} is an integer outside the 64-bit range", code)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise BadRequest(f"{what} is a number that is not finite", code)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or not key or is_reserved_name(key):
                raise BadRequest(f"{what} has a field name that is not allowed: {key!r}", code)
            check_storable(item, _member(what, key), code=code, depth=depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_storable(item, _member(what, f"[{index}]"), code=code, depth=depth + 1)
    else:
        raise BadRequest(f"{what} is not JSON", code)


def _member(what: str, key: str) -> str:
    """``'a'`` + ``b`` -> ``'a.b'``; the request body's members are named alone."""
    if not what.startswith("'"):
        return f"'{key}'"
    separator = "" if key.startswith("[") else "."
    return f"{what[:-1]}{separator}{key}'"
