"""Adaptive server optimizers: Flower's FedAvgM, FedAdam, FedYogi and FedAdagrad.

Same parameter names, defaults and update rules as Flower's strategies (flwr 1.42),
applied to the cycle's aggregated diff instead of the plain ``new = old - server_lr *
delta``. The quantities, with PyGrid's diff convention ``diff = before - after``:

* ``delta`` (``Step.delta``): the aggregated diff, ``old - average(new)``.
* FedAvgM's pseudo-gradient is ``delta`` itself (Flower: ``initial - fedavg_result``);
  ``new = old - server_learning_rate * momentum``.
* FedOpt's ``delta_t`` (Flower: ``fedavg_weights_aggregate - current_weights``) is
  ``-delta``; ``new = old + eta * m_t / (sqrt(v_t) + tau)`` (FedAdam: ``eta`` bias-corrected).

The state between closings (``m``, ``v`` and the number of steps taken) is kept per
checkpoint in Cloud Storage; the math here is pure numpy, in float64, and the state is
stored as float32, as Flower holds it for a float32 model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from firegrid.domain.aggregation import Floats, StateDict, Tensors
from firegrid.domain.fields import Fields


class Optimizer(StrEnum):
    """``server_config.server_optimizer.name``."""

    FEDAVGM = "fedavgm"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"
    FEDADAGRAD = "fedadagrad"


PARAMETERS: Mapping[Optimizer, Mapping[str, float]] = {
    Optimizer.FEDAVGM: {"server_learning_rate": 1.0, "server_momentum": 0.0},
    Optimizer.FEDADAM: {"eta": 1e-1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-9},
    Optimizer.FEDYOGI: {"eta": 1e-2, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    Optimizer.FEDADAGRAD: {"eta": 1e-1, "tau": 1e-9},
}
"""Each optimizer's parameters and Flower's defaults for them (FedAdagrad's ``beta_1``
is FedOpt's 0, not a parameter of it)."""

_BETAS = ("beta_1", "beta_2", "server_momentum")
"""Parameters that must lie in ``[0, 1)``; the others must be > 0."""

MAX_PARAMETER = 1000.0


@dataclass(frozen=True, kw_only=True)
class ServerOptimizer:
    """A parsed ``server_config.server_optimizer``."""

    name: Optimizer
    params: Mapping[str, float]
    """Every parameter of ``name``: the ones given, Flower's defaults for the rest."""

    @classmethod
    def parse(cls, fields: Fields) -> ServerOptimizer:
        """From the ``server_optimizer`` object: 400s name the key and say what is wrong."""
        if fields.raw.get("name") is None:
            raise fields.bad("name", f"is required: one of {', '.join(Optimizer)}")
        name = Optimizer(fields.choice("name", Optimizer, Optimizer.FEDADAM))
        if "eta_l" in fields.raw:
            raise fields.bad("eta_l", "is the devices' learning rate: set 'client_config.lr'")
        defaults = PARAMETERS[name]
        fields.only({"name", *defaults}, kind=f"server_optimizer ({name})")
        params = {key: _parameter(fields, key, default) for key, default in defaults.items()}
        return cls(name=name, params=params)

    def to_dict(self) -> dict[str, Any]:
        """The wire form, which ``parse`` reads back."""
        return {"name": str(self.name), **self.params}

    @property
    def moments(self) -> int:
        """Model-sized arrays the state holds: FedOpt's ``m`` and ``v``, FedAvgM's momentum."""
        if self.name is Optimizer.FEDAVGM:
            return 1 if self.params["server_momentum"] > 0 else 0
        return 2


def _parameter(fields: Fields, key: str, default: float) -> float:
    if key in _BETAS:
        value = fields.number(key, maximum=1.0)
        if value == 1.0:
            raise fields.bad(key, "must be below 1")
    else:
        value = fields.number(key, maximum=MAX_PARAMETER)
        if value == 0:
            raise fields.bad(key, "must be > 0")
    return default if value is None else value


@dataclass(frozen=True, kw_only=True)
class OptimizerState:
    """What an optimizer carries from one closing to the next."""

    steps: int = 0
    """Steps taken so far (Flower's ``server_round`` of the last one)."""
    m: Mapping[str, Floats] = field(default_factory=dict)
    """First moments (FedOpt's ``m_t``) or FedAvgM's momentum; empty before the first step."""
    v: Mapping[str, Floats] = field(default_factory=dict)
    """Second moments (FedOpt's ``v_t``); empty before the first step."""


def step(
    checkpoint: Tensors,
    delta: Mapping[str, Floats],
    optimizer: ServerOptimizer,
    state: OptimizerState,
) -> tuple[StateDict, OptimizerState]:
    """The next checkpoint (in the checkpoint's dtypes) and the state after this step."""
    server_round = state.steps + 1
    p = optimizer.params
    if optimizer.name is Optimizer.FEDAVGM:
        return _fedavgm(checkpoint, delta, p, state, server_round)
    beta_1 = p.get("beta_1", 0.0)
    m, v, new = {}, {}, {}
    for name, old in checkpoint.items():
        g = -delta[name]  # Flower's delta_t
        m[name] = beta_1 * state.m.get(name, 0.0) + (1 - beta_1) * g
        v[name] = _second_moment(optimizer.name, p, state.v.get(name, 0.0), g)
        direction = m[name] / (np.sqrt(v[name]) + p["tau"])
        eta = _eta(optimizer.name, p, server_round)
        new[name] = _cast(old, np.add(old, eta * direction, dtype=np.float64))
    return new, OptimizerState(steps=server_round, m=m, v=v)


def _second_moment(name: Optimizer, p: Mapping[str, float], v: Floats | float, g: Floats) -> Floats:
    squared: Floats = g * g
    if name is Optimizer.FEDADAM:
        return p["beta_2"] * v + (1 - p["beta_2"]) * squared
    if name is Optimizer.FEDYOGI:
        return v - (1.0 - p["beta_2"]) * squared * np.sign(v - squared)
    return v + squared  # FedAdagrad


def _eta(name: Optimizer, p: Mapping[str, float], server_round: int) -> float:
    """FedAdam's bias-corrected step, with Flower's exponent ``server_round + 1``."""
    if name is not Optimizer.FEDADAM:
        return p["eta"]
    exponent = server_round + 1.0
    return float(p["eta"] * np.sqrt(1 - p["beta_2"] ** exponent) / (1 - p["beta_1"] ** exponent))


def _fedavgm(
    checkpoint: Tensors,
    delta: Mapping[str, Floats],
    p: Mapping[str, float],
    state: OptimizerState,
    server_round: int,
) -> tuple[StateDict, OptimizerState]:
    """Flower's FedAvgM: heavy-ball momentum on the pseudo-gradient ``delta`` (started
    at the first step's ``delta``), no Nesterov."""
    momentum = p["server_momentum"]
    m = {}
    if momentum > 0:
        m = {name: momentum * state.m[name] + d if state.m else d for name, d in delta.items()}
    direction = m or delta
    new = {
        name: _cast(
            old, np.subtract(old, p["server_learning_rate"] * direction[name], dtype=np.float64)
        )
        for name, old in checkpoint.items()
    }
    return new, OptimizerState(steps=server_round, m=m)


def _cast(old: Any, values: Floats) -> Any:
    with np.errstate(over="ignore"):  # beyond the dtype: infinite, refused at the closing
        return np.asarray(values, dtype=np.float64).astype(old.dtype)


STEPS_KEY = "steps"


def encode(state: OptimizerState) -> StateDict:
    """The state as tensors to store: ``m/<name>``, ``v/<name>`` (float32) and ``steps``."""
    tensors: StateDict = {STEPS_KEY: np.array([state.steps], dtype=np.int64)}
    for prefix, moments in (("m/", state.m), ("v/", state.v)):
        for name, values in moments.items():
            tensors[prefix + name] = np.asarray(values, dtype=np.float32)
    return tensors


def decode(tensors: Tensors) -> OptimizerState:
    """``encode``'s tensors back, the moments in float64 for the next step."""

    def moments(prefix: str) -> dict[str, Floats]:
        return {
            key.removeprefix(prefix): np.asarray(values, dtype=np.float64)
            for key, values in tensors.items()
            if key.startswith(prefix)
        }

    return OptimizerState(steps=int(tensors[STEPS_KEY][0]), m=moments("m/"), v=moments("v/"))
