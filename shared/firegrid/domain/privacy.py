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

Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning
with Adaptive Clipping", NeurIPS 2021; TensorFlow Privacy's quantile estimator, as TFF
uses it): with ``target_quantile`` the clip norm C follows the ``gamma`` quantile of the
diffs' norms. Each closing counts the diffs within C, noises that count with
``N(0, sigma_b^2)`` and moves C geometrically (``next_clip_norm``). The count is a second
Gaussian query on the same cohort, so the paper splits the overall noise multiplier z
(the accountant's, unchanged) between the two: the sum's is
``z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)`` (the count's sensitivity is 1/2 once each
b_i is centred to +-1/2, so its multiplier is ``2 sigma_b``; two Gaussian queries compose
as one of multiplier ``(z_delta^-2 + (2 sigma_b)^-2)^(-1/2) = z``).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from firegrid.domain.aggregation import Floats
from firegrid.domain.fields import Fields

MAX_CLIP_NORM = 1e6
MAX_NOISE_MULTIPLIER = 1e3
MAX_EPSILON = 1e6
MAX_CLIP_LEARNING_RATE = 10.0
MAX_COUNT_STDDEV = 1e6
DEFAULT_CLIP_LEARNING_RATE = 0.2
"""eta_C: the paper's and TFF's default."""
COUNT_STDDEV_PER_DIFF = 0.05
"""sigma_b defaults to ``m / 20`` (the paper's suggestion), m the cycle's expected cohort."""
MIN_CLIP_NORM = 1e-12
"""The adaptive clip norm stays above this: at 0 it could never grow again."""
_ADAPTIVE_KEYS = ("clip_learning_rate", "clipped_count_stddev")


@dataclass(frozen=True, kw_only=True)
class DpConfig:
    """A parsed ``server_config.dp``."""

    clip_norm: float
    """S: each diff is scaled down to at most this L2 norm (over all its tensors); with
    ``target_quantile``, the first cycle's (later ones take the previous closing's)."""
    noise_multiplier: float
    """z: the noise's standard deviation is ``z * S / m`` (adaptive: ``z_delta * C / m``)."""
    delta: float
    """The delta epsilon is reported at."""
    population: int | None = None
    """N for the sampling rate ``m / N`` (None: the process's registered workers)."""
    max_epsilon: float | None = None
    """Training completes before a cycle would take epsilon above this (None: no budget)."""
    target_quantile: float | None = None
    """gamma in (0, 1): adaptive clipping aims C at this quantile of the norms (None: fixed C)."""
    clip_learning_rate: float | None = None
    """eta_C of the geometric update (adaptive only; default 0.2)."""
    clipped_count_stddev: float | None = None
    """sigma_b, the count's noise (adaptive only; default ``m / 20``: ``for_cohort``)."""

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
        return config._adaptive(fields)

    def _adaptive(self, fields: Fields) -> DpConfig:
        """The adaptive clipping keys, which mean nothing without ``target_quantile``."""
        if not fields.present("target_quantile"):
            for key in _ADAPTIVE_KEYS:
                if fields.present(key):
                    raise fields.bad(key, "needs 'dp.target_quantile' (adaptive clipping)")
            return self
        quantile = _positive(fields, "target_quantile", 1.0)
        if quantile >= 1:
            raise fields.bad("target_quantile", "must be below 1")
        return replace(
            self,
            target_quantile=quantile,
            clip_learning_rate=_positive(fields, "clip_learning_rate", MAX_CLIP_LEARNING_RATE)
            if fields.present("clip_learning_rate")
            else DEFAULT_CLIP_LEARNING_RATE,
            clipped_count_stddev=_positive(fields, "clipped_count_stddev", MAX_COUNT_STDDEV)
            if fields.present("clipped_count_stddev")
            else None,
        )

    def for_cohort(self, expected_diffs: int) -> DpConfig:
        """Adaptive without ``clipped_count_stddev``: the paper's ``sigma_b = m / 20``, m
        the diffs a cycle is expected to aggregate (hosting passes ``max_diffs``, else
        ``max_workers``), fixed at hosting so the noise split is checked once."""
        if self.target_quantile is None or self.clipped_count_stddev is not None:
            return self
        return replace(self, clipped_count_stddev=COUNT_STDDEV_PER_DIFF * expected_diffs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def clip_norm_after(self, chosen: float | None) -> float:
        """The clip norm of a closing: the one the closing before ``chosen`` (adaptive),
        ``clip_norm`` before any closing or with a fixed clip norm."""
        return chosen if chosen is not None and self.target_quantile is not None else self.clip_norm

    @property
    def sum_noise_multiplier(self) -> float | None:
        """The noise multiplier of the clipped sum: z, or adaptive the paper's z_delta
        (None: sigma_b too small for z, refused at hosting)."""
        if self.clipped_count_stddev is None:
            return self.noise_multiplier
        return split_noise_multiplier(self.noise_multiplier, self.clipped_count_stddev)

    def noise_std(self, num_diffs: int, clip_norm: float) -> float:
        """The noise of the mean of ``num_diffs`` diffs clipped to ``clip_norm``."""
        multiplier = self.sum_noise_multiplier
        if multiplier is None:
            raise ValueError("the noise split is undefined: 2 * sigma_b <= z")
        return multiplier * clip_norm / num_diffs

    def next_clip_norm(
        self, clip_norm: float, within: int, num_diffs: int, rng: np.random.Generator
    ) -> float | None:
        """The next cycle's clip norm (None: not adaptive). ``within`` of the ``num_diffs``
        diffs had norm <= ``clip_norm``; their noised fraction
        ``b~ = (within + N(0, sigma_b^2)) / m`` moves C geometrically,
        ``C * exp(-eta_C * (b~ - gamma))``: down while more than gamma fit, up otherwise."""
        if self.target_quantile is None or self.clip_learning_rate is None:
            return None
        stddev = self.clipped_count_stddev or 0.0
        fraction = (within + rng.normal(0.0, stddev)) / num_diffs
        moved = clip_norm * math.exp(-self.clip_learning_rate * (fraction - self.target_quantile))
        return min(MAX_CLIP_NORM, max(MIN_CLIP_NORM, moved))

    def epsilon_of(self, spent: Spent) -> float:
        return epsilon(spent, self.noise_multiplier, self.delta)


def _positive(fields: Fields, key: str, maximum: float) -> float:
    value = fields.number(key, maximum=maximum)
    if value is None or value <= 0:
        raise fields.bad(key, "must be > 0")
    return value


def split_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float | None:
    """z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2) (Andrew et al. 2021, section 3.1): the
    sum query's share of the overall multiplier z once the count query (multiplier
    ``2 sigma_b``) took its own. None when ``2 sigma_b <= z``: no share is left."""
    left = noise_multiplier**-2 - (2 * count_stddev) ** -2
    return left**-0.5 if left > 0 else None


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
    next_clip_norm: float | None = None
    """Adaptive clipping: the clip norm of the next cycle."""


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
