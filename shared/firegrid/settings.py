"""Deployment settings read from the environment, once.

Names of the environment variables the functions read. The local stack sets
them for its functions process; in production they come from the deployment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PROJECT_ENV = "GOOGLE_CLOUD_PROJECT"
BUCKET_ENV = "FIREGRID_BUCKET"
ADMIN_TOKEN_ENV = "FIREGRID_ADMIN_TOKEN"
FIRESTORE_EMULATOR_ENV = "FIRESTORE_EMULATOR_HOST"
STORAGE_EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
INLINE_LIMIT_ENV = "FIREGRID_INLINE_LIMIT_BYTES"
SPEED_TEST_ENV = "FIREGRID_SPEED_TEST_BYTES"
FCM_URL_ENV = "FIREGRID_FCM_URL"
"""Base URL of a local FCM endpoint (``http://127.0.0.1:P``); unset in production."""
ADMIN_AUTH_ENV = "FIREGRID_ADMIN_AUTH"
"""``iam``: the admin and tick functions sit behind IAM (the deploy sets it)."""
LOCAL_STACK_ENV = "FIREGRID_LOCAL_STACK"
"""Set by the local stack: plain-http third-party auth endpoints are allowed there only."""
CLOSING_LEASE_ENV = "FIREGRID_CLOSING_LEASE_SECONDS"
"""How long an aggregator's lease lasts unless renewed (default 60; the tests shorten it)."""
REDRIVE_GRACE_ENV = "FIREGRID_REDRIVE_GRACE_SECONDS"
"""How long a closing cycle waits for its trigger before the tick aggregates it (default 60)."""
SEED_ENV = "FIREGRID_SEED"
"""Seeds worker sampling (reproducible invitation draws); unset = fresh randomness."""


MAX_SPEED_TEST_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class Settings:
    project_id: str
    """Google Cloud project id (``demo-*`` locally)."""
    bucket: str
    """Cloud Storage bucket for checkpoints, plans and diffs."""
    admin_token: str | None
    """Bearer token the ``admin`` function requires; None in production (IAM guards it)."""
    admin_iam: bool = False
    """The admin and tick functions are deployed behind IAM; with neither this nor a token,
    every admin call is refused."""
    local_stack: bool = False
    """Running in the local emulator stack (allows http:// auth endpoints on loopback)."""
    max_body_bytes: int = 32 * 1024 * 1024
    """Largest request body accepted (Cloud Functions' own limit is 32 MiB)."""
    inline_limit_bytes: int = 16 * 1024 * 1024
    """Larger models and plans are served by a signed URL (307), larger diffs uploaded."""
    max_upload_bytes: int = 1024 * 1024 * 1024
    """Largest diff accepted through ``report-upload-url``."""
    speed_test_bytes: int = 1024 * 1024
    """Size of the download sample served by ``speed-test`` (at most ``MAX_SPEED_TEST_BYTES``)."""
    seed: int | None = None
    """Seed of the worker-sampling generator (``FIREGRID_SEED``)."""
    fcm_url: str | None = None
    """The local stack's FCM endpoint (``FIREGRID_FCM_URL``); None: FCM itself."""
    storage_emulator_host: str | None = None
    """The Cloud Storage emulator (``STORAGE_EMULATOR_HOST``); None: Cloud Storage itself."""
    closing_lease_s: float = 60.0
    """An aggregator's lease, renewed every third of it while it works: a cycle whose
    aggregator died is re-driven this long after its last renewal (plus a tick)."""
    redrive_grace_s: float = 60.0
    """How long a closing cycle no aggregator took up waits for its (late) trigger
    before the tick aggregates it."""

    @classmethod
    def from_env(cls) -> Settings:
        project_id = os.environ.get(PROJECT_ENV, "demo-firegrid")
        speed_test_bytes = int(os.environ.get(SPEED_TEST_ENV, 1024 * 1024))
        if not 0 < speed_test_bytes <= MAX_SPEED_TEST_BYTES:
            raise ValueError(f"{SPEED_TEST_ENV} must be between 1 and {MAX_SPEED_TEST_BYTES}")
        return cls(
            project_id=project_id,
            bucket=os.environ.get(BUCKET_ENV, f"{project_id}-firegrid"),
            admin_token=os.environ.get(ADMIN_TOKEN_ENV) or None,
            admin_iam=os.environ.get(ADMIN_AUTH_ENV) == "iam",
            local_stack=os.environ.get(LOCAL_STACK_ENV) == "1",
            inline_limit_bytes=int(os.environ.get(INLINE_LIMIT_ENV, 16 * 1024 * 1024)),
            speed_test_bytes=speed_test_bytes,
            seed=int(os.environ[SEED_ENV]) if os.environ.get(SEED_ENV) else None,
            fcm_url=os.environ.get(FCM_URL_ENV) or None,
            storage_emulator_host=os.environ.get(STORAGE_EMULATOR_ENV) or None,
            closing_lease_s=_seconds(CLOSING_LEASE_ENV, 60.0, least=1.0),
            redrive_grace_s=_seconds(REDRIVE_GRACE_ENV, 60.0, least=0.0),
        )


def _seconds(name: str, default: float, *, least: float) -> float:
    value = float(os.environ.get(name) or default)
    if not value >= least:
        raise ValueError(f"{name} must be at least {least:g} seconds")
    return value
