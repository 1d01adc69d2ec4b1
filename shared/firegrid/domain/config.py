"""Process configuration: PyGrid's ``client_config`` and ``server_config``, validated.

Configs arrive as JSON objects; they are parsed once, at hosting, into frozen
dataclasses so the rest of the code never reads a dict with ``.get()``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from firegrid.domain import limits
from firegrid.domain.aggregation import Aggregation
from firegrid.domain.errors import BadRequest
from firegrid.domain.fields import Fields, check_storable
from firegrid.domain.optimizers import ServerOptimizer
from firegrid.domain.privacy import DpConfig, spend

POOL_SELECTIONS = ("random", "iterate")
EXPIRY_ACTIONS = ("reset", "extend")
MODES = ("sync", "async")
_ASYNC_KEYS = ("buffer_size", "max_concurrency", "max_staleness", "staleness_exponent")
_NOT_ASYNC = {
    "max_workers": "places are 'max_concurrency'",
    "min_diffs": "a buffer closes at 'buffer_size' reports",
    "max_diffs": "a buffer closes at 'buffer_size' reports",
    "goal_count": "invitations top up 'max_concurrency'",
    "worker_participation_mode": "invitations always top up free places",
    "require_invitation": "devices join at any time",
    "do_not_reuse_workers_until_cycle": "a device may train again at once",
    "on_expiry": "buffers have no deadline; only places do",
    "max_weight_fraction": "stale reports are damped instead",
    "dp": "the accountant counts synchronous cohorts",
}
"""Keys refused with ``mode: "async"``, and why (docs/protocol.md)."""
LOSSES = ("cross_entropy", "mse", "bce_with_logits")
OPTIMIZERS = ("sgd", "adam")
# Keys PyGrid configs carry that FireGrid accepts and ignores.
_LEGACY_SERVER_KEYS = frozenset({"iterative_plan"})
INVALID_CONFIG = "invalid_config"
_NESTED = ("authentication", "server_optimizer", "dp")
"""Objects inside ``server_config``, whose keys messages name with the object's."""


def _bad(message: str) -> BadRequest:
    return BadRequest(message, INVALID_CONFIG)


def _config_fields(raw: object, name: str) -> Fields:
    return Fields(
        raw,
        what=f"'{name}'",
        prefix=f"{name}." if name in _NESTED else "",
        invalid=INVALID_CONFIG,
        missing=INVALID_CONFIG,
    )


@dataclass(frozen=True, kw_only=True)
class AuthConfig:
    """How a process authenticates workers (PyGrid's ``authentication`` block).

    As in PyGrid, a token is checked against ``secret``, then ``pub_key``; when
    ``endpoint`` is set, the third party must vouch for it too.
    """

    secret: str | None = None
    """HS256 shared secret."""
    pub_key: str | None = None
    """PEM public key for RS256/ES256 tokens."""
    endpoint: str | None = None
    """Third-party URL that vouches for a token (PyGrid's ``endpoint``; https in production)."""
    firebase: bool = False
    """Accept Firebase Auth ID tokens (not together with ``secret`` or ``pub_key``)."""
    audience: str | None = None
    """Required ``aud`` claim, if set."""
    issuer: str | None = None
    """Required ``iss`` claim, if set."""
    require_exp: bool = False
    """Refuse JWTs without an ``exp`` claim."""
    check_revoked: bool = False
    """Firebase only: refuse ID tokens of revoked sessions and disabled users."""

    @property
    def required(self) -> bool:
        return bool(self.secret or self.pub_key or self.endpoint or self.firebase)

    @classmethod
    def parse(cls, raw: object) -> AuthConfig:
        if raw is None:
            return cls()
        fields = _config_fields(raw, "authentication")
        fields.only(cls.__dataclass_fields__, kind="authentication")
        config = cls(
            secret=fields.text("secret", max_length=limits.MAX_SECRET_LENGTH),
            pub_key=fields.text("pub_key", max_length=limits.MAX_PEM_LENGTH),
            endpoint=fields.text("endpoint", max_length=limits.MAX_URL_LENGTH),
            firebase=fields.flag("firebase"),
            audience=fields.text("audience"),
            issuer=fields.text("issuer"),
            require_exp=fields.flag("require_exp"),
            check_revoked=fields.flag("check_revoked"),
        )
        if config.endpoint is not None and not config.endpoint.startswith(("https://", "http://")):
            raise _bad("'authentication.endpoint' must be an https URL")
        if config.firebase and (config.secret or config.pub_key):
            raise _bad(
                "'authentication.firebase' cannot be combined with 'secret' or 'pub_key': "
                "a token would have two meanings"
            )
        if config.check_revoked and not config.firebase:
            raise _bad("'authentication.check_revoked' applies to Firebase ID tokens only")
        return config


