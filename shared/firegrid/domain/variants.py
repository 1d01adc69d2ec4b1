"""Plan variants: the forms a plan is served in (PyGrid's ``receive_operations_as``).

``torch`` is the plan the operator hosts (a ``torch.export`` program of the forward
pass). Every other variant is built by hosting from that program when the operator
lists it in ``variants``, so all variants are the same model by construction, and each
is checked against the model before anything is stored:

* ``layers``: a FireGrid layer spec (JSON) that a browser executes with the JavaScript
  SDK (``firegrid.layer_plans``);
* ``executorch``: a ``.pte`` program of forward, loss and backward that ExecuTorch's
  runtime (the one phones embed) trains with its own SGD (``firegrid.executorch_plans``).

A built variant trains only what its runtime implements: the recipe rules below are
checked at hosting (and by the SDK's ExecuTorch device), not found out by every device
at every cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from firegrid.domain.errors import BadRequest

TORCH = "torch"
LAYERS = "layers"
EXECUTORCH = "executorch"
DEFAULT_BATCH_SIZE = 32
"""``client_config.batch_size`` when absent (as the Python SDK trains)."""


@dataclass(frozen=True)
class Variant:
    suffix: str
    """How its stored object's name ends."""
    built_at_hosting: bool
    """Hosting builds it from the ``torch`` plan when the operator lists it in ``variants``."""
    runtime: str = "torch"
    """What executes it, for messages."""
    losses: tuple[str, ...] | None = None
    """The ``client_config.loss`` values its runtime implements (None: all of them)."""
    optimizers: tuple[str, ...] | None = None
    """The ``client_config.optimizer`` values it implements (None: all of them)."""
    max_batch_size: int | None = None
    """The program is built for ``client_config.batch_size`` rows (static): at most this."""


VARIANTS: Mapping[str, Variant] = {
    TORCH: Variant(suffix=".pt2", built_at_hosting=False),
    LAYERS: Variant(
        suffix=".layers.json",
        built_at_hosting=True,
        runtime="the browser engine",
        losses=("cross_entropy", "mse"),
        # SGD with torch's momentum, weight decay and FedProx's ``fedprox_mu``.
        optimizers=("sgd",),
    ),
    EXECUTORCH: Variant(
        suffix=".pte",
        built_at_hosting=True,
        runtime="ExecuTorch's runtime",
        losses=("cross_entropy", "mse", "bce_with_logits"),
        # ExecuTorch's SGD (momentum, weight decay); FedProx's term added to its gradients.
        optimizers=("sgd",),
        # ExecuTorch 1.4 lowers some dynamic batches wrongly: the batch is static, and its
        # buffers are planned at hosting and on every phone.
        max_batch_size=1024,
    ),
}


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


def batch_size(client_config: Mapping[str, Any]) -> int:
    """The recipe's batch size (a static-batch variant is built for it)."""
    return int(client_config.get("batch_size", DEFAULT_BATCH_SIZE))


def recipe_problem(name: str, client_config: Mapping[str, Any]) -> str | None:
    """Why variant ``name``'s runtime cannot train the recipe, or None."""
    variant = VARIANTS[name]
    loss = client_config.get("loss", "cross_entropy")
    optimizer = client_config.get("optimizer", "sgd")
    if variant.losses is not None and loss not in variant.losses:
        return f"{variant.runtime} trains with loss {list(variant.losses)}, not '{loss}'"
    if variant.optimizers is not None and optimizer not in variant.optimizers:
        return (
            f"{variant.runtime} trains with optimizer {list(variant.optimizers)}, not '{optimizer}'"
        )
    if variant.max_batch_size is not None and batch_size(client_config) > variant.max_batch_size:
        return (
            f"{variant.runtime} trains batches of at most {variant.max_batch_size} rows, "
            f"not {batch_size(client_config)}"
        )
    return None


def check_recipe(variants: Iterable[str], client_config: Mapping[str, Any]) -> None:
    """Refuse at hosting a recipe that a requested variant's runtime cannot train, rather
    than let its devices fail (or train something else) at every cycle."""
    for name in variants:
        problem = recipe_problem(name, client_config)
        if problem:
            raise BadRequest(
                f"the '{name}' variant cannot train this client_config: {problem}",
                "invalid_plan",
            )
