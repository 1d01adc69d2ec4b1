"""The records FireGrid keeps: process, worker, assignment (cycle is in cycle.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from firegrid.domain.config import ServerConfig
from firegrid.domain.cycle import ProcessStatus
from firegrid.domain.diffs import Schema


@dataclass(frozen=True, kw_only=True)
class Process:
    """A hosted model being trained (PyGrid's FL process)."""

    id: str
    name: str
    version: str
    client_config: Mapping[str, Any]
    server_config: ServerConfig
    status: ProcessStatus
    current_cycle: int
    latest_checkpoint: int
    key_secret: str
    """Server-only secret that request keys are derived from."""
    schema: Schema
    """Names, dtypes and shapes of the model's tensors."""
    plans: Mapping[str, str] = field(default_factory=dict)
    """Plan name -> plan id."""
    plan_sizes: Mapping[str, int] = field(default_factory=dict)
    """Plan name -> bytes (to choose between inline and a signed URL)."""
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class Worker:
    id: str
    process_id: str
    subject: str
    """Hash of the token subject the id is derived from (or a random nonce)."""
    created_at: datetime
    last_cycle: int | None = None
    """The last cycle this worker reported a diff into."""
    fcm_token: str | None = None
    """Where pushes reach the device; None until registered (or once FCM drops it)."""
    available: bool = False
    """The device said it can train (``register-token`` / ``worker-status``)."""
    available_until: datetime | None = None
    """Availability lapses unless confirmed again by then."""
    ram_gb: float | None = None
    cpu_cores: int | None = None
    slow: bool = False
    """Flagged from the device profile (less than 2 GB of RAM, as the fork did)."""
    last_invited_at: datetime | None = None

    def in_pool(self, now: datetime) -> bool:
        """Reachable and currently available."""
        return (
            self.fcm_token is not None
            and self.available
            and self.available_until is not None
            and self.available_until > now
        )


@dataclass(frozen=True, kw_only=True)
class Assignment:
    """A worker's place in a cycle."""

    worker_id: str
    seq: int
    epoch: int
    assigned_at: datetime
    slot: int | None = None
    reported_at: datetime | None = None
    num_samples: int | None = None
    diff_object: str | None = None

    @property
    def reported(self) -> bool:
        return self.reported_at is not None


@dataclass(frozen=True, kw_only=True)
class CycleSummary:
    """What closing a cycle produced."""

    num_diffs: int
    total_samples: int
    checkpoint_out: int
    closed_at: datetime


@dataclass(frozen=True)
class Redirect:
    """A payload served from elsewhere: the device follows ``url`` (HTTP 307)."""

    url: str
