"""A browser device on the local stack: a page from another origin runs the JavaScript
SDK in headless chromium through the real HTTP protocol (CORS), trains the digits CNN's
``layers`` plan on its shard beside Python devices training the ``torch`` plan in the
same cycle, and checkpoint 2 is the FedAvg of all their diffs."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from firegrid.client.data import digits_federated
from firegrid.client.protocol import Assignment, DeviceClient
from firegrid.client.training import accuracy, train
from firegrid.demo import CLIENT_CONFIG, digits_model
from firegrid.operator_client import OperatorClient
from firegrid.plans import build_plan, load_plan, state_of
from firegrid.tensors import decode_state, encode_state
from tests.integration.support import wait_for
from tests.integration.web import sdk_page

pytestmark = [pytest.mark.integration, pytest.mark.browser]

MODEL = "digits-browser"
RUN_CYCLE = """async ({baseUrl, model, x, y, xTest, yTest}) => {
  const fg = window.firegrid;
  const data = {x: Float32Array.from(x), y: Int32Array.from(y),
                xTest: Float32Array.from(xTest), yTest: Int32Array.from(yTest)};
  const device = new fg.Device(baseUrl, model, data, {seed: 5});
  const result = await device.runCycle();
  return {...result, diff: result.diff ? fg.toBase64(result.diff) : null,
          origin: location.origin};
}"""


def _python_device(client: DeviceClient, shard: Any) -> tuple[dict[str, np.ndarray], int]:
    """A Python device's cycle over the same protocol: its diff and sample count."""
    worker_id = client.authenticate(MODEL)
    assignment = client.cycle_request(worker_id, MODEL)
    assert isinstance(assignment, Assignment), assignment
    module = load_plan(client.get_plan(assignment))
    diff, num_samples = train(
        module, client.get_model(assignment), shard.x, shard.y, assignment.client_config
    )
    client.report(assignment, diff, num_samples)
    return decode_state(diff), num_samples


def test_a_browser_trains_beside_python_devices_and_its_diff_is_aggregated(
    clean_stack: Any, browser: Any
) -> None:
    import torch

    dataset, _ = digits_federated(num_devices=3, seed=0)
    module = digits_model()
    operator = OperatorClient(clean_stack.base_url, clean_stack.admin_token)
    client_config = CLIENT_CONFIG | {"name": MODEL, "version": "1", "epochs": 1}
    server_config = {"cycle_length": 600, "num_cycles": 2, "max_workers": 3, "max_diffs": 3}
    initial = encode_state(state_of(module))
    plan = build_plan(module, torch.zeros(2, 64))
    operator.host(
        initial, {"training_plan": plan}, client_config, server_config, variants=("layers",)
    )
    browser_user, *python_users = dataset.users
    shard, local_test = dataset.train[browser_user], dataset.test[browser_user]

    with sdk_page(browser) as page:
        result = page.evaluate(
            RUN_CYCLE,
            {
                "baseUrl": clean_stack.base_url,
                "model": MODEL,
                "x": shard.x.flatten().tolist(),
                "y": shard.y.tolist(),
                "xTest": local_test.x.flatten().tolist(),
                "yTest": local_test.y.tolist(),
            },
        )
    assert result["outcome"] == "reported", result
    assert result["origin"] != clean_stack.base_url.rstrip("/")  # every call was cross-origin
    reports = [(decode_state(base64.b64decode(result["diff"])), result["numSamples"])]
    client = DeviceClient(clean_stack.base_url)
    reports += [_python_device(client, dataset.train[user]) for user in python_users]

    wait_for(lambda: operator.status(MODEL)["latest_checkpoint"] == 2, what="cycle 1 to close")
    before = decode_state(initial)
    after = decode_state(operator.checkpoint(MODEL, number=2))
    total = sum(n for _, n in reports)
    assert result["numSamples"] == len(shard) and total == sum(
        len(dataset.train[u]) for u in dataset.users
    )
    for key, tensor in before.items():
        assert np.abs(reports[0][0][key]).max() > 0, key  # the browser did train
        step = sum(diff[key].astype(np.float64) * n for diff, n in reports) / total
        np.testing.assert_allclose(after[key], (tensor - step).astype(np.float32), atol=1e-6)
    # the browser's accuracy (of checkpoint 1 on its local test split) is the torch plan's
    expected = accuracy(load_plan(plan), initial, local_test.x, local_test.y)
    assert result["accuracy"] == pytest.approx(expected)
    metrics = operator.training_metrics(MODEL)
    assert [(m["cycle_id"], m["num_samples"]) for m in metrics] == [(1, len(local_test))]
