"""Server optimizers against Flower's own strategies, on the same inputs, several rounds."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAdagrad, FedAdam, FedAvgM, FedYogi, Strategy

from firegrid.domain import optimizers
from firegrid.domain.aggregation import Contribution, combine
from firegrid.domain.config import ServerConfig
from firegrid.domain.errors import BadRequest
from firegrid.domain.optimizers import OptimizerState
from firegrid.tensors import decode_state, encode_state
from tests.common import server_optimizer

SHAPES = {"w": (5, 4), "b": (4,)}
ROUNDS = 5
CLIENTS = 3

CASES: list[tuple[dict[str, Any], type[Strategy], dict[str, float]]] = [
    (
        {"name": "fedavgm", "server_learning_rate": 0.7, "server_momentum": 0.9},
        FedAvgM,
        {"server_learning_rate": 0.7, "server_momentum": 0.9},
    ),
    ({"name": "fedadam"}, FedAdam, {}),
    (
        {"name": "fedadam", "eta": 0.05, "beta_1": 0.8, "tau": 1e-3},
        FedAdam,
        {"eta": 0.05, "beta_1": 0.8, "tau": 1e-3},
    ),
    ({"name": "fedyogi"}, FedYogi, {}),
    ({"name": "fedyogi", "eta": 0.1, "beta_2": 0.9}, FedYogi, {"eta": 0.1, "beta_2": 0.9}),
    ({"name": "fedadagrad"}, FedAdagrad, {}),
    ({"name": "fedadagrad", "eta": 0.3, "tau": 1e-2}, FedAdagrad, {"eta": 0.3, "tau": 1e-2}),
]


def _fit_res(weights: list[np.ndarray], num_examples: int) -> FitRes:
    return FitRes(
        status=Status(code=Code.OK, message=""),
        parameters=ndarrays_to_parameters(weights),
        num_examples=num_examples,
        metrics={},
    )


@pytest.mark.parametrize(("config", "strategy_class", "flower_params"), CASES)
def test_each_round_matches_flowers_strategy(
    config: dict[str, Any], strategy_class: type[Strategy], flower_params: dict[str, float]
) -> None:
    rng = np.random.default_rng(12)
    initial = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    flower = strategy_class(
        initial_parameters=ndarrays_to_parameters(list(initial.values())), **flower_params
    )
    optimizer = server_optimizer(config)
    ours, flowers, state = dict(initial), list(initial.values()), OptimizerState()
    for server_round in range(1, ROUNDS + 1):
        updates = [
            {k: (0.3 * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}
            for _ in range(CLIENTS)
        ]
        counts = [int(n) for n in rng.integers(1, 50, size=CLIENTS)]
        results = [
            (None, _fit_res([w + u[k] for w, k in zip(flowers, SHAPES, strict=True)], n))
            for u, n in zip(updates, counts, strict=True)
        ]
        aggregated, _ = flower.aggregate_fit(server_round, results, [])  # type: ignore[arg-type]
        assert aggregated is not None
        flowers = parameters_to_ndarrays(aggregated)

        diffs = [  # PyGrid's convention: before - after
            Contribution(diff={k: -u[k] for k in SHAPES}, weight=float(n))
            for u, n in zip(updates, counts, strict=True)
        ]
        step = combine(ours, diffs)
        ours, after = optimizers.step(ours, step.delta, optimizer, state)
        # Stored and read back between closings, as the service does.
        state = optimizers.decode(decode_state(encode_state(optimizers.encode(after))))
        assert state.steps == server_round
        for name, theirs in zip(SHAPES, flowers, strict=True):
            assert ours[name].dtype == np.float32
            np.testing.assert_allclose(ours[name], theirs, rtol=1e-5, atol=1e-6)


def test_no_momentum_keeps_no_state_but_the_step_count() -> None:
    optimizer = server_optimizer({"name": "fedavgm", "server_learning_rate": 0.5})
    checkpoint = {"w": np.ones(3, dtype=np.float32)}
    new, state = optimizers.step(checkpoint, {"w": np.full(3, 2.0)}, optimizer, OptimizerState())
    np.testing.assert_array_equal(new["w"], np.zeros(3, dtype=np.float32))
    assert set(optimizers.encode(state)) == {"steps"}


def test_flowers_defaults_fill_the_missing_parameters() -> None:
    assert server_optimizer({"name": "fedyogi"}).params == {
        "eta": 1e-2,
        "beta_1": 0.9,
        "beta_2": 0.99,
        "tau": 1e-3,
    }
    assert server_optimizer({"name": "fedavgm"}).params == {
        "server_learning_rate": 1.0,
        "server_momentum": 0.0,
    }


BASE = {"cycle_length": 60, "num_cycles": 5, "max_diffs": 2}


@pytest.mark.parametrize(
    ("optimizer", "message"),
    [
        ("fedadam", "'server_optimizer' must be a JSON object"),
        ({}, "'server_optimizer.name' is required: one of fedavgm, fedadam"),
        ({"name": None}, "'server_optimizer.name' is required"),
        ({"name": "adam"}, "'server_optimizer.name' must be one of fedavgm"),
        ({"name": "fedadam", "eta": 0}, "'server_optimizer.eta' must be > 0"),
        ({"name": "fedadam", "eta": -1}, "'server_optimizer.eta' must not be negative"),
        ({"name": "fedadam", "beta_1": 1}, "'server_optimizer.beta_1' must be below 1"),
        ({"name": "fedyogi", "beta_2": "0.9"}, "'server_optimizer.beta_2' must be a number"),
        ({"name": "fedadam", "eta_l": 0.1}, "'server_optimizer.eta_l' is the devices'"),
        ({"name": "fedadagrad", "beta_1": 0.5}, "unknown server_optimizer (fedadagrad) keys"),
        ({"name": "fedavgm", "eta": 0.5}, "unknown server_optimizer (fedavgm) keys: eta"),
        (
            {"name": "fedavgm", "server_momentum": 1.5},
            "'server_optimizer.server_momentum' must be <= 1",
        ),
    ],
)
def test_bad_optimizers_are_refused_with_the_reason(optimizer: object, message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)) as refused:
        ServerConfig.parse(BASE | {"server_optimizer": optimizer})
    assert refused.value.code == "invalid_config"


def test_server_lr_and_an_optimizer_are_not_both_accepted() -> None:
    with pytest.raises(BadRequest, match="'server_lr' does not apply with 'server_optimizer'"):
        ServerConfig.parse(BASE | {"server_lr": 0.5, "server_optimizer": {"name": "fedadam"}})


def test_a_config_with_an_optimizer_round_trips_through_storage() -> None:
    config = ServerConfig.parse(BASE | {"server_optimizer": {"name": "fedadam", "eta": 0.01}})
    stored = config.to_dict()
    assert stored["server_optimizer"] == {
        "name": "fedadam",
        "eta": 0.01,
        "beta_1": 0.9,
        "beta_2": 0.99,
        "tau": 1e-9,
    }
    assert ServerConfig.from_dict(stored) == config
    assert ServerConfig.parse(BASE).server_optimizer is None
