"""Hosting a model through upload URLs (``hosting-upload-urls``, then ``host-training``
with ``uploaded``), on the in-memory fakes: the same validation as inline hosting,
nothing half-created, the uploaded objects gone afterwards whatever happened."""

from __future__ import annotations

from typing import Any

import pytest

from firegrid.domain import blobs, limits
from firegrid.domain.errors import BadRequest, Conflict, PayloadTooLarge
from firegrid.services import hosting
from firegrid.services.context import Context
from firegrid.tensors import encode_state
from firegrid.wire import status_of
from tests.common import State
from tests.edge import call

PROCESS = hosting.process_id_for("big", "1.0")
NAMED = {"name": "big", "version": "1.0", "plans": ["training_plan"]}
HOST = {
    "uploaded": True,
    "plans": ["training_plan"],
    "client_config": {"name": "big", "version": "1.0", "batch_size": 4, "lr": 0.1},
    "server_config": {"cycle_length": 60, "num_cycles": 3, "max_diffs": 2},
}


def upload(ctx: Context, model: bytes, plan: bytes | None) -> None:
    """PUT what the grants allow, as the operator client does."""
    ctx.blobs.put(blobs.hosting_model_upload(PROCESS), model)
    if plan is not None:
        ctx.blobs.put(blobs.hosting_plan_upload(PROCESS, "training_plan"), plan)


def uploads_left(ctx: Context) -> list[str]:
    prefix = blobs.hosting_upload_prefix(PROCESS)
    return [name for name in ctx.blobs.objects if name.startswith(prefix)]  # type: ignore[attr-defined]


def test_the_urls_are_signed_puts_bounded_in_size_one_per_file(ctx: Context) -> None:
    body = call(hosting.hosting_upload_urls, ctx, NAMED | {"plans": ["training_plan", "eval"]})

    assert set(body["plans"]) == {"training_plan", "eval"}
    for grant in (body["model"], *body["plans"].values()):
        assert grant["method"] == "PUT"
        assert grant["max_bytes"] == limits.MAX_HOSTED_FILE_BYTES
        assert grant["headers"]["x-goog-content-length-range"] == (
            f"0,{limits.MAX_HOSTED_FILE_BYTES}"
        )
    assert sorted(ctx.blobs.signed) == sorted(  # type: ignore[attr-defined]
        [
            ("PUT", blobs.hosting_model_upload(PROCESS)),
            ("PUT", blobs.hosting_plan_upload(PROCESS, "training_plan")),
            ("PUT", blobs.hosting_plan_upload(PROCESS, "eval")),
        ]
    )


def test_uploaded_files_are_hosted_and_then_removed(
    ctx: Context, tiny: tuple[State, bytes]
) -> None:
    state, plan = tiny
    model = encode_state(state)
    upload(ctx, model, plan)

    process_id = call(hosting.host_training, ctx, HOST)["process_id"]

    assert process_id == PROCESS
    assert ctx.blobs.get(blobs.checkpoint_object(PROCESS, 1)) == model
    assert ctx.blobs.get(blobs.plan_object(PROCESS, "training_plan")) == plan
    assert ctx.repo.get_cycle(PROCESS, 1) is not None
    assert uploads_left(ctx) == []


@pytest.mark.parametrize(
    ("model", "plan", "error", "code"),
    [
        (None, None, BadRequest, "missing_upload"),
        ("model", None, BadRequest, "missing_upload"),
        ("model", b"not a plan", BadRequest, "invalid_plan"),
        (b"not safetensors", "plan", BadRequest, "invalid_safetensors"),
    ],
)
def test_a_refused_hosting_creates_nothing_and_removes_the_uploads(
    ctx: Context, tiny: tuple[State, bytes], model: Any, plan: Any, error: type, code: str
) -> None:
    state, good_plan = tiny
    model_bytes = encode_state(state) if model == "model" else model
    if model_bytes is not None:
        upload(ctx, model_bytes, good_plan if plan == "plan" else plan)

    with pytest.raises(error) as refused:
        call(hosting.host_training, ctx, HOST)

    assert (status_of(refused.value), refused.value.code) == (400, code)
    assert ctx.repo.get_process(PROCESS) is None
    assert ctx.blobs.objects == {}  # type: ignore[attr-defined]


def test_an_upload_above_the_bound_is_413_and_removed(
    ctx: Context, tiny: tuple[State, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, plan = tiny
    model = encode_state(state)
    monkeypatch.setattr(limits, "MAX_HOSTED_FILE_BYTES", len(model) - 1)
    upload(ctx, model, plan)

    with pytest.raises(PayloadTooLarge) as refused:
        call(hosting.host_training, ctx, HOST)

    assert status_of(refused.value) == 413
    assert ctx.repo.get_process(PROCESS) is None
    assert ctx.blobs.objects == {}  # type: ignore[attr-defined]


def test_no_urls_for_a_process_that_exists(ctx: Context, tiny: tuple[State, bytes]) -> None:
    state, plan = tiny
    upload(ctx, encode_state(state), plan)
    call(hosting.host_training, ctx, HOST)
    signed = list(ctx.blobs.signed)  # type: ignore[attr-defined]

    with pytest.raises(Conflict) as refused:
        call(hosting.hosting_upload_urls, ctx, NAMED)

    assert refused.value.code == "duplicate_process"
    assert ctx.blobs.signed == signed  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "change",
    [
        {"plans": {"training_plan": "AAAA"}},  # uploaded plans are named in a list
        {"plans": ["eval"]},
        {"plans": ["training_plan", "training_plan"]},
        {"plans": ["training_plan", {"x": 1}]},
        {"plans": ["training_plan", "../x"]},
        {"plans": ["training_plan", *(f"p{i}" for i in range(limits.MAX_PLANS))]},
        {"model": "AAAA"},  # either inline or uploaded
        {"uploaded": "yes"},
    ],
)
def test_hostile_uploaded_hosting_is_a_400(ctx: Context, change: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as refused:
        call(hosting.host_training, ctx, HOST | change)
    assert status_of(refused.value) == 400


@pytest.mark.parametrize(
    "change",
    [
        {"version": None},
        {"name": ""},
        {"name": "x" * (limits.MAX_NAME_LENGTH + 1)},
        {"plans": None},
        {"plans": "training_plan"},
        {"plans": []},
        {"plans": [1, 2]},
    ],
)
def test_hostile_upload_url_requests_are_a_400(ctx: Context, change: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as refused:
        call(hosting.hosting_upload_urls, ctx, NAMED | change)
    assert status_of(refused.value) == 400
    assert ctx.blobs.signed == []  # type: ignore[attr-defined]