DEFAULT_FANOUT_THRESHOLD = 500
"""Reported diffs one invocation aggregates at most (see docs/performance.md)."""


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Server-side rules of a process; see docs/protocol.md for each key."""

    cycle_length: float | None
    """Seconds from cycle open to deadline; None = no deadline."""
    num_cycles: int
    """Cycles to complete; 0 = unlimited."""
    min_diffs: int | None = None
    """Diffs needed to close at the deadline (None: at least one)."""
    max_diffs: int | None = None
    """Diffs that close a cycle at once (None: only the deadline closes it)."""
    max_workers: int | None = None
    """Hard cap of accepted workers per cycle (None: unlimited)."""
    min_workers: int = 1
    """Available workers needed before invitations go out."""
    goal_count: int | None = None
    """Workers invited per cycle before over-selection (None: ``max_workers``)."""
    over_selection: float = 1.3
    """Invite ``ceil(goal_count * over_selection)`` workers."""
    pool_selection: str = "random"
    """``random`` (without replacement) or ``iterate`` (least recently used first)."""
    do_not_reuse_workers_until_cycle: int = 0
    """A worker may join again only this many cycles after its last one."""
    minimum_upload_speed: float | None = None
    """Minimum upload speed a worker must report (same unit the device measures)."""
    minimum_download_speed: float | None = None
    """Minimum download speed a worker must report."""
    worker_participation_mode: int = 0
    """0: invite only between cycles; 1: also into a running cycle."""
    require_invitation: bool = False
    """cycle-request must carry the cycle's start key."""
    on_expiry: str = "reset"
    """At the deadline with too few diffs: ``reset`` or ``extend``."""
    aggregation: Aggregation = Aggregation.FEDAVG
    """``fedavg`` (LEAF), ``mean`` (PyGrid), ``median`` or ``trimmed_mean``."""
    trim_fraction: float = 0.1
    """Fraction cut from each end by ``trimmed_mean``."""
    server_lr: float = 1.0
    """Step applied to the averaged diff."""
    server_optimizer: ServerOptimizer | None = None
    """An adaptive server optimizer applied to the aggregated diff instead of ``server_lr``
    (None: ``new = old - server_lr * delta``)."""
    dp: DpConfig | None = None
    """Differential privacy (DP-FedAvg): clip, uniform mean, Gaussian noise, accountant."""
    max_diff_norm: float | None = None
    """Reject (or clip, with ``clip_diffs``) diffs with a larger L2 norm."""
    clip_diffs: bool = False
    """Clip instead of rejecting diffs above ``max_diff_norm``."""
    retry_after: int = 60
    """``timeout`` sent with rejections when the cycle has no deadline."""
    max_inline_bytes: int | None = None
    """Serve models and plans above this size by signed URL (lowers the deployment's limit)."""
    availability_ttl: int = 600
    """Seconds a worker stays available after registering or confirming."""
    max_num_samples: int = limits.DEFAULT_MAX_NUM_SAMPLES
    """Largest ``num_samples`` one report may claim (a report above it is a 400)."""
    max_weight_fraction: float | None = None
    """``fedavg``: no single report weighs more than this share of a cycle (None: no cap)."""
    fanout_threshold: int = DEFAULT_FANOUT_THRESHOLD
    """``fedavg``/``mean``: a closing with more reported diffs than this is split into
    groups of at most this many, aggregated in parallel, then combined."""
    authentication: AuthConfig = field(default_factory=AuthConfig)
    """How workers authenticate."""
    mode: str = "sync"
    """``sync`` (cycles) or ``async`` (FedBuff: buffers of ``buffer_size`` reports)."""
    buffer_size: int | None = None
    """Async: reports aggregated into each new checkpoint (FedBuff's K)."""
    max_concurrency: int | None = None
    """Async: devices training at once, for the whole process."""
    max_staleness: int | None = None
    """Async: staler reports are refused (None: any staleness is damped, none refused)."""
    staleness_exponent: float = 0.5
    """Async: a report of staleness ``s`` weighs ``1 / (1 + s) ** staleness_exponent``."""

    @property
    def is_async(self) -> bool:
        return self.mode == "async"

    @property
    def invitation_goal(self) -> int | None:
        """Places an invitation round fills (None: invite the whole pool)."""
        if self.is_async:
            return self.max_concurrency
        return self.goal_count or self.max_workers

    @property
    def requires_speed_test(self) -> bool:
        return self.minimum_upload_speed is not None or self.minimum_download_speed is not None

    @classmethod
    def parse(cls, raw: object) -> ServerConfig:
        fields = _config_fields(raw, "server_config")
        fields.only(cls.__dataclass_fields__, ignored=_LEGACY_SERVER_KEYS, kind="server_config")
        if "cycle_length" not in fields.raw:
            raise _bad("'cycle_length' is required (null for no deadline)")
        if "num_cycles" not in fields.raw:
            raise _bad("'num_cycles' is required (0 for unlimited)")
        year, places = limits.MAX_CYCLE_LENGTH_S, limits.MAX_WORKERS
        cycle_length = fields.number("cycle_length", maximum=year)
        if cycle_length is not None and cycle_length <= 0:
            raise _bad("'cycle_length' must be > 0")
        config = cls(
            cycle_length=cycle_length,
            num_cycles=fields.integer("num_cycles") or 0,
            min_diffs=fields.integer("min_diffs", minimum=1, maximum=places),
            max_diffs=fields.integer("max_diffs", minimum=1, maximum=places),
            max_workers=fields.integer("max_workers", minimum=1, maximum=places),
            min_workers=fields.integer("min_workers", minimum=1, maximum=places) or 1,
            goal_count=fields.integer("goal_count", minimum=1, maximum=places),
            over_selection=fields.number(
                "over_selection", minimum=1.0, maximum=limits.MAX_OVER_SELECTION
            )
            or 1.3,
            pool_selection=fields.choice("pool_selection", POOL_SELECTIONS, "random"),
            do_not_reuse_workers_until_cycle=(
                fields.integer("do_not_reuse_workers_until_cycle") or 0
            ),
            minimum_upload_speed=fields.number("minimum_upload_speed", maximum=limits.MAX_SPEED),
            minimum_download_speed=fields.number(
                "minimum_download_speed", maximum=limits.MAX_SPEED
            ),
            worker_participation_mode=fields.int_choice("worker_participation_mode", (0, 1)),
            require_invitation=fields.flag("require_invitation"),
            on_expiry=fields.choice("on_expiry", EXPIRY_ACTIONS, "reset"),
            aggregation=Aggregation(fields.choice("aggregation", Aggregation, "fedavg")),
            trim_fraction=_below_half(fields, "trim_fraction", 0.1),
            server_lr=_positive(fields, "server_lr", 1.0, limits.MAX_SERVER_LR),
            max_diff_norm=fields.number("max_diff_norm"),
            clip_diffs=fields.flag("clip_diffs"),
            retry_after=fields.integer("retry_after", minimum=1, maximum=year) or 60,
            availability_ttl=fields.integer("availability_ttl", minimum=1, maximum=year) or 600,
            max_inline_bytes=fields.integer("max_inline_bytes", minimum=1),
            max_num_samples=fields.integer(
                "max_num_samples", minimum=1, maximum=limits.MAX_NUM_SAMPLES
            )
            or limits.DEFAULT_MAX_NUM_SAMPLES,
            max_weight_fraction=_fraction(fields, "max_weight_fraction"),
            fanout_threshold=fields.integer(
                "fanout_threshold", minimum=2, maximum=limits.MAX_FANOUT_THRESHOLD
            )
            or DEFAULT_FANOUT_THRESHOLD,
            authentication=AuthConfig.parse(fields.raw.get("authentication")),
            server_optimizer=_server_optimizer(fields),
            dp=_dp(fields),
            mode=fields.choice("mode", MODES, "sync"),
            buffer_size=fields.integer("buffer_size", minimum=1, maximum=places),
            max_concurrency=fields.integer("max_concurrency", minimum=1, maximum=places),
            max_staleness=fields.integer("max_staleness", minimum=0, maximum=limits.MAX_WORKERS),
            staleness_exponent=_non_negative(fields, "staleness_exponent", 0.5),
        )
        config._check_mode(fields)
        if config.dp is not None:
            config = replace(config, dp=config.dp.for_cohort(config.expected_diffs))
        config._check_consistency()
        return config

    @property
    def expected_diffs(self) -> int:
        """Diffs a synchronous cycle is expected to aggregate: ``max_diffs`` closes it,
        else at most ``max_workers`` report (1 with neither: no cohort to expect)."""
        return self.max_diffs or self.max_workers or 1

    def _check_mode(self, fields: Fields) -> None:
        """Async keys need ``mode: "async"``; async needs its own keys and refuses those
        that mean nothing (or something unsupported) without cycles."""
        if not self.is_async:
            for key in _ASYNC_KEYS:
                if fields.present(key):
                    raise _bad(f"'{key}' applies to 'mode' 'async' only")
            return
        for key in ("buffer_size", "max_concurrency", "cycle_length"):
            if not fields.present(key):
                raise _bad(f"'mode' 'async' needs '{key}'")
        for key, why in _NOT_ASYNC.items():
            if fields.present(key):
                raise _bad(f"'{key}' does not apply with 'mode' 'async': {why}")
        if not self.aggregation.streams:
            raise _bad("'mode' 'async' needs 'aggregation' 'fedavg' or 'mean'")
        assert self.buffer_size is not None
        if self.buffer_size > self.fanout_threshold:
            raise _bad(
                "'buffer_size' must not exceed 'fanout_threshold': buffers are not fanned out"
            )

    def _check_consistency(self) -> None:
        if self.min_diffs and self.max_diffs and self.min_diffs > self.max_diffs:
            raise _bad("'min_diffs' must not exceed 'max_diffs'")
        if self.max_diffs and self.max_workers and self.max_diffs > self.max_workers:
            raise _bad("'max_diffs' must not exceed 'max_workers': the cycle could never fill")
        if self.cycle_length is None and self.max_diffs is None and not self.is_async:
            raise _bad("a cycle needs a way to close: set 'cycle_length' or 'max_diffs'")
        if self.clip_diffs and self.max_diff_norm is None:
            raise _bad("'clip_diffs' needs 'max_diff_norm'")
        if self.max_weight_fraction is not None and self.aggregation is not Aggregation.FEDAVG:
            raise _bad("'max_weight_fraction' applies to 'fedavg' only")
        if self.dp is not None:
            self._check_dp(self.dp)

    def _check_dp(self, dp: DpConfig) -> None:
        """DP-FedAvg averages uniformly in one invocation, so it needs a streaming rule,
        no weight cap and no fan-out (fanned-out groups do not clip or add noise); a budget
        that not even one cycle fits is refused when the population is known."""
        if not self.aggregation.streams:
            raise _bad(
                "'dp' needs 'aggregation' 'fedavg' or 'mean' (the clipped diffs are averaged "
                "uniformly, each weighing 1/m)"
            )
        if self.max_weight_fraction is not None:
            raise _bad("'max_weight_fraction' does not apply with 'dp': every diff weighs 1/m")
        if self.max_workers is None or self.max_workers > self.fanout_threshold:
            raise _bad(
                "'dp' needs 'max_workers' at most 'fanout_threshold': a closing with dp is "
                "not fanned out"
            )
        if dp.sum_noise_multiplier is None:
            raise _bad(
                f"'dp.clipped_count_stddev' ({dp.clipped_count_stddev:g}) leaves no noise for "
                f"the sum: adaptive clipping splits 'noise_multiplier' z as z_delta = "
                f"(z^-2 - (2 sigma_b)^-2)^(-1/2), so it needs 2 * clipped_count_stddev > z "
                f"({dp.noise_multiplier:g}); the default is m / 20 with m = {self.expected_diffs}"
            )
        if dp.max_epsilon is None or dp.population is None:
            return  # with the pool as population, the closing checks it
        first = dp.epsilon_of(spend({}, self.max_workers, dp.population))
        if first > dp.max_epsilon:
            raise _bad(
                f"'dp.max_epsilon' is below one cycle's epsilon ({first:.3g} with up to "
                f"{self.max_workers} of {dp.population} sampled): training could not start"
            )

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        if self.server_optimizer is not None:
            values["server_optimizer"] = self.server_optimizer.to_dict()
        if self.dp is not None:
            values["dp"] = self.dp.to_dict()
        return values

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ServerConfig:
        """Rebuild from ``to_dict`` output (trusted, already validated)."""
        values = dict(raw)
        values["authentication"] = AuthConfig(**values.get("authentication") or {})
        values["aggregation"] = Aggregation(values.get("aggregation", Aggregation.FEDAVG))
        if values.get("server_optimizer") is not None:
            values["server_optimizer"] = _optimizer(values["server_optimizer"])
        if values.get("dp") is not None:
            values["dp"] = DpConfig(**values["dp"])
        return cls(**values)


