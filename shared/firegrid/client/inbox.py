"""Where simulated devices receive their pushes: the local stack's FCM endpoint.

A phone gets pushes from FCM; the simulator's devices read what the local FCM
endpoint recorded for their tokens. Only the local stack has one: against a
deployment, simulate in polling mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import requests


@dataclass(frozen=True)
class Push:
    token: str
    data: dict[str, str]


class LocalFcmInbox:
    def __init__(self, fcm_url: str) -> None:
        self._url = fcm_url.rstrip("/") + "/_fcm/messages"
        self._http = requests.Session()
        self._seen = 0

    def poll(self) -> list[Push]:
        """Pushes recorded since the last poll, oldest first."""
        reply = self._http.get(self._url, params={"since": self._seen}, timeout=10)
        reply.raise_for_status()
        messages = reply.json()["messages"]
        if messages:
            self._seen = max(int(m["seq"]) for m in messages)
        return [Push(token=m["token"], data=dict(m["data"])) for m in messages]
