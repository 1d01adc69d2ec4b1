"""Differential privacy: DP-FedAvg (McMahan et al. 2018) with an RDP accountant.

``server_config.dp`` makes a closing clip each diff to L2 norm ``clip_norm`` (S), take
the *uniform* mean of the clipped diffs and add Gaussian noise of standard deviation
``noise_multiplier * S / m`` (m: the diffs aggregated). The weighting is uniform, not
LEAF's sample counts: with every weight 1/m one device moves the mean by at most S/m,
the sensitivity the noise is scaled to; sample-count weights would let one device with
many samples move it by up to S.

The privacy spent is tracked with Google's ``dp-accounting`` (RDP accountant): each
cycle is a Poisson-subsampled Gaussian mechanism with sampling rate ``q = m / N``
(N: ``population``, or the registered pool). The cycles so far are kept as a count per
sampling rate, so the epsilon after any cycle is the accountant's composition of
exactly those events. ``dp-accounting`` is imported only when epsilon is computed (the
closing functions, and hosting's budget check), since it pulls scipy: the device-facing
functions never load it.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from firegrid.domain.aggregation import Floats
from firegrid.domain.fields import Fields

MAX_CLIP_NORM = 1e6
MAX_NOISE_MULTIPLIER = 1e3
MAX_EPSILON = 1e6


@dataclass(frozen=True, kw_only=True)
class DpConfig:
    """A parsed ``server_config.dp``."""

    clip_norm: float
    """S: each diff is scaled down to at most this L2 norm (over all its tensors)."""
    noise_multiplier: float
    """z: the noise's standard deviation is ``z * S / m``."""
    delta: float
    """The delta epsilon is reported at."""
    population: int | None = None
    """N for the sampling rate ``m / N`` (None: the process's registered workers)."""
    max_epsilon: float | None = None
    """Training completes before a cycle would take epsilon above this (None: no budget)."""

    @classmethod
    def parse(cls, fields: Fields) -> DpConfig:
        fields.only(cls.__dataclass_fields__, kind="dp")
        for key in ("clip_norm", "noise_multiplier", "delta"):
            if fields.raw.get(key) is None:
                raise fields.bad(key, "is required")
        config = cls(
            clip_norm=_positive(fields, "clip_norm", MAX_CLIP_NORM),
            noise_multiplier=_positive(fields, "noise_multiplier", MAX_NOISE_MULTIPLIER),
            delta=_positive(fields, "delta", 1.0),
            population=fields.integer("population", minimum=1),
            max_epsilon=_positive(fields, "max_epsilon", MAX_EPSILON)
            if fields.raw.get("max_epsilon") is not None
            else None,
        )
        if config.delta >= 1:
            raise fields.bad("delta", "must be below 1")
        return config

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def noise_std(self, num_diffs: int) -> float:
        return self.noise_multiplier * self.clip_norm / num_diffs

    def epsilon_of(self, spent: Spent) -> float:
        return epsilon(spent, self.noise_multiplier, self.delta)


def _positive(fields: Fields, key: str, maximum: float) -> float:
    value = fields.number(key, maximum=maximum)
    if value is None or value <= 0:
        raise fields.bad(key, "must be > 0")
    return value


def noise_generator() -> np.random.Generator:
    """A generator seeded from the OS's cryptographic source: the noise must not be
    predictable, so no fixed seed outside tests."""
    return np.random.Generator(np.random.PCG64(secrets.randbits(128)))


def add_noise(delta: Mapping[str, Floats], std: float, rng: np.random.Generator) -> None:
    """Adds ``N(0, std^2)`` to every coordinate of the averaged diff, in place (tensors in
    name order, so a seed gives the same noise whatever order the checkpoint lists them)."""
    for name in sorted(delta):
        values = delta[name]
        values += rng.normal(0.0, std, size=values.shape)


Spent = Mapping[str, int]
"""Cycles so far by ``"m/N"`` (diffs aggregated / population): the sampling rate, exactly."""


def spend(spent: Spent, num_diffs: int, population: int) -> dict[str, int]:
    """``spent`` with one more cycle of ``num_diffs`` sampled from ``population``."""
    key = f"{num_diffs}/{max(1, population)}"
    return {**spent, key: spent.get(key, 0) + 1}


def sampling_rate(key: str) -> float:
    """``q = m / N`` of a ``Spent`` key, at most 1 (more diffs than the population: all sampled)."""
    num_diffs, population = key.split("/")
    return min(1.0, int(num_diffs) / int(population))


def epsilon(spent: Spent, noise_multiplier: float, delta: float) -> float:
    """The RDP accountant's epsilon at ``delta`` after the cycles in ``spent``."""
    # Imported here: it pulls scipy, which only the closing functions and hosting load.
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    accountant = rdp_privacy_accountant.RdpAccountant()  # its default orders
    for key, count in sorted(spent.items()):
        event = dp_accounting.PoissonSampledDpEvent(
            sampling_rate(key), dp_accounting.GaussianDpEvent(noise_multiplier)
        )
        accountant.compose(event, count)
    return float(accountant.get_epsilon(delta))


@dataclass(frozen=True, kw_only=True)
class Spending:
    """The privacy spent once a cycle closed."""

    epsilon: float
    """After every cycle up to this one, at ``delta``."""
    spent: dict[str, int]
    """Those cycles, to compose the next closing's epsilon from."""
    exhausted: bool
    """One more cycle could take epsilon above ``max_epsilon``: training completes."""


def account(
    config: DpConfig, before: Spent, num_diffs: int, population: int, next_diffs: int
) -> Spending:
    """The epsilon after a cycle of ``num_diffs``, and whether a next cycle of up to
    ``next_diffs`` (its most: the larger the rate, the larger its cost) stays in budget."""
    spent = spend(before, num_diffs, population)
    exhausted = False
    if config.max_epsilon is not None:
        exhausted = config.epsilon_of(spend(spent, next_diffs, population)) > config.max_epsilon
    so_far = config.epsilon_of(spent)
    return Spending(epsilon=so_far, spent=spent, exhausted=exhausted)