def _server_optimizer(fields: Fields) -> ServerOptimizer | None:
    """The optimizer replaces ``server_lr`` (its own rates step the model): not both."""
    raw = fields.raw.get("server_optimizer")
    if raw is None:
        return None
    if fields.present("server_lr"):
        raise _bad(
            "'server_lr' does not apply with 'server_optimizer': set the optimizer's own "
            "rate ('eta' or 'server_learning_rate')"
        )
    return _optimizer(raw)


def _optimizer(raw: object) -> ServerOptimizer:
    return ServerOptimizer.parse(_config_fields(raw, "server_optimizer"))


def _dp(fields: Fields) -> DpConfig | None:
    raw = fields.raw.get("dp")
    return None if raw is None else DpConfig.parse(_config_fields(raw, "dp"))


def _below_half(fields: Fields, key: str, default: float) -> float:
    value = fields.number(key)
    if value is None:
        return default
    if value >= 0.5:
        raise _bad(f"'{key}' must be below 0.5")
    return value


def _positive(fields: Fields, key: str, default: float, maximum: float) -> float:
    value = fields.number(key, maximum=maximum)
    if value is None:
        return default
    if value <= 0:
        raise _bad(f"'{key}' must be > 0")
    return value


def _non_negative(fields: Fields, key: str, default: float) -> float:
    value = fields.number(key, maximum=limits.MAX_STALENESS_EXPONENT)
    if value is None:
        return default
    if value < 0:
        raise _bad(f"'{key}' must be >= 0")
    return value


