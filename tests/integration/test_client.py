"""The device SDK, the simulator and a short demo against the local stack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from firegrid.client.device import Device, LocalData, Outcome
from firegrid.client.protocol import DeviceClient, ServerError
from firegrid.client.simulator import SimulationConfig, Simulator
from firegrid.demo import (
    DemoOptions,
    Mode,
    Privacy,
    Strategy,
    centralised_accuracy,
    digits_data,
    run_demo,
)
from firegrid.operator_client import OperatorClient
from firegrid.tensors import decode_state

from .support import Api, pushes, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def api(clean_stack) -> Api:
    return Api(clean_stack.base_url, clean_stack.admin_token)


def _local_data(seed: int, n: int = 24) -> LocalData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0).astype(np.int64)
    return LocalData(x, y, x[:8], y[:8])


def test_sdk_accepted_rejected_with_timeout_and_completed(api: Api, clean_stack) -> None:
    api.host(num_cycles=1, max_workers=1, max_diffs=1)
    first = Device(clean_stack.base_url, "mnist", _local_data(1))
    second = Device(clean_stack.base_url, "mnist", _local_data(2))
    assignment = first.request()
    assert not isinstance(assignment, type(None)) and hasattr(assignment, "request_key")
    rejected = second.request()
    assert rejected.outcome is Outcome.REJECTED and rejected.reason == "cycle_full"
    assert isinstance(rejected.timeout, int) and rejected.timeout > 0
    result = first.train_and_report(assignment)
    assert result.outcome is Outcome.REPORTED and result.num_samples == 24
    assert result.accuracy is not None
    wait_for(lambda: api.status()["status"] == "completed", what="training to complete")
    assert [r.outcome for r in second.run()] == [Outcome.COMPLETED]
    metrics = OperatorClient(clean_stack.base_url, clean_stack.admin_token).training_metrics(
        "mnist"
    )
    assert [(m["cycle_id"], m["num_samples"]) for m in metrics] == [(1, 8)]


def test_sdk_errors_are_typed_with_the_servers_message(clean_stack) -> None:
    client = DeviceClient(clean_stack.base_url)
    with pytest.raises(ServerError) as raised:
        client.authenticate("no-such-model")
    assert raised.value.status == 404
    assert raised.value.code == "unknown_process"
    assert "no-such-model" in raised.value.message


def test_two_cycles_follow_leafs_formula(api: Api, clean_stack, monkeypatch) -> None:
    """Checkpoint 3 equals the LEAF formula applied by hand to the diffs the devices reported."""
    api.host(num_cycles=2, max_workers=3, max_diffs=3)
    reported: dict[int, list[tuple[dict[str, np.ndarray], int]]] = {1: [], 2: []}
    original = DeviceClient.report

    def recording_report(self, assignment, diff, num_samples):
        reported[assignment.cycle_id].append((decode_state(diff), num_samples))
        return original(self, assignment, diff, num_samples)

    monkeypatch.setattr(DeviceClient, "report", recording_report)
    devices = [
        Device(clean_stack.base_url, "mnist", _local_data(i, n=10 * (i + 1)), seed=i)
        for i in range(3)
    ]
    for _cycle in (1, 2):
        for device in devices:
            assert device.run(max_cycles=1)[-1].outcome is Outcome.REPORTED
        # the next request may race the aggregation: wait for the cycle to move on
        wait_for(
            lambda c=_cycle: api.status()["latest_checkpoint"] == c + 1, what="next checkpoint"
        )

    operator = OperatorClient(clean_stack.base_url, clean_stack.admin_token)
    checkpoint = decode_state(operator.checkpoint("mnist", number=1))
    expected = {k: v.astype(np.float64) for k, v in checkpoint.items()}
    for cycle in (1, 2):
        total = sum(n for _, n in reported[cycle])
        assert sorted(n for _, n in reported[cycle]) == [10, 20, 30]
        for name in expected:
            expected[name] -= (
                sum(n * d[name].astype(np.float64) for d, n in reported[cycle]) / total
            )
    third = decode_state(operator.checkpoint("mnist", number=3))
    for name, values in expected.items():
        np.testing.assert_allclose(third[name], values, atol=1e-6)


def test_simulator_dropouts_leave_the_cycle_to_close_at_the_deadline(
    api: Api, clean_stack, ticker
) -> None:
    api.host(num_cycles=1, cycle_length=3, max_workers=6, max_diffs=6, min_diffs=1)
    shards = [_local_data(i) for i in range(6)]
    config = SimulationConfig(devices=6, dropout=0.5, seed=3, poll_s=0.1, time_limit_s=60)
    summary = Simulator(clean_stack.base_url, "mnist", shards, config, progress=False).run()
    tally = summary.cycles[1]
    assert summary.completed
    # The seed fixes who leaves, whatever the thread timing: devices 0, 2, 3 and 4 drop out.
    assert tally.reported == 2 and tally.dropped >= 4
    status = api.status()
    assert status["status"] == "completed" and status["checkpoints"] == [1, 2]


def test_short_demo_with_a_strategy_and_dp_writes_the_plot(
    clean_stack, ticker, tmp_path: Path
) -> None:
    options = DemoOptions(
        devices=6, cycles=2, cycle_length=2, online=1, dropout=0, slow=0,
        strategy=Strategy.FEDADAM, dp=Privacy(clip_norm=1.0, noise_multiplier=0.5),
        out=tmp_path / "plot.png",
    )  # fmt: skip
    run = run_demo(clean_stack, options)
    assert [scored.checkpoint for scored in run.heldout] == [1, 2, 3]
    times = [scored.wall_s for scored in run.heldout]
    assert times[0] == 0.0 and times == sorted(times) and times[-1] > 0
    assert run.epsilon is not None and run.epsilon > 0  # from admin/status
    status = OperatorClient(clean_stack.base_url, clean_stack.admin_token).status("digits-cnn")
    assert status["privacy"]["epsilon"] == run.epsilon
    assert 0.8 < centralised_accuracy(*digits_data(options)) <= 1.0
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG")


def test_short_async_demo_makes_its_checkpoints_from_returning_devices(clean_stack, ticker) -> None:
    """FedBuff with 2 places and buffers of 2 among 4 devices: 4 checkpoints need devices
    that reported to be invited again."""
    options = DemoOptions(
        devices=4, cycles=4, cycle_length=10, online=1, dropout=0, slow=0,
        mode=Mode.ASYNC, places=2, buffer_size=2, max_staleness=3, out=None,
    )  # fmt: skip
    run = run_demo(clean_stack, options)

    assert [scored.checkpoint for scored in run.heldout] == [1, 2, 3, 4, 5]
    assert run.summary.outcomes["reported"] >= 8 and run.epsilon is None
    status = OperatorClient(clean_stack.base_url, clean_stack.admin_token).status("digits-cnn")
    assert status["status"] == "completed"


def test_simulate_command_trains_on_leaf_synthetic_data(clean_stack, tmp_path: Path) -> None:
    """LEAF's Synthetic(1, 1), written in LEAF's JSON format, trains through `firegrid simulate`."""
    import torch

    from firegrid.client.data import synthetic, write_leaf_json
    from firegrid.commands import main as cli
    from firegrid.plans import build_plan, state_of
    from firegrid.tensors import encode_state

    train_file, test_file = write_leaf_json(synthetic(num_users=4, seed=1), tmp_path)
    model = torch.nn.Linear(60, 10)
    OperatorClient(clean_stack.base_url, clean_stack.admin_token).host(
        encode_state(state_of(model)),
        {"training_plan": build_plan(model, torch.zeros(2, 60))},
        {"name": "synthetic", "version": "1", "batch_size": 10, "lr": 0.05, "max_updates": 5},
        {"cycle_length": 5, "num_cycles": 2, "max_workers": 4, "max_diffs": 4},
    )
    code = cli(
        ["simulate", "synthetic", "--base-url", clean_stack.base_url, "--devices", "4",
         "--data", "leaf", "--leaf-train", str(train_file), "--leaf-test", str(test_file),
         "--time-limit", "120"]
    )  # fmt: skip
    assert code == 0
    status = OperatorClient(clean_stack.base_url, clean_stack.admin_token).status("synthetic")
    assert status["status"] == "completed" and status["checkpoints"] == [1, 2, 3]


def test_push_driven_simulation_trains_without_polling(api: Api, clean_stack, ticker) -> None:
    from firegrid.client.inbox import LocalFcmInbox

    api.host(num_cycles=2, cycle_length=10, min_workers=3, max_workers=3, max_diffs=3)
    shards = [_local_data(i) for i in range(4)]
    config = SimulationConfig(devices=4, seed=5, poll_s=0.1, time_limit_s=90)
    summary = Simulator(
        clean_stack.base_url, "mnist", shards, config, progress=False, expected_cycles=2,
        inbox=LocalFcmInbox(clean_stack.fcm_url),
    ).run()  # fmt: skip
    assert summary.completed  # every device stopped on fl_completed
    assert summary.cycles[1].reported == summary.cycles[2].reported == 3
    assert api.status()["status"] == "completed"
    kinds = {m["data"]["type"] for m in pushes(clean_stack.fcm_url)}
    assert {"request_for_cycle", "cycle_completed", "fl_completed"} <= kinds


def test_large_payloads_move_by_signed_url(api: Api, clean_stack) -> None:
    """Above the inline limit: 307 to a signed URL for downloads, a signed PUT for the diff."""
    from firegrid.tensors import encode_state

    from .support import cycle_seq, small_diff, tiny_model

    api.host(max_inline_bytes=64)
    device = Device(clean_stack.base_url, "mnist", _local_data(1))
    device.client.inline_limit_bytes = 0  # every diff goes by upload
    assignment = device.request()
    params = {"worker_id": assignment.worker_id, "request_key": assignment.request_key}
    redirect = api.device("GET", "get-model", params=params | {"model_id": assignment.model_id},
                          allow_redirects=False)  # fmt: skip
    assert redirect.status_code == 307
    assert redirect.headers["Location"].startswith(clean_stack.storage_host)
    state, plan = tiny_model()
    assert decode_state(device.client.get_model(assignment)).keys() == state.keys()
    assert device.client.get_plan(assignment) == plan

    missing = api.device("POST", "report", json=params | {"uploaded": True, "num_samples": 3})
    assert missing.status_code == 400 and missing.json()["code"] == "missing_upload"
    device.client.report(assignment, encode_state(small_diff(0.25)), 3)
    wait_for(lambda: cycle_seq(api) == 2, what="cycle 2")
    checkpoint = decode_state(
        OperatorClient(clean_stack.base_url, clean_stack.admin_token).checkpoint("mnist")
    )
    for name, old in state.items():
        np.testing.assert_allclose(checkpoint[name], old - 0.25, atol=1e-6)
