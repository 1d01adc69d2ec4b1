"""The firebase-admin app that verifies Firebase Auth ID tokens."""

from __future__ import annotations

import firebase_admin

AUTH_APP_NAME = "firegrid-auth"


def auth_app(project_id: str) -> firebase_admin.App:
    """An app on Application Default Credentials that checks ID tokens of ``project_id``;
    built by the composition root (``firegrid.wiring``), once, on first use."""
    try:
        return firebase_admin.get_app(AUTH_APP_NAME)
    except ValueError:
        return firebase_admin.initialize_app(options={"projectId": project_id}, name=AUTH_APP_NAME)
