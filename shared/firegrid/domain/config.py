"""Process configuration: PyGrid's ``client_config`` and ``server_config``, validated.

Configs arrive as JSON objects; they are parsed once, at hosting, into frozen
dataclasses so the rest of the code never reads a dict with ``.get()``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from firegrid.domain.errors import BadRequest

AGGREGATIONS = ("fedavg", "mean", "median", "trimmed_mean")
POOL_SELECTIONS = ("random", "iterate")
EXPIRY_ACTIONS = ("reset", "extend")
LOSSES = ("cross_entropy", "mse", "bce_with_logits")
OPTIMIZERS = ("sgd", "adam")
# Keys PyGrid configs carry that FireGrid accepts and ignores.
_LEGACY_SERVER_KEYS = frozenset({"iterative_plan"})


def _bad(message: str) -> BadRequest:
    return BadRequest(message, "invalid_config")


def _number(raw: Mapping[str, Any], key: str, *, minimum: float = 0.0) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(f"'{key}' must be a number")
    if value < minimum:
        raise _bad(f"'{key}' must be >= {minimum:g}")
    return float(value)


def _integer(raw: Mapping[str, Any], key: str, *, minimum: int = 0) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{key}' must be an integer")
    if value < minimum:
        raise _bad(f"'{key}' must be >= {minimum}")
    return value


def _choice(raw: Mapping[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    value = raw.get(key, default)
    if value not in choices:
        raise _bad(f"'{key}' must be one of {', '.join(choices)}")
    return str(value)


def _flag(raw: Mapping[str, Any], key: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise _bad(f"'{key}' must be true or false")
    return value


@dataclass(frozen=True, kw_only=True)
class AuthConfig:
    """How a process authenticates workers (PyGrid's ``authentication`` block)."""

    secret: str | None = None
    """HS256 shared secret."""
    pub_key: str | None = None
    """PEM public key for RS256/ES256 tokens."""
    endpoint: str | None = None
    """Third-party URL that vouches for a token (PyGrid's ``endpoint``)."""
    firebase: bool = False
    """Accept Firebase Auth ID tokens."""
    audience: str | None = None
    """Required ``aud`` claim, if set."""
    issuer: str | None = None
    """Required ``iss`` claim, if set."""

    @property
    def required(self) -> bool:
        return bool(self.secret or self.pub_key or self.endpoint or self.firebase)

    @classmethod
    def parse(cls, raw: object) -> AuthConfig:
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise _bad("'authentication' must be an object")
        unknown = set(raw) - {"secret", "pub_key", "endpoint", "firebase", "audience", "issuer"}
        if unknown:
            raise _bad(f"unknown authentication keys: {', '.join(sorted(unknown))}")
        strings = {}
        for key in ("secret", "pub_key", "endpoint", "audience", "issuer"):
            value = raw.get(key)
            if value is not None and (not isinstance(value, str) or not value):
                raise _bad(f"'authentication.{key}' must be a non-empty string")
            strings[key] = value
        endpoint = strings["endpoint"]
        if endpoint is not None and not endpoint.startswith(("https://", "http://")):
            raise _bad("'authentication.endpoint' must be an http(s) URL")
        return cls(firebase=_flag(raw, "firebase"), **strings)


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
    aggregation: str = "fedavg"
    """``fedavg`` (LEAF), ``mean`` (PyGrid), ``median`` or ``trimmed_mean``."""
    trim_fraction: float = 0.1
    """Fraction cut from each end by ``trimmed_mean``."""
    server_lr: float = 1.0
    """Step applied to the averaged diff."""
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
    authentication: AuthConfig = field(default_factory=AuthConfig)
    """How workers authenticate."""

    @property
    def requires_speed_test(self) -> bool:
        return self.minimum_upload_speed is not None or self.minimum_download_speed is not None

    @classmethod
    def parse(cls, raw: object) -> ServerConfig:
        if not isinstance(raw, Mapping):
            raise _bad("'server_config' must be an object")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(raw) - known - _LEGACY_SERVER_KEYS
        if unknown:
            raise _bad(f"unknown server_config keys: {', '.join(sorted(unknown))}")
        if "cycle_length" not in raw:
            raise _bad("'cycle_length' is required (null for no deadline)")
        if "num_cycles" not in raw:
            raise _bad("'num_cycles' is required (0 for unlimited)")
        cycle_length = _number(raw, "cycle_length")
        if cycle_length is not None and cycle_length <= 0:
            raise _bad("'cycle_length' must be > 0")
        num_cycles = _integer(raw, "num_cycles")
        config = cls(
            cycle_length=cycle_length,
            num_cycles=num_cycles if num_cycles is not None else 0,
            min_diffs=_integer(raw, "min_diffs", minimum=1),
            max_diffs=_integer(raw, "max_diffs", minimum=1),
            max_workers=_integer(raw, "max_workers", minimum=1),
            min_workers=_integer(raw, "min_workers", minimum=1) or 1,
            goal_count=_integer(raw, "goal_count", minimum=1),
            over_selection=_number(raw, "over_selection", minimum=1.0) or 1.3,
            pool_selection=_choice(raw, "pool_selection", POOL_SELECTIONS, "random"),
            do_not_reuse_workers_until_cycle=(
                _integer(raw, "do_not_reuse_workers_until_cycle") or 0
            ),
            minimum_upload_speed=_number(raw, "minimum_upload_speed"),
            minimum_download_speed=_number(raw, "minimum_download_speed"),
            worker_participation_mode=_choice_int(raw, "worker_participation_mode", (0, 1)),
            require_invitation=_flag(raw, "require_invitation"),
            on_expiry=_choice(raw, "on_expiry", EXPIRY_ACTIONS, "reset"),
            aggregation=_choice(raw, "aggregation", AGGREGATIONS, "fedavg"),
            trim_fraction=_fraction(raw, "trim_fraction", 0.1),
            server_lr=_positive(raw, "server_lr", 1.0),
            max_diff_norm=_number(raw, "max_diff_norm"),
            clip_diffs=_flag(raw, "clip_diffs"),
            retry_after=_integer(raw, "retry_after", minimum=1) or 60,
            availability_ttl=_integer(raw, "availability_ttl", minimum=1) or 600,
            max_inline_bytes=_integer(raw, "max_inline_bytes", minimum=1),
            authentication=AuthConfig.parse(raw.get("authentication")),
        )
        config._check_consistency()
        return config

    def _check_consistency(self) -> None:
        if self.min_diffs and self.max_diffs and self.min_diffs > self.max_diffs:
            raise _bad("'min_diffs' must not exceed 'max_diffs'")
        if self.max_diffs and self.max_workers and self.max_diffs > self.max_workers:
            raise _bad("'max_diffs' must not exceed 'max_workers': the cycle could never fill")
        if self.cycle_length is None and self.max_diffs is None:
            raise _bad("a cycle needs a way to close: set 'cycle_length' or 'max_diffs'")
        if self.clip_diffs and self.max_diff_norm is None:
            raise _bad("'clip_diffs' needs 'max_diff_norm'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ServerConfig:
        """Rebuild from ``to_dict`` output (trusted, already validated)."""
        values = dict(raw)
        values["authentication"] = AuthConfig(**values.get("authentication") or {})
        return cls(**values)


def _choice_int(raw: Mapping[str, Any], key: str, choices: tuple[int, ...]) -> int:
    value = raw.get(key, choices[0])
    if isinstance(value, bool) or value not in choices:
        raise _bad(f"'{key}' must be one of {', '.join(map(str, choices))}")
    return int(value)


def _fraction(raw: Mapping[str, Any], key: str, default: float) -> float:
    value = _number(raw, key)
    if value is None:
        return default
    if value >= 0.5:
        raise _bad(f"'{key}' must be below 0.5")
    return value


def _positive(raw: Mapping[str, Any], key: str, default: float) -> float:
    value = _number(raw, key)
    if value is None:
        return default
    if value <= 0:
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
        if not isinstance(raw, Mapping):
            raise _bad("'client_config' must be an object")
        name, version = raw.get("name"), raw.get("version")
        if not isinstance(name, str) or not name.strip():
            raise _bad("'client_config.name' is required")
        if not isinstance(version, str) or not version.strip():
            raise _bad("'client_config.version' is required (a string)")
        if len(name) > 200 or len(version) > 100:
            raise _bad("'client_config.name' or 'version' is too long")
        _integer(raw, "batch_size", minimum=1)
        _integer(raw, "max_updates", minimum=1)
        _integer(raw, "epochs", minimum=1)
        for key in ("lr", "momentum", "weight_decay", "fedprox_mu"):
            _number(raw, key)
        if "loss" in raw:
            _choice(raw, "loss", LOSSES, LOSSES[0])
        if "optimizer" in raw:
            _choice(raw, "optimizer", OPTIMIZERS, OPTIMIZERS[0])
        return cls(name=name, version=version, raw=dict(raw))
