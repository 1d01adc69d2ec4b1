"""The ports a service call runs against."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from firegrid.domain.privacy import noise_generator
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
    noise: Callable[[], np.random.Generator] = noise_generator
    """A fresh generator for differential privacy's noise: cryptographically seeded;
    tests inject a fixed seed."""
