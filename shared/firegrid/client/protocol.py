"""A device's view of the FireGrid protocol: HTTP calls and typed errors.

What a phone app does, in Python. It talks HTTP only and imports nothing of the
server.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from firegrid.domain.variants import TORCH
from firegrid.functions_client import FunctionClient, ServerError

__all__ = ["Assignment", "DeviceClient", "ServerError"]


@dataclass(frozen=True, kw_only=True)
class Assignment:
    """An accepted cycle-request."""

    worker_id: str
    request_key: str
    cycle_id: int
    model_id: str
    plans: dict[str, str]
    client_config: dict[str, Any]


class DeviceClient(FunctionClient):
    """The device API (function ``model-centric``).

    Downloads above the server's inline limit arrive by redirect (followed);
    diffs above ``inline_limit_bytes`` go by signed upload URL, then ``report``.
    """

    def __init__(
        self, base_url: str, *, timeout_s: float = 60.0, inline_limit_bytes: int = 16 * 2**20
    ) -> None:
        super().__init__(base_url, "model-centric", timeout_s=timeout_s)
        self.inline_limit_bytes = inline_limit_bytes

    def authenticate(self, model: str, version: str | None = None, token: str | None = None) -> str:
        body: dict[str, Any] = {"model_name": model}
        if version is not None:
            body["model_version"] = version
        if token is not None:
            body["auth_token"] = token
        return str(self._call("POST", "authenticate", json=body).json()["worker_id"])

    def cycle_request(
        self, worker_id: str, model: str, version: str | None = None, **extra: Any
    ) -> Assignment | dict[str, Any]:
        """An Assignment when accepted, else the rejection (``timeout`` absent = training over)."""
        body = {"worker_id": worker_id, "model": model, "version": version} | extra
        reply: dict[str, Any] = self._call("POST", "cycle-request", json=body).json()
        if reply["status"] != "accepted":
            return reply
        return Assignment(
            worker_id=worker_id,
            request_key=reply["request_key"],
            cycle_id=int(reply["cycle_id"]),
            model_id=reply["model_id"],
            plans=dict(reply["plans"]),
            client_config=dict(reply["client_config"]),
        )

    def get_model(self, assignment: Assignment) -> bytes:
        params = {
            "worker_id": assignment.worker_id,
            "request_key": assignment.request_key,
            "model_id": assignment.model_id,
        }
        return self._call("GET", "get-model", params=params).content

    def get_plan(
        self, assignment: Assignment, name: str = "training_plan", variant: str = TORCH
    ) -> bytes:
        """The plan in ``variant`` (a name of ``domain.variants.VARIANTS``)."""
        params = {
            "worker_id": assignment.worker_id,
            "request_key": assignment.request_key,
            "plan_id": assignment.plans[name],
            "receive_operations_as": variant,
        }
        return self._call("GET", "get-plan", params=params).content

    def report(self, assignment: Assignment, diff: bytes, num_samples: int) -> None:
        body: dict[str, Any] = {
            "worker_id": assignment.worker_id,
            "request_key": assignment.request_key,
            "num_samples": num_samples,
        }
        if len(diff) <= self.inline_limit_bytes:
            body["diff"] = base64.b64encode(diff).decode()
        else:
            self._upload(assignment, diff)
            body["uploaded"] = True
        self._call("POST", "report", json=body)

    def _upload(self, assignment: Assignment, diff: bytes) -> None:
        grant = self._call(
            "POST",
            "report-upload-url",
            json={"worker_id": assignment.worker_id, "request_key": assignment.request_key},
        ).json()
        self._put(grant, diff)

    def register_token(self, worker_id: str, fcm_token: str, model: str, **profile: Any) -> None:
        """Join the pool: pushes reach this device at ``fcm_token``."""
        body = {"worker_id": worker_id, "fcm_token": fcm_token, "model": model} | profile
        self._call("POST", "register-token", json=body)

    def worker_status(self, worker_id: str, available: bool) -> None:
        self._call("POST", "worker-status", json={"worker_id": worker_id, "available": available})

    def post_metrics(self, worker_id: str, stats: list[dict[str, Any]]) -> None:
        self._call("POST", "metrics", json={"worker_id": worker_id, "stats": stats})
