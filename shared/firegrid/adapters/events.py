"""Firestore CloudEvents decoded in one place into a ``Change(before, after)``.

Production Eventarc sends raw protobuf; JSON and (defensively) base64 text are
accepted too.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from google.events.cloud import firestore as firestore_events


@dataclass(frozen=True)
class Change:
    path: str
    """Document path below ``documents/``, e.g. ``processes/p/cycles/1``."""
    before: dict[str, Any] | None
    after: dict[str, Any] | None


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
    if isinstance(data, dict):
        return firestore_events.DocumentEventData.from_json(json.dumps(data))
    raw = data.encode() if isinstance(data, str) else data
    if raw.lstrip().startswith(b"{"):
        return firestore_events.DocumentEventData.from_json(raw.decode())
    try:
        return firestore_events.DocumentEventData.deserialize(raw)
    except Exception:  # not protobuf: the local emulator's base64 text
        try:
            return firestore_events.DocumentEventData.deserialize(
                base64.b64decode(raw, validate=True)
            )
        except binascii.Error:
            raise ValueError("event data is neither protobuf, JSON nor base64") from None


def decode_change(subject: str, data: bytes | str | dict[str, Any]) -> Change:
    event = _parse(data)
    path = subject.removeprefix("documents/")
    return Change(path=path, before=_fields(event.old_value), after=_fields(event.value))
