"""The composition root: builds every adapter once, lazily (nothing at import time).

The functions ask ``context()`` for the Context their services run against; the
Google clients and the firebase-admin apps behind it are built on first use, and
local-only plumbing (the stack's FCM endpoint) is imported only when configured.
"""

from __future__ import annotations

import functools
import random
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from firegrid.services.context import Context
from firegrid.settings import Settings

T = TypeVar("T")


def once(factory: Callable[[], T]) -> Callable[[], T]:
    """``factory``'s result, built by the first caller only, even with threads racing."""
    lock = threading.Lock()
    built: list[T] = []

    def get() -> T:
        with lock:
            if not built:
                built.append(factory())
            return built[0]

    return get


def messaging_app(settings: Settings) -> Any:
    """firebase-admin's messaging app: FCM itself, or the local stack's endpoint."""
    if settings.fcm_url:
        from firegrid.local.fcm_app import local_messaging_app  # not deployed

        return local_messaging_app(settings.project_id, settings.fcm_url)
    from firegrid.adapters.fcm import messaging_app as production_app

    return production_app(settings.project_id)


@functools.cache
def context() -> Context:
    import google.cloud.storage as storage
    from google.cloud import firestore

    from firegrid.adapters.auth import JwtVerifier
    from firegrid.adapters.clock import SystemClock
    from firegrid.adapters.fcm import FcmNotifier
    from firegrid.adapters.firebase import auth_app
    from firegrid.adapters.firestore_repo import FirestoreRepository
    from firegrid.adapters.storage import GcsBlobStore

    settings = Settings.from_env()
    return Context(
        repo=FirestoreRepository(firestore.Client(project=settings.project_id)),
        blobs=GcsBlobStore(
            storage.Client(project=settings.project_id),
            settings.bucket,
            emulator_host=settings.storage_emulator_host,
        ),
        verifier=JwtVerifier(
            firebase_app=once(lambda: auth_app(settings.project_id)),
            allow_http_endpoint=settings.local_stack,
        ),
        clock=SystemClock(),
        settings=settings,
        notifier=FcmNotifier(once(lambda: messaging_app(settings))),
        rng=random.Random(settings.seed),
    )
