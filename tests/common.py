"""Test helpers shared by every layer: one tiny model and its plan, base64."""

from __future__ import annotations

import base64
import functools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from firegrid.domain import blobs
from firegrid.domain.config import ServerConfig
from firegrid.domain.optimizers import ServerOptimizer
from firegrid.local.stack import StackInfo
from firegrid.services.context import Context

State = dict[str, np.ndarray]


@functools.cache
def tiny_model() -> tuple[State, bytes]:
    """A small MLP's state and its torch.export plan (built once per test session)."""
    import torch

    from firegrid.plans import build_plan, state_of

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    return state_of(module), build_plan(module, torch.zeros(2, 8))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def document_event(
    project_id: str, path: str, before: dict | None, after: dict | None
) -> tuple[dict[str, str], bytes]:
    """Headers and raw protobuf body of the CloudEvent Eventarc sends for a write of the
    document at ``path`` (fields as Python values; ``None`` for a side that is absent)."""
    import uuid
    from datetime import datetime

    from google.events.cloud.firestore import (
        ArrayValue,
        Document,
        DocumentEventData,
        MapValue,
        Value,
    )

    def value(item: object) -> Value:
        if item is None:
            return Value(null_value=0)
        if isinstance(item, bool):
            return Value(boolean_value=item)
        if isinstance(item, int):
            return Value(integer_value=item)
        if isinstance(item, float):
            return Value(double_value=item)
        if isinstance(item, str):
            return Value(string_value=item)
        if isinstance(item, datetime):
            return Value(timestamp_value=item)
        if isinstance(item, dict):
            return Value(map_value=MapValue(fields={k: value(v) for k, v in item.items()}))
        if isinstance(item, list):
            return Value(array_value=ArrayValue(values=[value(v) for v in item]))
        raise TypeError(f"no Firestore value for {item!r}")

    name = f"projects/{project_id}/databases/(default)/documents/{path}"

    def document(fields: dict | None) -> Document:
        if fields is None:
            return Document()
        return Document(name=name, fields={k: value(v) for k, v in fields.items()})

    data = DocumentEventData(old_value=document(before), value=document(after))
    headers = {
        "Content-Type": "application/protobuf",
        "ce-id": str(uuid.uuid4()),
        "ce-specversion": "1.0",
        "ce-type": "google.cloud.firestore.document.v1.written",
        "ce-source": f"//firestore.googleapis.com/projects/{project_id}/databases/(default)",
        "ce-subject": f"documents/{path}",
        "ce-document": path,
    }
    return headers, DocumentEventData.serialize(data)


def published(ctx: Context, process_id: str, number: int) -> str:
    """The object checkpoint ``number`` was published as (named by its aggregation)."""
    if number == 1:
        return blobs.checkpoint_object(process_id, 1)
    summary = ctx.repo.get_cycle(process_id, number - 1).summary
    assert summary is not None and summary.checkpoint_object is not None
    return summary.checkpoint_object


def checkpoint_writes(ctx: Context, process_id: str, number: int) -> list[str]:
    """Every write of an aggregated checkpoint ``number``, whichever attempt made it."""
    return [
        name for name in ctx.blobs.writes if name.startswith(checkpoint_prefix(process_id, number))
    ]


def checkpoint_prefix(process_id: str, number: int) -> str:
    """What the name of every aggregation attempt's checkpoint ``number`` starts with."""
    return blobs.checkpoint_object(process_id, number).removesuffix(".safetensors") + "-"


def server_optimizer(raw: dict[str, Any]) -> ServerOptimizer:
    """``raw`` parsed as the ``server_optimizer`` of a valid server_config."""
    base = {"cycle_length": 60, "num_cycles": 1, "server_optimizer": raw}
    optimizer = ServerConfig.parse(base).server_optimizer
    assert optimizer is not None
    return optimizer


def write_stack_file(
    directory: Path, *, base_url: str, admin_token: str, pids: dict[str, int]
) -> None:
    """A ``stack.json`` in ``directory`` naming a stack at ``base_url`` (the emulator
    addresses are placeholders), as ``firegrid stack up`` writes it."""
    stack = StackInfo(
        base_url=base_url,
        admin_token=admin_token,
        project_id="demo-firegrid",
        bucket="bucket",
        firestore_host="127.0.0.1:1",
        storage_host="http://127.0.0.1:2",
        router_url="http://127.0.0.1:3",
        tick_seconds=0,
        pids=pids,
        started_at=datetime.now(UTC),
        log_dir=str(directory),
        source="functions/main.py",
    )
    (directory / "stack.json").write_text(stack.to_json())
