"""ExecuTorch plans through the real protocol: hosting validates them, ``get-plan`` serves
them by ``receive_operations_as``, and phones (ExecuTorch's runtime) train beside Python
devices (torch) on the digits task."""

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
from firegrid.executorch_plans import build_training_program
from firegrid.operator_client import OperatorClient
from firegrid.plans import build_plan, load_plan, state_of
from firegrid.tensors import encode_state

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
def digits() -> tuple[bytes, bytes, bytes]:
    """The digits CNN's checkpoint, its torch.export plan and its ExecuTorch plan."""
    torch.manual_seed(0)
    model = DigitsCNN()
    pte = build_training_program(
        model, torch.zeros(1, 64), torch.zeros(1, dtype=torch.int64), batch_size=8
    )
    return encode_state(state_of(model)), build_plan(model, torch.zeros(4, 64)), pte


def _host(api: Api, model: bytes, plans: dict[str, bytes], **client: Any) -> Any:
    body = host_body()
    body["model"] = base64.b64encode(model).decode()
    body["plans"] = {name: base64.b64encode(data).decode() for name, data in plans.items()}
    body["client_config"] = CLIENT_CONFIG | client
    return api.admin("POST", "host-training", json=body)


@pytest.mark.slow
def test_phones_and_python_devices_train_digits_together(clean_stack, digits) -> None:
    model, pt2, pte = digits
    operator = OperatorClient(clean_stack.base_url, clean_stack.admin_token)
    operator.host(
        model,
        {"training_plan": pt2, "training_plan.executorch": pte},
        CLIENT_CONFIG,
        {"num_cycles": 3, "max_workers": 6, "min_diffs": 6, "max_diffs": 6, "cycle_length": 600},
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


def test_get_plan_serves_each_hosted_runtime_and_names_the_others(clean_stack, digits) -> None:
    model, pt2, pte = digits
    api = Api(clean_stack.base_url, clean_stack.admin_token)
    hosted = _host(api, model, {"training_plan": pt2, "training_plan.executorch": pte})
    assert hosted.status_code == 201, hosted.text
    worker_id, accepted = api.join("digits-et")
    key = {"worker_id": worker_id, "request_key": accepted["request_key"]}
    assert accepted["plans"] == {"training_plan": "training_plan"}  # variants share the id
    params = key | {"plan_id": "training_plan"}

    def get(variant: str) -> Any:
        return api.device("GET", "get-plan", params=params | {"receive_operations_as": variant})

    assert get("executorch").content == pte
    assert get("torch").content == pt2
    unknown = get("tfjs-nope")
    assert unknown.status_code == 400
    assert unknown.json()["code"] == "unsupported_plan_format"
    assert "executorch, torch" in unknown.json()["error"]


def test_a_runtime_that_was_not_hosted_is_404_naming_the_hosted_ones(clean_stack, digits) -> None:
    model, pt2, _ = digits
    api = Api(clean_stack.base_url, clean_stack.admin_token)
    assert _host(api, model, {"training_plan": pt2}).status_code == 201
    worker_id, accepted = api.join("digits-et")
    response = api.device(
        "GET",
        "get-plan",
        params={
            "worker_id": worker_id,
            "request_key": accepted["request_key"],
            "plan_id": "training_plan",
            "receive_operations_as": "executorch",
        },
    )
    assert response.status_code == 404
    assert response.json()["code"] == "plan_format_not_hosted"
    assert "hosted as: torch" in response.json()["error"]


@pytest.mark.parametrize(
    ("plans", "client", "message"),
    [
        ({"training_plan.executorch": "pte"}, {}, "with a 'training_plan'"),
        ({"training_plan": "pt2", "training_plan.tfjs_x": "pte"}, {}, "must be 1-64"),
        ({"training_plan": "pt2", "training_plan.onnx": "pte"}, {}, "other than torch among"),
        ({"training_plan": "pt2", "other.executorch": "pte"}, {}, "'other', which is not hosted"),
        ({"training_plan": "pt2", "training_plan.executorch": "junk"}, {}, "not an ExecuTorch"),
        ({"training_plan": "pt2", "training_plan.executorch": "pt2"}, {}, "not an ExecuTorch"),
        ({"training_plan": "pt2", "training_plan.executorch": "pte"}, {"optimizer": "adam"}, "SGD"),
    ],
)
def test_hosting_refuses_bad_executorch_plans_with_the_reason(
    clean_stack, digits, plans, client, message
) -> None:
    model, pt2, pte = digits
    named = {"pte": pte, "pt2": pt2, "junk": b"junk"}
    body = {name: named[data] for name, data in plans.items()}
    response = _host(Api(clean_stack.base_url, clean_stack.admin_token), model, body, **client)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
