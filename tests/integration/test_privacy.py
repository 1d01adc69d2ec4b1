"""Differential privacy through the HTTP API on the local stack: a process with ``dp``
runs two cycles and ``admin/status`` shows the epsilon dp-accounting gives for them;
with ``target_quantile`` it shows the clip norm each closing chose; a bad ``dp`` is a
400 that names the key."""

from __future__ import annotations

from functools import partial

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from firegrid.local.stack import StackInfo
from tests.common import tiny_model

from .support import Api, cycle_seq, host_body, small_diff, wait_for

pytestmark = pytest.mark.integration

DP = {"clip_norm": 0.5, "noise_multiplier": 1.2, "delta": 1e-5, "population": 20}


@pytest.fixture
def api(clean_stack: StackInfo) -> Api:
    return Api(clean_stack.base_url, clean_stack.admin_token)


def test_two_cycles_with_dp_show_their_epsilon_in_status(api: Api) -> None:
    api.host(num_cycles=2, max_diffs=2, max_workers=2, dp=DP)
    rng = np.random.default_rng(3)
    for seq in (1, 2):
        for _ in range(2):
            worker_id, accepted = api.join()
            diff = {k: rng.normal(size=v.shape).astype(v.dtype) for k, v in tiny_model()[0].items()}
            reply = api.report(worker_id, accepted["request_key"], diff)
            assert reply.status_code == 200, reply.text
        if seq == 1:
            wait_for(lambda: cycle_seq(api) == 2, what="cycle 2 to open")
            assert api.status()["privacy"]["epsilon"] == pytest.approx(_epsilon(cycles=1))
    wait_for(lambda: api.status()["status"] == "completed", what="training to end")

    status = api.status()
    assert status["privacy"] == {
        "epsilon": pytest.approx(_epsilon(cycles=2)),
        "delta": 1e-5,
        "noise_multiplier": 1.2,
        "clip_norm": 0.5,
        "max_epsilon": None,
        "target_quantile": None,
    }
    fixed = {"target_quantile": None, "clip_learning_rate": None, "clipped_count_stddev": None}
    assert status["server_config"]["dp"] == DP | {"max_epsilon": None} | fixed


def _epsilon(cycles: int) -> float:
    accountant = rdp_privacy_accountant.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(2 / 20, dp_accounting.GaussianDpEvent(1.2))
    accountant.compose(event, cycles)
    return float(accountant.get_epsilon(1e-5))


def test_adaptive_clipping_moves_the_clip_norm_shown_in_status(api: Api) -> None:
    # sigma_b / m = 0.05: the noised fraction of diffs within C stays far above gamma.
    adaptive = DP | {"clip_norm": 10.0, "noise_multiplier": 0.1, "target_quantile": 0.5}
    adaptive |= {"clipped_count_stddev": 0.1}
    api.host(num_cycles=2, max_diffs=2, max_workers=2, dp=adaptive)
    shown = [api.status()["privacy"]["clip_norm"]]
    for seq in (1, 2):
        for _ in range(2):  # norms far below C: every diff fits, so C shrinks
            worker_id, accepted = api.join()
            reply = api.report(worker_id, accepted["request_key"], small_diff())
            assert reply.status_code == 200, reply.text
        wait_for(partial(_has_checkpoint, api, seq + 1), what=f"closing {seq}")
        shown.append(api.status()["privacy"]["clip_norm"])

    assert shown[0] == 10.0 and shown[2] < shown[1] < shown[0]
    # Each closing's choice is in the cycle history (newest first), as status showed it.
    history = api.admin("GET", "cycles", params={"name": "mnist"}).json()["cycles"]
    assert [line["next_clip_norm"] for line in history] == [shown[2], shown[1]]


def _has_checkpoint(api: Api, number: int) -> bool:
    return bool(api.status()["latest_checkpoint"] == number)


def test_a_bad_dp_is_a_400_naming_the_key(api: Api) -> None:
    for dp, message in [
        (DP | {"clip_norm": -1}, "dp.clip_norm"),
        (DP | {"target_quantile": 1.5}, "'dp.target_quantile' must be <= 1"),
        (DP | {"target_quantile": 0.5}, "needs 2 * clipped_count_stddev > z (1.2)"),
        ({"clip_norm": 1.0}, "'dp.noise_multiplier' is required"),
    ]:
        body = host_body(max_workers=2, dp=dp)
        response = api.admin("POST", "host-training", json=body)
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "invalid_config"
        assert message in response.json()["error"]
    body = host_body(aggregation="median", max_workers=2, dp=DP)
    response = api.admin("POST", "host-training", json=body)
    assert response.status_code == 400
    assert "'dp' needs 'aggregation' 'fedavg' or 'mean'" in response.json()["error"]