def _fraction(fields: Fields, key: str) -> float | None:
    value = fields.number(key, maximum=1.0)
    if value is not None and value <= 0:
        raise _bad(f"'{key}' must be > 0")
    return value


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """The training recipe sent to devices (PyGrid's ``client_config``).

    Unknown keys are kept and sent to devices unchanged: apps may carry their own.
    """

    name: str
    """Model name; with ``version`` it identifies the process."""
    version: str
    """Model version."""
    raw: Mapping[str, Any]
    """The whole config as sent to devices."""

    @classmethod
    def parse(cls, raw: object) -> ClientConfig:
        fields = _config_fields(raw, "client_config")
        name = fields.raw.get("name")
        version = fields.raw.get("version")
        if not isinstance(name, str) or not name.strip():
            raise _bad("'client_config.name' is required")
        if not isinstance(version, str) or not version.strip():
            raise _bad("'client_config.version' is required (a string)")
        if len(name) > limits.MAX_NAME_LENGTH or len(version) > limits.MAX_VERSION_LENGTH:
            raise _bad(
                f"'client_config.name' or 'version' is too long (at most "
                f"{limits.MAX_NAME_LENGTH} and {limits.MAX_VERSION_LENGTH} characters)"
            )
        fields.integer("batch_size", minimum=1)
        fields.integer("max_updates", minimum=1)
        fields.integer("epochs", minimum=1)
        for key in ("lr", "momentum", "weight_decay", "fedprox_mu"):
            fields.number(key)
        if "loss" in fields.raw:
            fields.choice("loss", LOSSES, LOSSES[0])
        if "optimizer" in fields.raw:
            fields.choice("optimizer", OPTIMIZERS, OPTIMIZERS[0])
        check_storable(fields.raw, "'client_config'", code=INVALID_CONFIG)
        if len(json.dumps(fields.raw)) > limits.MAX_CONFIG_BYTES:
            raise _bad(f"'client_config' is larger than {limits.MAX_CONFIG_BYTES} bytes as JSON")
        return cls(name=name, version=version, raw=dict(fields.raw))
