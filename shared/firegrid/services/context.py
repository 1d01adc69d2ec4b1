"""The ports a service call runs against."""

from __future__ import annotations

import random
from dataclasses import dataclass

from firegrid.ports import BlobStore, Clock, Notifier, Repository, TokenVerifier
from firegrid.settings import Settings


@dataclass(frozen=True, kw_only=True)
class Context:
    repo: Repository
    blobs: BlobStore
    verifier: TokenVerifier
    clock: Clock
    settings: Settings
    notifier: Notifier
    rng: random.Random
    """Worker sampling's randomness, injected so a seed reproduces a draw."""
