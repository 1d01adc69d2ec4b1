"""The firebase-admin app, initialised once, on first use."""

from __future__ import annotations

import functools

import firebase_admin

from firegrid.settings import Settings


@functools.cache
def app() -> firebase_admin.App:
    return firebase_admin.initialize_app(options={"projectId": Settings.from_env().project_id})
