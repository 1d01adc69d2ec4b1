"""Hosting a model for training (PyGrid's ``host-training``), and deleting a process."""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import numpy as np

from firegrid import api
from firegrid.domain import blobs, limits
from firegrid.domain.buffered import LOBBY
from firegrid.domain.capacity import check_aggregation_fits
from firegrid.domain.config import ClientConfig
from firegrid.domain.cycle import Cycle, CycleStatus, ProcessStatus, deadline_for
from firegrid.domain.diffs import schema_of
from firegrid.domain.errors import BadRequest, Conflict, NotFound
from firegrid.domain.fields import is_reserved_name
from firegrid.domain.keys import stable_id
from firegrid.domain.model import Process
from firegrid.domain.variants import EXECUTORCH, LAYERS
from firegrid.manifest import aggregation_memory_bytes
from firegrid.services.context import Context
from firegrid.services.results import Deleted, Hosted, HostingUploads
from firegrid.services.signed import read_upload, upload_grant
from firegrid.tensors import decode_state


def process_id_for(name: str, version: str) -> str:
    return stable_id("process", name, version, length=20)


def new_cycle(process: Process, seq: int, ctx: Context, model_object: str | None = None) -> Cycle:
    """Cycle ``seq``, open, training from ``model_object`` (default: checkpoint ``seq``'s
    plain name, the hosted model's)."""
    opened_at = ctx.clock.now()
    return Cycle(
        process_id=process.id,
        seq=seq,
        status=CycleStatus.OPEN,
        epoch=0,
        opened_at=opened_at,
        deadline=deadline_for(opened_at, process.server_config),
        start_key=secrets.token_urlsafe(16),
        model_object=model_object,
    )


def opening_cycles(process: Process, ctx: Context) -> list[Cycle]:
    """Cycle 1; in async mode also the lobby, which holds the places and never closes."""
    first = new_cycle(process, 1, ctx)
    if not process.server_config.is_async:
        return [first]
    return [new_cycle(process, LOBBY, ctx), first]


def hosting_upload_urls(ctx: Context, request: api.HostingUploadUrls) -> HostingUploads:
    """Signed PUT URLs for a model and plans too large to carry in ``host-training``'s
    body (then ``host-training`` with ``uploaded``). Refused like the hosting itself
    when the process exists, so nothing is written beside a live process."""
    process_id = process_id_for(request.name, request.version)
    existing = ctx.repo.get_process(process_id)
    if existing is not None:
        _refuse_unless_abandoned(existing, request.name, request.version, ctx.clock.now())
    bound = limits.MAX_HOSTED_FILE_BYTES
    return HostingUploads(
        model=upload_grant(ctx, blobs.hosting_model_upload(process_id), bound),
        plans={
            name: upload_grant(ctx, blobs.hosting_plan_upload(process_id, name), bound)
            for name in request.plan_names
        },
    )


def host_training(ctx: Context, request: api.HostTraining) -> Hosted:
    """Host what the body carries or, with ``uploaded``, what the operator uploaded; the
    uploaded objects are removed whether the hosting succeeds or not."""
    config = request.client_config
    process_id = process_id_for(config.name, config.version)
    if request.model is not None:
        return _host(ctx, request, process_id, request.model, request.plans)
    try:
        model, plans = _read_uploads(ctx, process_id, request.plan_names)
        return _host(ctx, request, process_id, model, plans)
    finally:
        ctx.blobs.delete_prefix(blobs.hosting_upload_prefix(process_id))


def _read_uploads(
    ctx: Context, process_id: str, plan_names: tuple[str, ...]
) -> tuple[bytes, dict[str, bytes]]:
    bound = limits.MAX_HOSTED_FILE_BYTES
    model = _uploaded(ctx, blobs.hosting_model_upload(process_id), bound, "model")
    plans = {
        name: _uploaded(ctx, blobs.hosting_plan_upload(process_id, name), bound, f"plan '{name}'")
        for name in plan_names
    }
    return model, plans


def _uploaded(ctx: Context, name: str, max_bytes: int, what: str) -> bytes:
    data = read_upload(ctx, name, max_bytes, what)
    if data is None:
        raise BadRequest(
            f"No uploaded {what} found: PUT it to the URL from hosting-upload-urls first",
            "missing_upload",
        )
    return data


