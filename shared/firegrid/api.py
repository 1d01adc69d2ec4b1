"""The typed edge: every request of the device and operator APIs as a frozen dataclass.

The entry points parse a JSON body or a query string into one of these with the one
validation toolkit (``firegrid.domain.fields``, the same one configs use), so a
service never sees raw JSON: every field is present or None, of its type and within
its bound (``firegrid.domain.limits``). What needs the stored process to judge (a
sample count above ``max_num_samples``, a cycle the process has not reached) is the
service's to check.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from firegrid.domain import limits
from firegrid.domain.acceptance import Speeds
from firegrid.domain.config import ClientConfig, ServerConfig
from firegrid.domain.errors import BadRequest
from firegrid.domain.fields import Fields
from firegrid.domain.push import PushType
from firegrid.domain.variants import check_recipe, requested_variants, served_variant

QUERY = "the query"


def _worker_id(fields: Fields) -> str:
    return fields.text("worker_id", required=True, max_length=limits.MAX_KEY_LENGTH)


def _key(fields: Fields, key: str) -> str | None:
    return fields.text(key, max_length=limits.MAX_KEY_LENGTH)


def _required_key(fields: Fields, key: str) -> str:
    return fields.text(key, required=True, max_length=limits.MAX_KEY_LENGTH)


def _name(fields: Fields, key: str) -> str:
    return fields.text(key, required=True, max_length=limits.MAX_NAME_LENGTH)


def _one_process(fields: Fields, why: str) -> tuple[str, str]:
    """``name`` and ``version``, both required (``why`` tells the operator the reason)."""
    name = _name(fields, "name")
    version = fields.version("version")
    if version is None:
        raise BadRequest(f"'version' is required: {why}", "missing_field")
    return name, version


@dataclass(frozen=True, kw_only=True)
class Authenticate:
    model_name: str
    model_version: str | None
    auth_token: str | None

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Authenticate:
        fields = Fields(raw)
        return cls(
            model_name=_name(fields, "model_name"),
            model_version=fields.version("model_version"),
            auth_token=fields.text("auth_token", max_length=limits.MAX_TOKEN_LENGTH),
        )


@dataclass(frozen=True, kw_only=True)
class CycleRequest:
    worker_id: str
    model: str
    version: str | None
    speeds: Speeds
    start_key: str | None
    """``cycle_start_request_key``: the key an invitation carried."""

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> CycleRequest:
        fields = Fields(raw)

        def speed(key: str) -> float | None:
            return fields.number(key, maximum=limits.MAX_SPEED, strings=True)

        return cls(
            worker_id=_worker_id(fields),
            model=_name(fields, "model"),
            version=fields.version("version"),
            speeds=Speeds(ping=speed("ping"), download=speed("download"), upload=speed("upload")),
            start_key=_key(fields, "cycle_start_request_key"),
        )


@dataclass(frozen=True, kw_only=True)
class Keyed:
    """A worker and the request key of its place in a cycle."""

    worker_id: str
    request_key: str

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Keyed:
        fields = Fields(raw)
        return cls(worker_id=_worker_id(fields), request_key=_required_key(fields, "request_key"))


@dataclass(frozen=True, kw_only=True)
class ModelDownload(Keyed):
    model_id: str

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> ModelDownload:
        fields = Fields(raw, what=QUERY)
        return cls(
            worker_id=_worker_id(fields),
            request_key=_required_key(fields, "request_key"),
            model_id=_required_key(fields, "model_id"),
        )


@dataclass(frozen=True, kw_only=True)
class PlanDownload(Keyed):
    plan_id: str
    variant: str
    """``receive_operations_as``: a name of ``domain.variants.VARIANTS``; ``torch`` by default."""

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> PlanDownload:
        fields = Fields(raw, what=QUERY)
        return cls(
            worker_id=_worker_id(fields),
            request_key=_required_key(fields, "request_key"),
            plan_id=_required_key(fields, "plan_id"),
            variant=served_variant(_key(fields, "receive_operations_as")),
        )


@dataclass(frozen=True, kw_only=True)
class Report(Keyed):
    num_samples: int
    diff: bytes | None
    """The safetensors diff sent inline; None when ``uploaded``."""

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Report:
        fields = Fields(raw)
        num_samples = fields.integer("num_samples", "train_num_samples", required=True, minimum=1)
        uploaded = fields.flag("uploaded")
        return cls(
            worker_id=_worker_id(fields),
            request_key=_required_key(fields, "request_key"),
            num_samples=num_samples,
            diff=None if uploaded else fields.base64("diff"),
        )

    @property
    def uploaded(self) -> bool:
        return self.diff is None


_FCM_TOKEN = re.compile(r"[\x21-\x7e]+", re.ASCII)
"""FCM registration tokens are printable ASCII without spaces."""


@dataclass(frozen=True, kw_only=True)
class RegisterToken:
    worker_id: str
    token: str
    model: str | None
    """Must name the worker's process when given."""
    ram_gb: float | None
    cpu_cores: int | None

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> RegisterToken:
        fields = Fields(raw)
        token = fields.text(
            "fcm_token",
            "fcm_device_token",
            required=True,
            max_length=limits.MAX_FCM_TOKEN_LENGTH,
            pattern=_FCM_TOKEN,
        )
        fields.version("version")  # sent by PyGrid clients; bounded, though the worker says it
        return cls(
            worker_id=_worker_id(fields),
            token=token,
            model=fields.text("model", max_length=limits.MAX_NAME_LENGTH),
            ram_gb=fields.number("ram_gb", maximum=limits.MAX_RAM_GB),
            cpu_cores=fields.whole_number("cpu_cores", maximum=limits.MAX_CPU_CORES),
        )


