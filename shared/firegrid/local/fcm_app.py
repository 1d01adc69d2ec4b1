"""firebase-admin's messaging pointed at the local stack's FCM endpoint (never deployed).

The endpoint (``firegrid.local.fcm_endpoint``) speaks FCM's v1 send API, so the
real adapter code sends to it; this module supplies the two things production
does not need: the endpoint's URL and a credential that asks nobody for a token.
"""

from __future__ import annotations

from typing import Any

import firebase_admin
import google.auth.credentials
import google.oauth2.credentials
from firebase_admin import credentials, messaging

from firegrid.adapters.fcm import APP_NAME, messaging_app


class _LocalToken(google.oauth2.credentials.Credentials):
    """A fixed bearer token with nothing to refresh.

    The plain class would raise ``RefreshError`` when the endpoint answers
    401 (the authorised session refreshes on 401), failing a whole batch.
    """

    def refresh(self, request: Any) -> None:
        pass


class OfflineCredential(credentials.Base):  # type: ignore[misc]
    """firebase-admin credential for the local endpoint: no network, no key."""

    def get_credential(self) -> google.auth.credentials.Credentials:
        return _LocalToken(token="local")  # type: ignore[no-untyped-call]


def local_messaging_app(
    project_id: str, fcm_url: str, *, name: str = APP_NAME
) -> firebase_admin.App:
    """A messaging app whose FCM service sends to ``fcm_url``."""
    # The service copies this class attribute when it is created, in messaging_app.
    messaging._MessagingService.FCM_URL = f"{fcm_url.rstrip('/')}/v1/projects/{{0}}/messages:send"
    return messaging_app(project_id, credential=OfflineCredential(), url=fcm_url, name=name)
