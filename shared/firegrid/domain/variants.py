"""Plan variants: the forms a plan is served in (PyGrid's ``receive_operations_as``).

``torch`` is the plan the operator hosts (a ``torch.export`` program). ``layers`` is a
FireGrid layer spec (JSON) that a browser executes with the JavaScript SDK; hosting
builds it from the ``torch`` plan when the operator asks for it (``variants``), so the
two are the same model by construction, and checks that they agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from firegrid.domain.errors import BadRequest

TORCH = "torch"
LAYERS = "layers"


@dataclass(frozen=True)
class Variant:
    suffix: str
    """How its stored object's name ends."""
    built_at_hosting: bool
    """Hosting builds it from the ``torch`` plan when the operator lists it in ``variants``."""


VARIANTS: Mapping[str, Variant] = {
    TORCH: Variant(suffix=".pt2", built_at_hosting=False),
    LAYERS: Variant(suffix=".layers.json", built_at_hosting=True),
}

LAYERS_LOSSES = ("cross_entropy", "mse")
"""The losses the browser engine implements (``client_config.loss``)."""
LAYERS_OPTIMIZERS = ("sgd",)
"""The optimizers it implements (``client_config.optimizer``): SGD with torch's momentum,
weight decay and FedProx's ``fedprox_mu``."""


def served_variant(value: str | None) -> str:
    """``receive_operations_as`` of a plan download (absent: ``torch``); an unknown name is
    a 400 listing the accepted ones."""
    if value is None:
        return TORCH
    if value not in VARIANTS:
        raise BadRequest(
            f"receive_operations_as {value[:40]!r} is not a plan variant; "
            f"use one of {sorted(VARIANTS)}",
            "unsupported_plan_format",
        )
    return value


def requested_variants(value: object) -> tuple[str, ...]:
    """Hosting's ``variants``: the variants to build from each plan, each once."""
    if value is None:
        return ()
    buildable = sorted(name for name, variant in VARIANTS.items() if variant.built_at_hosting)
    if (
        not isinstance(value, list)
        or not all(isinstance(name, str) for name in value)
        or len(set(value)) != len(value)
        or not set(value) <= set(buildable)
    ):
        raise BadRequest(
            f"'variants' must be a list of distinct names among {buildable}", "invalid_plan"
        )
    return tuple(value)


def check_layers_recipe(client_config: Mapping[str, Any]) -> None:
    """The browser engine trains only what it implements: refuse any other recipe at hosting
    rather than let browsers fail (or train something else) at every cycle."""
    loss = client_config.get("loss", LAYERS_LOSSES[0])
    optimizer = client_config.get("optimizer", LAYERS_OPTIMIZERS[0])
    if loss not in LAYERS_LOSSES or optimizer not in LAYERS_OPTIMIZERS:
        raise BadRequest(
            f"the '{LAYERS}' variant trains with loss {list(LAYERS_LOSSES)} and optimizer "
            f"{list(LAYERS_OPTIMIZERS)}; client_config asks for loss '{loss}' and optimizer "
            f"'{optimizer}'",
            "invalid_plan",
        )
