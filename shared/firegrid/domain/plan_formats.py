"""Plan formats: the runtimes a plan is hosted for (PyGrid's ``receive_operations_as``).

A process hosts each plan as a ``torch.export`` program (its ``name``) and may host it
for other runtimes too, keyed ``name.format`` (``training_plan.executorch``): the same
plan id, another variant. Devices name the plan by id and the variant by
``receive_operations_as``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from firegrid.domain.errors import BadRequest, NotFound


class PlanFormat(StrEnum):
    TORCH = "torch"
    """A ``torch.export`` program of the forward pass (.pt2): the Python SDK trains it
    with torch's autograd."""
    EXECUTORCH = "executorch"
    """An ExecuTorch program of forward, loss and backward (.pte): the runtime phones
    embed trains it with no autograd of its own."""


EXTENSIONS = {PlanFormat.TORCH: "pt2", PlanFormat.EXECUTORCH: "pte"}
_VALUES = frozenset(f.value for f in PlanFormat)
ACCEPTED = ", ".join(sorted(_VALUES))


def plan_key(name: str, plan_format: PlanFormat) -> str:
    """The key a plan's variant is hosted and stored under."""
    return name if plan_format is PlanFormat.TORCH else f"{name}.{plan_format}"


def split_key(key: str) -> tuple[str, PlanFormat]:
    """A hosted plan key's plan name and format (``BadRequest`` for an unknown format)."""
    name, dot, suffix = key.partition(".")
    if not dot:
        return name, PlanFormat.TORCH
    if suffix == PlanFormat.TORCH or suffix not in _VALUES:
        raise BadRequest(
            f"plan {key[:80]!r}: a variant is 'name.format' with a format other than "
            f"torch among: {ACCEPTED}",
            "invalid_plan",
        )
    return name, PlanFormat(suffix)


def requested(value: str) -> PlanFormat:
    """``receive_operations_as`` as a format (400 naming the accepted ones)."""
    if value not in _VALUES:
        raise BadRequest(
            f"receive_operations_as {value[:40]!r} is not one of: {ACCEPTED}",
            "unsupported_plan_format",
        )
    return PlanFormat(value)


def check_variants(keys: tuple[str, ...]) -> None:
    """Every variant is of a plan hosted as ``torch`` too (the plan its id names)."""
    names = {key for key in keys if split_key(key)[1] is PlanFormat.TORCH}
    for key in keys:
        name, _ = split_key(key)
        if name not in names:
            raise BadRequest(
                f"plan {key!r} is a variant of '{name}', which is not hosted", "invalid_plan"
            )


def recipe_problem(plan_format: PlanFormat, client_config: Mapping[str, Any]) -> str | None:
    """Why a runtime cannot train a process's recipe, or None. ExecuTorch's runtime
    offers SGD (momentum, weight decay) and no Adam."""
    optimizer = client_config.get("optimizer", "sgd")
    if plan_format is PlanFormat.EXECUTORCH and optimizer != "sgd":
        return f"client_config.optimizer '{optimizer}': ExecuTorch's runtime trains with SGD only"
    return None


def hosted_key(plan_id: str, plan_format: PlanFormat, hosted: frozenset[str]) -> str:
    """The stored key of plan ``plan_id`` in ``plan_format`` (404 naming the formats
    it was hosted in when that one was not). Every plan is hosted as ``torch``."""
    key = plan_key(plan_id, plan_format)
    if plan_format is not PlanFormat.TORCH and key not in hosted:
        formats = sorted(str(split_key(k)[1]) for k in hosted if split_key(k)[0] == plan_id)
        raise NotFound(
            f"plan '{plan_id}' was not hosted as '{plan_format}' (hosted as: {', '.join(formats)})",
            "plan_format_not_hosted",
        )
    return key
