"""The ports a service call runs against."""

from __future__ import annotations

from dataclasses import dataclass

from firegrid.ports import BlobStore, Clock, Repository, TokenVerifier
from firegrid.settings import Settings


@dataclass(frozen=True, kw_only=True)
class Context:
    repo: Repository
    blobs: BlobStore
    verifier: TokenVerifier
    clock: Clock
    settings: Settings
