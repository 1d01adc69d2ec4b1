"""ExecuTorch plans through the real protocol: hosting builds them from the torch plan
(``variants: ["executorch"]``), ``get-plan`` serves them by ``receive_operations_as``, and
phones (ExecuTorch's runtime) train beside Python devices (torch) on the digits task."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import torch

from firegrid.client.data import digits_federated
from firegrid.client.device import Device, Outcome
from firegrid.client.models import DigitsCNN
from firegrid.client.simulator import shards_of
from firegrid.client.training import accuracy
from firegrid.executorch_plans import TrainingProgram
from firegrid.operator_client import OperatorClient
from firegrid.plans import build_plan, load_plan, state_of
from firegrid.tensors import encode_state
from tests.unit.test_executorch_plans import AvgPoolNet

from .support import Api, host_body

pytestmark = pytest.mark.integration

CLIENT_CONFIG: dict[str, Any] = {
    "name": "digits-et",
    "version": "1",
    "batch_size": 8,
    "lr": 0.05,
    "momentum": 0.9,
    "epochs": 2,
    "loss": "cross_entropy",
    "optimizer": "sgd",
}


@pytest.fixture(scope="module")
def digits() -> tuple[bytes, bytes]:
    """The digits CNN's checkpoint and its torch.export plan."""
    torch.manual_seed(0)
    model = DigitsCNN()
    return encode_state(state_of(model)), build_plan(model, torch.zeros(4, 64))


def _host(api: Api, model: bytes, plan: bytes, variants: list[str], **client: Any) -> Any:
    body = host_body()
    body["model"] = base64.b64encode(model).decode()
    body["plans"] = {"training_plan": base64.b64encode(plan).decode()}
    body["client_config"] = CLIENT_CONFIG | client
    body["variants"] = variants
    return api.admin("POST", "host-training", json=body)


@pytest.mark.slow
def test_phones_and_python_devices_train_digits_together(clean_stack, digits) -> None:
    model, pt2 = digits
    operator = OperatorClient(clean_stack.base_url, clean_stack.admin_token)
    operator.host(
        model,
        {"training_plan": pt2},
        CLIENT_CONFIG,
        {"num_cycles": 3, "max_workers": 6, "min_diffs": 6, "max_diffs": 6, "cycle_length": 600},
        variants=("executorch",),
    )
    dataset, holdout = digits_federated(num_devices=6, alpha=1.0, seed=0)
    devices = [
        Device(
            clean_stack.base_url,
            "digits-et",
            shard,
            version="1",
            seed=i,
            runtime="executorch" if i % 2 else "torch",
        )
        for i, shard in enumerate(shards_of(dataset))
    ]
    for cycle in (1, 2, 3):
        results = [device.run_cycle() for device in devices]
        assert [r.outcome for r in results] == [Outcome.REPORTED] * 6, results
        assert all(r.accuracy is not None for r in results)
        checkpoint = operator.wait_for_checkpoint("digits-et", "1", cycle + 1)

    evaluator = load_plan(pt2)
    first = accuracy(evaluator, operator.checkpoint("digits-et", "1", 1), holdout.x, holdout.y)
    last = accuracy(evaluator, checkpoint, holdout.x, holdout.y)
    assert first < 0.3 and last > 0.7, (first, last)


def test_get_plan_serves_the_program_hosting_built_and_names_the_variants(
    clean_stack, digits
) -> None:
    model, pt2 = digits
    api = Api(clean_stack.base_url, clean_stack.admin_token)
    hosted = _host(api, model, pt2, ["executorch"])
    assert hosted.status_code == 201, hosted.text
    worker_id, accepted = api.join("digits-et")
    assert accepted["plans"] == {"training_plan": "training_plan"}  # variants share the id
    params = {
        "worker_id": worker_id,
        "request_key": accepted["request_key"],
        "plan_id": "training_plan",
    }

    def get(variant: str) -> Any:
        return api.device("GET", "get-plan", params=params | {"receive_operations_as": variant})

    program = TrainingProgram(get("executorch").content)
    assert program.signature.batch_size == CLIENT_CONFIG["batch_size"]
    assert get("torch").content == pt2
    unknown = get("tfjs-nope")
    assert unknown.status_code == 400
    assert unknown.json()["code"] == "unsupported_plan_format"
    assert "['executorch', 'layers', 'torch']" in unknown.json()["error"]
    missing = get("layers")
    assert missing.status_code == 404
    assert missing.json()["code"] == "variant_not_hosted"


def test_a_model_executorch_cannot_train_is_refused_at_hosting_with_the_reason(
    clean_stack,
) -> None:
    """ExecuTorch 1.4's runtime has no avg_pool2d backward kernel: hosting finds out."""
    model = AvgPoolNet()
    plan = build_plan(model, torch.zeros(4, 64))
    api = Api(clean_stack.base_url, clean_stack.admin_token)
    response = _host(api, encode_state(state_of(model)), plan, ["executorch"])
    assert response.status_code == 400, response.text
    assert "does not run in ExecuTorch's runtime" in response.json()["error"]
    assert response.json()["code"] == "invalid_plan"
    assert _host(api, encode_state(state_of(model)), plan, []).status_code == 201
