"""Plan variants: keys, the requested format, and which variants a process hosts."""

from __future__ import annotations

import pytest

from firegrid.domain import blobs
from firegrid.domain.errors import BadRequest, NotFound
from firegrid.domain.plan_formats import (
    PlanFormat,
    check_variants,
    hosted_key,
    recipe_problem,
    requested,
    split_key,
)


def test_a_key_names_the_plan_and_its_format() -> None:
    assert split_key("training_plan") == ("training_plan", PlanFormat.TORCH)
    assert split_key("training_plan.executorch") == ("training_plan", PlanFormat.EXECUTORCH)
    for bad in ("training_plan.torch", "training_plan.tfjs"):
        with pytest.raises(BadRequest, match="executorch, torch"):
            split_key(bad)


def test_each_variant_is_stored_under_its_own_extension() -> None:
    assert blobs.plan_object("p", "training_plan") == "processes/p/plans/training_plan.pt2"
    assert (
        blobs.plan_object("p", "training_plan.executorch")
        == "processes/p/plans/training_plan.executorch.pte"
    )


def test_an_unknown_requested_format_lists_the_accepted_ones() -> None:
    assert requested("executorch") is PlanFormat.EXECUTORCH
    with pytest.raises(BadRequest, match="'onnx' is not one of: executorch, torch") as raised:
        requested("onnx")
    assert raised.value.code == "unsupported_plan_format"


def test_a_variant_needs_its_torch_plan() -> None:
    check_variants(("training_plan", "training_plan.executorch"))
    with pytest.raises(BadRequest, match="variant of 'other'"):
        check_variants(("training_plan", "other.executorch"))


def test_a_variant_not_hosted_is_404_naming_the_hosted_ones() -> None:
    hosted = frozenset({"training_plan", "training_plan.executorch", "eval"})
    assert hosted_key("training_plan", PlanFormat.EXECUTORCH, hosted) == (
        "training_plan.executorch"
    )
    assert hosted_key("eval", PlanFormat.TORCH, hosted) == "eval"
    with pytest.raises(
        NotFound, match=r"'eval' was not hosted as 'executorch' \(hosted as: torch\)"
    ):
        hosted_key("eval", PlanFormat.EXECUTORCH, hosted)


def test_executorch_trains_sgd_recipes_only() -> None:
    assert recipe_problem(PlanFormat.EXECUTORCH, {"optimizer": "sgd", "momentum": 0.9}) is None
    assert recipe_problem(PlanFormat.TORCH, {"optimizer": "adam"}) is None
    assert "SGD only" in str(recipe_problem(PlanFormat.EXECUTORCH, {"optimizer": "adam"}))
