"""What closing a cycle needs in memory, and whether the function that closes it has it.

Hosting refuses a process whose worst-case closing would run out of memory: the
instance would die at every attempt, and the cycle would end ``failed`` after
training had begun. The estimate follows what ``services/cycles.py`` holds while it
closes a cycle (each term below), for the largest number of reports the
configuration lets into one cycle.
"""

from __future__ import annotations

import math

from firegrid.domain import limits
from firegrid.domain.aggregation import FOLD_CHUNK, SLICE_BUDGET_BYTES
from firegrid.domain.config import ServerConfig
from firegrid.domain.diffs import Schema, max_file_bytes, payload_bytes
from firegrid.domain.errors import BadRequest

RUNTIME_BYTES = 384 * 2**20
"""The instance before any tensor: interpreter, numpy, safetensors, the Google clients."""
USABLE_FRACTION = 0.8
"""Share of the instance the estimate may fill (allocator fragmentation, temporaries)."""
REPORT_BYTES = 2048
"""One reported assignment, as the closing lists them."""
LAYOUT_BYTES = 320
"""One tensor's place in one diff file, as a slice reader keeps it."""


def worst_case_reports(config: ServerConfig) -> int:
    """Reports one cycle can hold: ``max_workers`` places, else ``max_diffs`` (which closes
    the cycle), else any number up to the bound on worker counts; an async buffer holds
    ``buffer_size`` and at most the devices still training when it filled."""
    if config.buffer_size is not None and config.max_concurrency is not None:
        return config.buffer_size + config.max_concurrency
    return config.max_workers or config.max_diffs or limits.MAX_WORKERS


def aggregation_bytes(schema: Schema, config: ServerConfig) -> int:
    """Bytes the closing of one cycle holds at its peak, besides the runtime."""
    model = payload_bytes(schema)
    coordinates = sum(math.prod(spec.shape) for spec in schema.values())
    largest = max((math.prod(spec.shape) for spec in schema.values()), default=0)
    reports = worst_case_reports(config)
    held = (
        2 * model  # the checkpoint, as read and decoded
        + 8 * coordinates  # the float64 step
        + 8 * min(largest, FOLD_CHUNK)  # the scratch that folds a diff and applies the step
        + 2 * model  # the new checkpoint, decoded and encoded
        + reports * REPORT_BYTES
        + _optimizer_bytes(config, coordinates, largest)
        + _privacy_bytes(config, largest)
    )
    if config.aggregation.streams:
        return held + max_file_bytes(schema)  # one diff as received (its tensors are views)
    stack = max(SLICE_BUDGET_BYTES, 8 * reports)  # one coordinate at least
    return held + 2 * stack + reports * len(schema) * LAYOUT_BYTES


MOMENT_BYTES = 4 + 8 + 8 + 4 + 4
"""Per coordinate and moment of a server optimizer's state: the stored float32 as read
(viewed, not copied), decoded to float64, the new float64 one, it cast to float32 and
encoded."""
STEP_TEMPORARIES = 6
"""Float64 arrays of one tensor's size an optimizer step makes (the pseudo-gradient, its
square, the direction, ...), one tensor at a time."""


def _optimizer_bytes(config: ServerConfig, coordinates: int, largest: int) -> int:
    optimizer = config.server_optimizer
    if optimizer is None:
        return 0
    return MOMENT_BYTES * optimizer.moments * coordinates + 8 * STEP_TEMPORARIES * largest


PRIVACY_RUNTIME_BYTES = 96 * 2**20
"""``dp-accounting`` and the scipy it imports (about 80 MiB measured), loaded by a closing
with ``dp``."""


def _privacy_bytes(config: ServerConfig, largest: int) -> int:
    """``dp``: the accountant's imports and the float64 noise of one tensor at a time."""
    return 0 if config.dp is None else PRIVACY_RUNTIME_BYTES + 8 * largest


def check_aggregation_fits(schema: Schema, config: ServerConfig, memory_bytes: int) -> None:
    """``BadRequest`` (``aggregation_too_large``) if closing a cycle may not fit in the
    aggregating function's ``memory_bytes``."""
    needed = RUNTIME_BYTES + aggregation_bytes(schema, config)
    usable = int(USABLE_FRACTION * memory_bytes)
    if needed <= usable:
        return
    optimizer = config.server_optimizer
    method = f"'{config.aggregation}'" + (f" and '{optimizer.name}'" if optimizer else "")
    raise BadRequest(
        f"closing a cycle of this model with {method} and up to "
        f"{worst_case_reports(config)} reports needs about {needed / 2**20:,.0f} MiB, more than "
        f"the {usable / 2**20:,.0f} MiB the aggregating function may use "
        f"({memory_bytes / 2**30:g} GiB): host a smaller model, lower 'max_workers' "
        "(or 'max_diffs'), or use 'fedavg'",
        "aggregation_too_large",
    )