@dataclass(frozen=True, kw_only=True)
class WorkerStatus:
    worker_id: str
    available: bool

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> WorkerStatus:
        fields = Fields(raw)
        worker_id = _worker_id(fields)
        if not isinstance(fields.raw.get("available"), bool):
            raise BadRequest("'available' must be true or false", "invalid_field")
        return cls(worker_id=worker_id, available=fields.flag("available"))


@dataclass(frozen=True, kw_only=True)
class SpeedTest:
    worker_id: str
    ping: bool
    """``is_ping``: answer at once, with no sample."""

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> SpeedTest:
        fields = Fields(raw, what=QUERY)
        worker_id = _worker_id(fields)
        _required_key(fields, "random")  # PyGrid's cache buster
        return cls(worker_id=worker_id, ping=fields.raw.get("is_ping") in ("1", "true", "True"))


@dataclass(frozen=True, kw_only=True)
class MetricEntry:
    cycle_id: int
    accuracy: float
    num_samples: int
    set: str
    extras: Mapping[str, float]
    """``loss`` and the timings that were sent."""

    SETS = ("test", "train")
    EXTRAS = ("loss", "train_time_s", "download_time_s", "upload_time_s", "eval_time_s")

    @classmethod
    def parse(cls, raw: object) -> MetricEntry:
        fields = Fields(raw, what="each entry of 'stats'")
        extras = {key: fields.number(key, maximum=limits.MAX_METRIC_VALUE) for key in cls.EXTRAS}
        return cls(
            cycle_id=fields.integer("cycle_id", required=True, minimum=1),
            accuracy=fields.number("accuracy", required=True, maximum=1.0),
            num_samples=fields.integer("num_samples", required=True, minimum=1),
            set=fields.choice("set", cls.SETS, "test"),
            extras={key: value for key, value in extras.items() if value is not None},
        )


@dataclass(frozen=True, kw_only=True)
class Metrics:
    worker_id: str
    stats: tuple[MetricEntry, ...]

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Metrics:
        fields = Fields(raw)
        worker_id = _worker_id(fields)
        _key(fields, "request_key")  # the fork's shape; bounded, unused
        stats = fields.raw.get("stats")
        if not isinstance(stats, list) or not 1 <= len(stats) <= limits.MAX_STATS_PER_POST:
            raise BadRequest(
                f"'stats' must be a list of 1 to {limits.MAX_STATS_PER_POST} objects",
                "invalid_field",
            )
        return cls(worker_id=worker_id, stats=tuple(MetricEntry.parse(entry) for entry in stats))


_PLAN_NAME = re.compile(r"[A-Za-z0-9_]{1,64}", re.ASCII)
TRAINING_PLAN = "training_plan"


def _plan_names(names: tuple[object, ...], shape: str) -> tuple[str, ...]:
    """At most ``MAX_PLANS`` distinct plan names, ``training_plan`` among them (``shape``:
    how ``plans`` carries them, for the message)."""
    checked = tuple(name for name in names if isinstance(name, str) and _PLAN_NAME.fullmatch(name))
    if checked != names:
        bad = next(name for name in names if name not in checked)
        raise BadRequest(
            f"plan name {str(bad)[:80]!r} must be 1-64 ASCII letters, digits and _",
            "invalid_plan",
        )
    if TRAINING_PLAN not in checked:
        raise BadRequest(f"'plans' must be {shape} with a 'training_plan'", "invalid_plan")
    if len(checked) > limits.MAX_PLANS or len(set(checked)) != len(checked):
        raise BadRequest(
            f"'plans' must name 1 to {limits.MAX_PLANS} plans, once each", "invalid_plan"
        )
    return checked


def _named_plans(plans: object) -> tuple[str, ...]:
    """The plan names of a list (plans uploaded, not carried inline)."""
    if not isinstance(plans, list):
        raise BadRequest("'plans' must be a list of plan names", "invalid_plan")
    return _plan_names(tuple(plans), "a list of names")


