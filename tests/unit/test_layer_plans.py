"""The ``layers`` plan variant: built at hosting from the torch plan, checked against the
model, served by get-plan (``receive_operations_as=layers``) only when hosted."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from firegrid import layer_plans
from firegrid.api import PlanDownload
from firegrid.client.models import DigitsCNN
from firegrid.domain import blobs
from firegrid.domain.errors import BadRequest, NotFound
from firegrid.domain.variants import served_variant
from firegrid.layer_plans import layers_variant
from firegrid.plans import build_plan, state_of
from firegrid.services import devices, hosting
from firegrid.services.context import Context
from tests.common import State
from tests.edge import call
from tests.unit.test_services import host_body, join


def _spec(module: torch.nn.Module, sample: torch.Tensor) -> dict[str, Any]:
    torch.manual_seed(0)
    return json.loads(layers_variant(build_plan(module, sample), state_of(module), "training_plan"))


def _refusal(module: torch.nn.Module, sample: torch.Tensor) -> BadRequest:
    with pytest.raises(BadRequest) as refused:
        _spec(module, sample)
    return refused.value


class Residual(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + x


def test_the_digits_cnn_becomes_its_forward_chain_functional_calls_included() -> None:
    spec = _spec(DigitsCNN(), torch.zeros(2, 64))

    assert [layer["op"] for layer in spec["layers"]] == [
        "reshape", "conv2d", "relu", "max_pool2d", "reshape", "linear",
    ]  # fmt: skip
    assert spec["layers"][0]["shape"] == [1, 8, 8]
    assert spec["layers"][1] | {"source": ""} == {
        "op": "conv2d", "weight": "conv.weight", "bias": "conv.bias",
        "stride": [1, 1], "padding": [1, 1], "source": "",
    }  # fmt: skip
    assert (spec["input_shape"], spec["output_shape"]) == ([64], [10])
    assert spec["parameters"]["fc.weight"] == {"dtype": "float32", "shape": [10, 256]}


def test_an_mlp_drops_its_eval_dropout_and_its_forward_equals_the_module() -> None:
    mlp = torch.nn.Sequential(
        torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(6, 3)
    )
    spec = _spec(mlp, torch.zeros(2, 8))
    x = torch.randn(5, 8)

    got = layer_plans.run_spec(spec, dict(mlp.state_dict()), x)

    assert [layer["op"] for layer in spec["layers"]] == ["linear", "relu", "linear"]
    torch.testing.assert_close(got, mlp.eval()(x))


def test_pools_strides_and_a_missing_bias_are_carried() -> None:
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(12, 2, bias=False),
    )
    spec = _spec(cnn, torch.zeros(2, 2, 9, 9))

    assert spec["layers"][0]["stride"] == [2, 2]
    assert spec["layers"][2] | {"source": ""} == {
        "op": "avg_pool2d", "kernel_size": [2, 2], "stride": [2, 2], "padding": [0, 0],
        "source": "",
    }  # fmt: skip
    assert spec["layers"][4]["bias"] is None
    assert spec["input_shape"] == [2, 9, 9]


@pytest.mark.parametrize(
    ("module", "sample", "named"),
    [
        (
            torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh()),
            torch.zeros(2, 4),
            "layer '1' (Tanh) uses aten.tanh",
        ),
        (
            torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)),
            torch.zeros(2, 4),
            "layer '1' (BatchNorm1d) uses aten.batch_norm",
        ),
        (Residual(), torch.zeros(2, 4), "the forward of Residual uses aten.add"),
        (
            torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, dilation=2)),
            torch.zeros(2, 1, 9, 9),
            "layer '0' (Conv2d): only groups=1 and dilation=1",
        ),
    ],
)
def test_a_layer_the_format_cannot_express_is_refused_by_name(module, sample, named) -> None:
    refused = _refusal(module, sample)

    assert refused.code == "unsupported_layer"
    assert named in refused.message
    assert "host it without variants ['layers']" in refused.message


def test_a_model_whose_tensors_differ_from_the_plans_is_refused() -> None:
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 3))
    plan = build_plan(mlp, torch.zeros(2, 4))
    model = state_of(mlp)

    with pytest.raises(BadRequest, match=r"'0.weight' must be float32 \[3, 4\]") as wrong:
        layers_variant(plan, model | {"0.weight": model["0.weight"].astype(np.float64)}, "p")
    with pytest.raises(BadRequest, match=r"does not use the model's tensors \['extra'\]") as more:
        layers_variant(plan, model | {"extra": np.zeros(2, np.float32)}, "p")

    assert (wrong.value.code, more.value.code) == ("invalid_plan", "unsupported_layer")


def test_a_spec_whose_forward_differs_from_the_plans_is_refused(monkeypatch) -> None:
    run = layer_plans.run_spec
    monkeypatch.setattr(layer_plans, "run_spec", lambda spec, state, x: run(spec, state, x) * 1.01)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 3))

    with pytest.raises(BadRequest, match="does not compute what the plan computes") as refused:
        layers_variant(build_plan(mlp, torch.zeros(2, 4)), state_of(mlp), "p")

    assert refused.value.code == "invalid_plan"


# -- the domain rules -----------------------------------------------------------------


def test_an_unknown_receive_operations_as_lists_the_accepted_ones() -> None:
    with pytest.raises(
        BadRequest, match=r"use one of \['executorch', 'layers', 'torch'\]"
    ) as refused:
        served_variant("tfjs")

    assert (served_variant(None), served_variant("layers")) == ("torch", "layers")
    assert refused.value.code == "unsupported_plan_format"


# -- hosting and get-plan -------------------------------------------------------------


def _plan_query(worker_id: str, key: str, variant: str) -> dict[str, str]:
    return {
        "worker_id": worker_id,
        "request_key": key,
        "plan_id": "training_plan",
        "receive_operations_as": variant,
    }


def test_hosting_with_variants_layers_serves_the_spec_beside_the_torch_plan(
    ctx: Context, tiny: tuple[State, bytes]
) -> None:
    process_id = call(hosting.host_training, ctx, host_body(tiny) | {"variants": ["layers"]})[
        "process_id"
    ]
    worker_id, key = join(ctx)

    served = call(devices.get_plan, ctx, _plan_query(worker_id, key, "layers"))
    torch_plan = call(devices.get_plan, ctx, _plan_query(worker_id, key, "torch"))

    stored = ctx.blobs.get(blobs.plan_object(process_id, "training_plan", "layers"))
    assert served == stored
    assert json.loads(stored)["format"] == "firegrid-layers"
    assert torch_plan == tiny[1]
    assert ctx.repo.get_process(process_id).variant_sizes == {
        "layers": {"training_plan": len(stored)}
    }


def test_a_variant_not_hosted_is_a_clear_404(ctx: Context, tiny: tuple[State, bytes]) -> None:
    call(hosting.host_training, ctx, host_body(tiny))
    worker_id, key = join(ctx)

    with pytest.raises(NotFound, match="hosted without the 'layers' variant") as missing:
        call(devices.get_plan, ctx, _plan_query(worker_id, key, "layers"))

    assert missing.value.code == "variant_not_hosted"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"variants": ["tfjs"]}, "distinct names among ['executorch', 'layers']"),
        ({"variants": ["layers", "layers"]}, "distinct names"),
        ({"variants": "layers"}, "must be a list"),
        ({"variants": [{}, ["layers"]]}, "must be a list"),
        (
            {"variants": ["layers"], "client_config": {"name": "m", "version": "1", "loss": "mse",
                                                        "optimizer": "adam"}},
            "the 'layers' variant cannot train this client_config: the browser engine trains "
            "with optimizer ['sgd'], not 'adam'",
        ),
    ],
)  # fmt: skip
def test_bad_variants_or_a_recipe_the_browser_cannot_train_are_refused_at_hosting(
    ctx: Context, tiny: tuple[State, bytes], change: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadRequest) as refused:
        call(hosting.host_training, ctx, host_body(tiny) | change)

    assert message in refused.value.message
    assert refused.value.code == "invalid_plan"
    assert not ctx.repo.processes


def test_the_torch_plan_is_served_by_default() -> None:
    query = {"worker_id": "w", "request_key": "k", "plan_id": "p"}

    assert PlanDownload.parse(query).variant == "torch"


def test_hosting_an_unexpressible_model_with_variants_layers_creates_nothing(
    ctx: Context,
) -> None:
    module = torch.nn.Sequential(torch.nn.Linear(8, 3), torch.nn.Sigmoid())
    plan = build_plan(module, torch.zeros(2, 8))
    body = host_body((state_of(module), plan)) | {"variants": ["layers"]}

    with pytest.raises(BadRequest, match=r"layer '1' \(Sigmoid\) uses aten.sigmoid"):
        call(hosting.host_training, ctx, body)

    assert not ctx.repo.processes