def _host(
    ctx: Context,
    request: api.HostTraining,
    process_id: str,
    model_bytes: bytes,
    plan_bytes: Mapping[str, bytes],
) -> Hosted:
    """Validate everything, then store checkpoint 1, the plans and cycle 1."""
    client_config, server_config = request.client_config, request.server_config
    ctx.verifier.check(server_config.authentication)
    model = decode_state(model_bytes, "model")
    _check_model(model)
    schema = schema_of(model)
    check_aggregation_fits(schema, server_config, aggregation_memory_bytes())
    plans = _validate_plans(plan_bytes, model)
    built = _build_variants(plans, model, request.variants, client_config)
    del model  # only the bytes are stored: the decoded copy need not outlive validation

    existing = ctx.repo.get_process(process_id)
    if existing is not None:
        _refuse_unless_abandoned(
            existing, client_config.name, client_config.version, ctx.clock.now()
        )
    process = Process(
        id=process_id,
        name=client_config.name,
        version=client_config.version,
        client_config=client_config.raw,
        server_config=server_config,
        status=ProcessStatus.HOSTING,
        current_cycle=1,
        latest_checkpoint=1,
        key_secret=secrets.token_urlsafe(32),
        schema=schema,
        plans={name: name for name in plans},
        plan_sizes={name: len(data) for name, data in plans.items()},
        variant_sizes={
            variant: {name: len(data) for name, data in variant_plans.items()}
            for variant, variant_plans in built.items()
        },
        created_at=ctx.clock.now(),
    )
    if existing is None:
        _create(ctx, process, client_config)
    else:
        _take_over(ctx, process, client_config)
    try:
        ctx.blobs.put(blobs.checkpoint_object(process_id, 1), model_bytes)
        for name, data in plans.items():
            ctx.blobs.put(blobs.plan_object(process_id, name), data)
        for variant, variant_plans in built.items():
            for name, data in variant_plans.items():
                ctx.blobs.put(blobs.plan_object(process_id, name, variant), data)
        ctx.repo.start_training(process.started(), *opening_cycles(process, ctx))
    except Exception:
        ctx.blobs.delete_prefix(blobs.process_prefix(process_id))
        ctx.repo.delete_process(process_id)
        raise
    return Hosted(process_id)


def delete_process(ctx: Context, request: api.DeleteProcess) -> Deleted:
    """Delete a process with everything it owns; running it again finishes a deletion
    that died half-way.

    The process is first marked ``deleting``: devices get 409 ``process_deleting``, and
    neither triggers, the tick nor an aggregation already running start or complete
    anything for it. Then its documents go (the process document last) and, after them,
    its objects: a report or an aggregation still in flight then finds its cycle gone
    and deletes the object it wrote. The process is found by name and version, so a
    run after the process document was deleted still removes what remains.
    """
    process_id = process_id_for(request.name, request.version)
    now = ctx.clock.now()
    marked = ctx.repo.update_process(process_id, lambda stored: stored.marked_for_deletion(now))
    documents = ctx.repo.delete_process(process_id)
    objects = ctx.blobs.delete_prefix(blobs.process_prefix(process_id))
    if marked is None and not documents and not objects:
        raise NotFound(
            f"No process for model '{request.name}' version '{request.version}'",
            "unknown_process",
        )
    return Deleted(process_id=process_id, documents=documents, objects=objects)


def _refuse_unless_abandoned(existing: Process, name: str, version: str, now: datetime) -> None:
    """Only a hosting that died half-way may be hosted again (409 otherwise, saying why)."""
    existing.in_service()
    existing.refuse_while_hosting(now)
    if not existing.hosting_abandoned(now):
        raise _duplicate(name, version)


def _create(ctx: Context, process: Process, config: ClientConfig) -> None:
    try:
        ctx.repo.create_hosting(process)
    except Conflict:  # a concurrent host of the same name+version won
        raise _duplicate(config.name, config.version) from None


def _take_over(ctx: Context, process: Process, config: ClientConfig) -> None:
    """Replace an abandoned hosting's document, if it is still that one (of two retries at
    once, the second finds the first's fresh document: a duplicate), then remove the
    objects the dead attempt uploaded. It left no other document: cycle 1 is created
    in the same write that ends the hosting."""
    now = ctx.clock.now()
    taken = ctx.repo.update_process(process.id, lambda stored: stored.taken_over_by(process, now))
    if taken is None:
        raise _duplicate(config.name, config.version)
    ctx.blobs.delete_prefix(blobs.process_prefix(process.id))


def _duplicate(name: str, version: str) -> Conflict:
    return Conflict(
        f"A process for model '{name}' version '{version}' already exists",
        "duplicate_process",
    )


def _check_model(model: Mapping[str, Any]) -> None:
    if not model:
        raise BadRequest("model has no tensors", "invalid_model")
    if len(model) > limits.MAX_TENSORS:
        raise BadRequest(f"model has more than {limits.MAX_TENSORS} tensors", "invalid_model")
    for name, tensor in model.items():
        if len(name) > limits.MAX_TENSOR_NAME_LENGTH or is_reserved_name(name):
            raise BadRequest(f"model tensor name {name[:80]!r} is not allowed", "invalid_model")
        if np.issubdtype(tensor.dtype, np.floating) and not np.isfinite(tensor).all():
            raise BadRequest(f"model tensor '{name}' contains NaN or Inf", "invalid_model")


def _validate_plans(plans: Mapping[str, bytes], model: Mapping[str, Any]) -> dict[str, bytes]:
    from firegrid.plans import validate_plan  # imports torch: hosting only

    for name, data in plans.items():
        validate_plan(data, model, name)
    return dict(plans)


def _build_variants(
    plans: Mapping[str, bytes],
    model: Mapping[str, Any],
    variants: tuple[str, ...],
    client_config: ClientConfig,
) -> dict[str, dict[str, bytes]]:
    """Each requested variant of every plan, built from its ``torch`` program and checked
    against the model (``domain.variants``: every variant but ``torch``)."""
    from firegrid.executorch_plans import executorch_variant  # imports torch: hosting only
    from firegrid.layer_plans import layers_variant

    build: dict[str, Callable[[bytes, Mapping[str, Any], str], bytes]] = {
        LAYERS: layers_variant,
        EXECUTORCH: functools.partial(executorch_variant, recipe=client_config.raw),
    }
    return {
        variant: {name: build[variant](data, model, name) for name, data in plans.items()}
        for variant in variants
    }
