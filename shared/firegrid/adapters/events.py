"""Firestore CloudEvents decoded in one place into a typed ``Change(before, after)``.

Eventarc delivers raw protobuf (``DocumentEventData``), JSON in some setups; the
local router turns the emulator's base64 text into protobuf before it forwards an
event. The document's path is matched against the trigger's declared pattern
(``manifest.py``), so ``params`` holds its ids, and each side of the change is
decoded by the repository's codecs into a domain record.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.events.cloud import firestore as firestore_events

from firegrid.adapters import firestore_codecs as codecs
from firegrid.domain.cycle import Cycle
from firegrid.domain.fanout import Group
from firegrid.domain.model import Assignment, Worker

T = TypeVar("T")
Codec = Callable[[Mapping[str, str], dict[str, Any]], T]


@dataclass(frozen=True)
class Change(Generic[T]):
    params: Mapping[str, str]
    """The ids in the document's path, by the names of the trigger's pattern."""
    before: T | None
    after: T | None


@dataclass(frozen=True)
class RawChange:
    """A change before decoding: the document path and the two sides' fields."""

    path: str
    """Document path below ``documents/``, e.g. ``processes/p/cycles/1``."""
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class EventError(ValueError):
    """An event that can never be processed (a permanent failure: log and drop it)."""


def _value(value: Any) -> Any:
    pb = type(value).pb(value)
    kind = pb.WhichOneof("value_type")
    if kind is None or kind == "null_value":
        return None
    if kind == "map_value":
        return {k: _value(v) for k, v in value.map_value.fields.items()}
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "timestamp_value":
        return value.timestamp_value
    return getattr(value, kind)


def _fields(document: Any) -> dict[str, Any] | None:
    if not document.name:
        return None
    return {k: _value(v) for k, v in document.fields.items()}


def _parse(data: bytes | str | dict[str, Any]) -> Any:
    try:
        if isinstance(data, dict):
            return firestore_events.DocumentEventData.from_json(json.dumps(data))
        raw = data.encode() if isinstance(data, str) else data
        if raw.lstrip().startswith(b"{"):
            return firestore_events.DocumentEventData.from_json(raw.decode())
        return firestore_events.DocumentEventData.deserialize(raw)
    except Exception as error:  # protobuf and JSON parsers raise assorted types
        raise EventError(
            f"event data is neither DocumentEventData protobuf nor JSON: {error}"
        ) from None


def raw_change(subject: str, data: bytes | str | dict[str, Any]) -> RawChange:
    event = _parse(data)
    return RawChange(
        path=subject.removeprefix("documents/"),
        before=_fields(event.old_value),
        after=_fields(event.value),
    )


def path_params(pattern: str, path: str) -> dict[str, str]:
    """``processes/{process}/cycles/{cycle}`` against ``processes/p/cycles/3``:
    ``{"process": "p", "cycle": "3"}``; ``EventError`` if the path does not match."""
    names, parts = pattern.split("/"), path.split("/")
    if len(names) != len(parts):
        raise EventError(f"{path!r} does not match {pattern!r}")
    params = {}
    for name, part in zip(names, parts, strict=True):
        if name.startswith("{") and name.endswith("}"):
            params[name[1:-1]] = part
        elif name != part:
            raise EventError(f"{path!r} does not match {pattern!r}")
    return params


def decode(
    subject: str, data: bytes | str | dict[str, Any], pattern: str, codec: Codec[T]
) -> Change[T]:
    change = raw_change(subject, data)
    params = path_params(pattern, change.path)
    try:
        before = codec(params, change.before) if change.before is not None else None
        after = codec(params, change.after) if change.after is not None else None
    except (KeyError, ValueError, TypeError) as error:
        raise EventError(f"{change.path} is not a FireGrid document: {error!r}") from None
    return Change(params=params, before=before, after=after)


def cycle_codec(params: Mapping[str, str], data: dict[str, Any]) -> Cycle:
    return codecs.cycle_from(params["process"], data)


def assignment_codec(params: Mapping[str, str], data: dict[str, Any]) -> Assignment:
    return codecs.assignment_from(data)


def worker_codec(params: Mapping[str, str], data: dict[str, Any]) -> Worker:
    return codecs.worker_from(params["worker"], data)


def group_codec(params: Mapping[str, str], data: dict[str, Any]) -> Group:
    return codecs.group_from(params["process"], int(params["cycle"]), data)