@dataclass(frozen=True, kw_only=True)
class HostTraining:
    model: bytes | None
    """The safetensors of checkpoint 1; None when ``uploaded`` (PUT to the URLs of
    ``hosting-upload-urls``, for a model too large to carry in the body)."""
    plans: Mapping[str, bytes]
    """Plan name -> ``torch.export`` program carried inline; empty when uploaded."""
    plan_names: tuple[str, ...]
    """The plans hosted, ``training_plan`` among them."""
    variants: tuple[str, ...]
    """Variants besides ``torch`` that hosting builds from each plan (``domain.variants``)."""
    client_config: ClientConfig
    server_config: ServerConfig

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> HostTraining:
        fields = Fields(raw)
        client_config = ClientConfig.parse(fields.raw.get("client_config"))
        server_config = ServerConfig.parse(fields.raw.get("server_config"))
        plans = fields.raw.get("plans")
        variants = requested_variants(fields.raw.get("variants"))
        check_recipe(variants, client_config.raw)
        if fields.flag("uploaded"):
            if fields.present("model"):
                raise BadRequest("send either 'model' or 'uploaded', not both", "invalid_field")
            return cls(
                model=None,
                plans={},
                plan_names=_named_plans(plans),
                variants=variants,
                client_config=client_config,
                server_config=server_config,
            )
        model = fields.base64("model")
        if not isinstance(plans, Mapping):
            raise BadRequest("'plans' must be an object with a 'training_plan'", "invalid_plan")
        names = _plan_names(tuple(plans), "an object")
        encoded = Fields(plans, prefix="plans.")
        return cls(
            model=model,
            plans={name: encoded.base64(name) for name in names},
            plan_names=names,
            variants=variants,
            client_config=client_config,
            server_config=server_config,
        )

    @property
    def uploaded(self) -> bool:
        return self.model is None


@dataclass(frozen=True, kw_only=True)
class HostingUploadUrls:
    """Where to PUT a model and its plans before ``host-training`` with ``uploaded``."""

    name: str
    version: str
    plan_names: tuple[str, ...]

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> HostingUploadUrls:
        fields = Fields(raw)
        name, version = _one_process(fields, "uploads are for one process")
        return cls(name=name, version=version, plan_names=_named_plans(fields.raw.get("plans")))


@dataclass(frozen=True, kw_only=True)
class ProcessQuery:
    """A process named by an operator: ``name`` and, optionally, ``version``."""

    name: str
    version: str | None

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> ProcessQuery:
        fields = Fields(raw, what=QUERY)
        return cls(name=_name(fields, "name"), version=fields.version("version"))


def _query_count(fields: Fields, key: str, *, default: int, maximum: int) -> int:
    """A positive count in the query string (a listing's ``limit``), at most ``maximum``."""
    value = fields.digits(key)
    if value is None:
        return default
    if not 1 <= value <= maximum:
        raise fields.bad(key, f"must be from 1 to {maximum}")
    return value


@dataclass(frozen=True, kw_only=True)
class ProcessListing:
    """``admin/processes``: the newest processes, at most ``limit``."""

    limit: int

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> ProcessListing:
        fields = Fields(raw, what=QUERY)
        limit = _query_count(fields, "limit", default=50, maximum=limits.MAX_PROCESSES_LISTED)
        return cls(limit=limit)


@dataclass(frozen=True, kw_only=True)
class CycleHistoryQuery(ProcessQuery):
    """``admin/cycles``: a process's latest cycles, at most ``limit``."""

    limit: int

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> CycleHistoryQuery:
        fields = Fields(raw, what=QUERY)
        return cls(
            name=_name(fields, "name"),
            version=fields.version("version"),
            limit=_query_count(fields, "limit", default=20, maximum=limits.MAX_CYCLES_LISTED),
        )


@dataclass(frozen=True, kw_only=True)
class RoundStatsQuery(ProcessQuery):
    """``admin/round-stats``: summaries of the completed rounds after round ``after``."""

    after: int

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> RoundStatsQuery:
        fields = Fields(raw, what=QUERY)
        return cls(
            name=_name(fields, "name"),
            version=fields.version("version"),
            after=fields.digits("after") or 0,
        )


@dataclass(frozen=True, kw_only=True)
class DeleteProcess:
    """One process, named by both ``name`` and ``version``: a deletion never guesses."""

    name: str
    version: str

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> DeleteProcess:
        name, version = _one_process(Fields(raw), "a deletion names one process")
        return cls(name=name, version=version)


@dataclass(frozen=True, kw_only=True)
class CheckpointQuery(ProcessQuery):
    number: int | None
    """None: the latest checkpoint."""

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> CheckpointQuery:
        fields = Fields(raw, what=QUERY)
        latest = fields.raw.get("checkpoint") in (None, "", "latest")
        return cls(
            name=_name(fields, "name"),
            version=fields.version("version"),
            number=None if latest else fields.digits("checkpoint"),
        )


@dataclass(frozen=True, kw_only=True)
class MetricsQuery(ProcessQuery):
    csv: bool
    """``format=csv``: LEAF's CSV layout."""

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> MetricsQuery:
        fields = Fields(raw, what=QUERY)
        return cls(
            name=_name(fields, "name"),
            version=fields.version("version"),
            csv=fields.text("format", max_length=16) == "csv",
        )


@dataclass(frozen=True, kw_only=True)
class Push(ProcessQuery):
    type: PushType

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Push:
        fields = Fields(raw)
        if not fields.present("type"):
            raise BadRequest("'type' is required", "missing_field")
        push_type = PushType(fields.choice("type", (t.value for t in PushType), ""))
        return cls(name=_name(fields, "name"), version=fields.version("version"), type=push_type)
