"""A server optimizer through the HTTP API on the local stack: two cycles of FedYogi,
each checkpoint the domain's step from the state stored in Cloud Storage with the one
before; a bad optimizer config is a 400 that names the key."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from google.cloud import storage

from firegrid.adapters.storage import GcsBlobStore
from firegrid.domain import optimizers
from firegrid.domain.aggregation import Contribution, combine
from firegrid.domain.optimizers import OptimizerState
from firegrid.local.stack import StackInfo
from firegrid.tensors import decode_state
from tests.common import server_optimizer

from .support import Api, cycle_seq, host_body, tiny_model, wait_for

pytestmark = pytest.mark.integration

YOGI = {"name": "fedyogi", "eta": 0.05}
SAMPLES = (5, 15)


@pytest.fixture
def api(clean_stack: StackInfo) -> Api:
    return Api(clean_stack.base_url, clean_stack.admin_token)


def _checkpoint(api: Api, number: int) -> dict[str, Any]:
    response = api.admin(
        "GET", "retrieve-model", params={"name": "mnist", "checkpoint": str(number)}
    )
    assert response.status_code == 200, response.text
    return decode_state(response.content)


def test_two_cycles_of_fedyogi_follow_the_domain_math(api: Api, stack_env: StackInfo) -> None:
    api.host(num_cycles=2, max_diffs=2, server_optimizer=YOGI)
    rng = np.random.default_rng(5)
    expected, state = dict(tiny_model()[0]), OptimizerState()
    optimizer = server_optimizer(YOGI)
    for seq in (1, 2):
        diffs = [
            {k: (0.1 * rng.normal(size=v.shape)).astype(v.dtype) for k, v in expected.items()}
            for _ in SAMPLES
        ]
        for diff, samples in zip(diffs, SAMPLES, strict=True):
            worker_id, accepted = api.join()
            reply = api.report(worker_id, accepted["request_key"], diff, num_samples=samples)
            assert reply.status_code == 200, reply.text
        if seq == 1:
            wait_for(lambda: cycle_seq(api) == 2, what="cycle 2 to open")
        else:
            wait_for(lambda: api.status()["status"] == "completed", what="training to end")
        contributions = [
            Contribution(diff=d, weight=float(n)) for d, n in zip(diffs, SAMPLES, strict=True)
        ]
        step = combine(expected, contributions)
        expected, after = optimizers.step(expected, step.delta, optimizer, state)
        state = optimizers.decode(optimizers.encode(after))  # stored as float32
        for name, values in _checkpoint(api, seq + 1).items():
            np.testing.assert_allclose(values, expected[name], rtol=1e-6, atol=1e-7)

    client = storage.Client(project=stack_env.project_id)
    process_id = api.status()["process_id"]
    prefix = f"processes/{process_id}/optimizer/"
    stored = sorted(blob.name for blob in client.list_blobs(stack_env.bucket, prefix=prefix))
    assert len(stored) == 2  # one state per aggregated checkpoint, named by its attempt
    store = GcsBlobStore(client, stack_env.bucket, emulator_host=stack_env.storage_host)
    assert optimizers.decode(decode_state(store.get(stored[-1]))).steps == 2


def test_a_bad_server_optimizer_is_a_400_naming_the_key(api: Api) -> None:
    body = host_body(server_optimizer={"name": "fedadam", "beta_2": 1.0})
    response = api.admin("POST", "host-training", json=body)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_config"
    assert "'server_optimizer.beta_2' must be below 1" in response.json()["error"]
