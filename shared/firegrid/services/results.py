"""What the use cases answer: domain results that ``firegrid.wire`` renders for HTTP."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from firegrid.domain.cycle import Cycle
from firegrid.domain.model import Assignment, Process
from firegrid.domain.rounds import RoundStat


@dataclass(frozen=True)
class Done:
    """The request did what it asked; nothing more to say."""


@dataclass(frozen=True)
class Empty:
    """An answer with no content (PyGrid's ``{}``: a speed-test ping or upload)."""


@dataclass(frozen=True, kw_only=True)
class Authenticated:
    worker_id: str
    requires_speed_test: bool


@dataclass(frozen=True, kw_only=True)
class Offer:
    """An accepted cycle-request: the worker's place and the key that proves it."""

    process: Process
    cycle: Cycle
    assignment: Assignment
    request_key: str
    deadline: datetime | None
    checkpoint: int | None = None
    """Async: the checkpoint the worker trains from (None: a sync cycle's)."""


@dataclass(frozen=True)
class SignedUrl:
    """A payload served from Cloud Storage: the device fetches ``url`` (HTTP 307)."""

    url: str


@dataclass(frozen=True, kw_only=True)
class UploadGrant:
    """Where to PUT one payload too large to send inline (a diff, a hosted model or
    plan), and how."""

    url: str
    expires_at: datetime
    headers: Mapping[str, str]
    """Headers the URL is signed with: the request must carry them."""
    max_bytes: int


@dataclass(frozen=True, kw_only=True)
class HostingUploads:
    """Where the operator PUTs the model and each plan before hosting them."""

    model: UploadGrant
    plans: Mapping[str, UploadGrant]


@dataclass(frozen=True)
class Stored:
    """Metrics rows stored."""

    count: int


@dataclass(frozen=True)
class Hosted:
    process_id: str


@dataclass(frozen=True, kw_only=True)
class Deleted:
    """What ``delete-process`` removed (a second run counts only what the first left)."""

    process_id: str
    documents: Mapping[str, int]
    """Collection name -> documents deleted."""
    objects: int
    """Cloud Storage objects deleted."""


@dataclass(frozen=True, kw_only=True)
class PoolReport:
    workers: int
    registered: int
    """Workers with a push token."""
    available: int
    slow: int
    invited: int
    """Invited into the current cycle's epoch."""
    assigned: int
    last_sends: Sequence[Mapping[str, Any]]


@dataclass(frozen=True, kw_only=True)
class ProcessReport:
    """``admin/status``: a process, its current cycle and its pool."""

    process: Process
    cycle: Cycle | None
    assigned: int
    reported: int
    pool: PoolReport
    previous: Cycle | None = None
    """The cycle before the current one: what its closing produced."""
    epsilon: float | None = None
    """``dp``: the privacy spent by the cycles that made the latest checkpoint."""
    clip_norm: float | None = None
    """``dp``: the clip norm the next closing uses (adaptive: the latest closing's choice)."""
    seconds_left: float | None = None
    """Until the current cycle's deadline (None without one)."""
    buffering: Buffering | None = None
    """Async: the buffer and the places."""


@dataclass(frozen=True, kw_only=True)
class Buffering:
    """``admin/status`` of an async process."""

    places_taken: int
    """Devices training now (of ``max_concurrency``)."""
    mean_staleness: float | None
    """Of the reports aggregated into the latest checkpoint (None before one)."""


@dataclass(frozen=True)
class Processes:
    """``admin/processes``: the newest processes."""

    processes: Sequence[Process]


@dataclass(frozen=True, kw_only=True)
class CycleHistory:
    """``admin/cycles``: a process's latest cycles, newest first."""

    process: Process
    cycles: Sequence[Cycle]


@dataclass(frozen=True, kw_only=True)
class RoundsReport:
    """``admin/round-stats``: one page of round summaries."""

    stats: Sequence[RoundStat]
    through: int
    """The last round accounted for: ask again with ``after`` = this for the next page."""
    completed: int
    """Cycles completed so far: the pages end at this round."""


@dataclass(frozen=True, kw_only=True)
class MetricsTable:
    rows: Sequence[Mapping[str, Any]]
    csv: bool = False
    """Rendered in LEAF's CSV layout instead of JSON."""


@dataclass(frozen=True)
class PushSent:
    record: Mapping[str, Any] = field(default_factory=dict)
    """What the push log recorded (empty when this key was sent already)."""
