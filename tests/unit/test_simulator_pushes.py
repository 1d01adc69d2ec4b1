"""Push-driven simulated devices act only on their own process's pushes: tokens are
shared across runs (one app, many processes), so one run's ``fl_completed`` must not
stop the next run's devices."""

from __future__ import annotations

import numpy as np
import pytest

from firegrid.client.device import LocalData
from firegrid.client.inbox import Push
from firegrid.client.simulator import SimulationConfig, Simulator

UNREACHABLE = "http://127.0.0.1:9"  # joining the pool fails at once; pushes still arrive


class _CannedInbox:
    def __init__(self, pushes: list[Push]) -> None:
        self._pushes = pushes

    def poll(self) -> list[Push]:
        pushes, self._pushes = self._pushes, []
        return pushes


def _completed(version: str) -> list[Push]:
    data = {"type": "fl_completed", "model": "digits", "version": version, "cycle_id": "3"}
    return [Push(token=f"sim-0-{i}", data=data) for i in range(2)]


@pytest.mark.parametrize(("version", "stops"), [("run-2", True), ("run-1", False)])
def test_fl_completed_stops_only_the_devices_of_its_process(version: str, stops: bool) -> None:
    shard = LocalData(np.zeros((2, 4), np.float32), np.zeros(2, np.int64))
    config = SimulationConfig(devices=2, poll_s=0.01, time_limit_s=0.5)
    simulator = Simulator(
        UNREACHABLE, "digits", [shard, shard], config, version="run-2", progress=False,
        inbox=_CannedInbox(_completed(version)),
    )  # fmt: skip

    assert simulator.run().completed is stops
