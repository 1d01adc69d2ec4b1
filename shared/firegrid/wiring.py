"""Builds the production Context once, lazily (nothing is built at import time)."""

from __future__ import annotations

import functools
import os
import random

from firegrid.services.context import Context
from firegrid.settings import STORAGE_EMULATOR_ENV, Settings


@functools.cache
def context() -> Context:
    import google.cloud.storage as storage
    from google.cloud import firestore

    from firegrid.adapters.auth import JwtVerifier
    from firegrid.adapters.clock import SystemClock
    from firegrid.adapters.fcm import FcmNotifier
    from firegrid.adapters.firestore_repo import FirestoreRepository
    from firegrid.adapters.storage import GcsBlobStore

    settings = Settings.from_env()
    return Context(
        repo=FirestoreRepository(firestore.Client(project=settings.project_id)),
        blobs=GcsBlobStore(
            storage.Client(project=settings.project_id),
            settings.bucket,
            emulator_host=os.environ.get(STORAGE_EMULATOR_ENV) or None,
        ),
        verifier=JwtVerifier(allow_http_endpoint=settings.local_stack),
        clock=SystemClock(),
        settings=settings,
        notifier=FcmNotifier(),
        rng=random.Random(settings.seed),
    )
