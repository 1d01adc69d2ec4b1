"""The operator API over HTTP (function ``admin``): host or delete a process, read its
status, checkpoints and metrics, push, tick. Every operator verb of the CLI is built on it."""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from typing import Any

from firegrid.functions_client import FunctionClient

INLINE_HOSTING_BYTES = 16 * 2**20
"""Above this (model and plans together) ``host`` uploads them through signed URLs: in
base64 they would not fit the 32 MiB request body."""


class OperatorClient(FunctionClient):
    """The operator API (function ``admin``); ``token`` is the local stack's bearer token."""

    def __init__(
        self, base_url: str, token: str | None = None, *, timeout_s: float = 120.0
    ) -> None:
        super().__init__(base_url, "admin", timeout_s=timeout_s)
        if token:
            self._http.headers["Authorization"] = f"Bearer {token}"

    def host(
        self,
        model: bytes,
        plans: Mapping[str, bytes],
        client_config: Mapping[str, Any],
        server_config: Mapping[str, Any],
        *,
        variants: tuple[str, ...] = (),
        inline_limit_bytes: int = INLINE_HOSTING_BYTES,
    ) -> str:
        """Host a model; above ``inline_limit_bytes`` the model and plans are uploaded first
        (``hosting-upload-urls``) and ``host-training`` names them. ``variants``: the plan
        variants hosting builds besides ``torch`` (``layers`` for browsers)."""
        body: dict[str, Any] = {
            "client_config": dict(client_config),
            "server_config": dict(server_config),
        }
        if variants:
            body["variants"] = list(variants)
        if len(model) + sum(map(len, plans.values())) <= inline_limit_bytes:
            body["model"] = base64.b64encode(model).decode()
            body["plans"] = {name: base64.b64encode(data).decode() for name, data in plans.items()}
        else:
            self._upload(model, plans, client_config["name"], client_config["version"])
            body |= {"uploaded": True, "plans": list(plans)}
        return str(self._call("POST", "host-training", json=body).json()["process_id"])

    def _upload(self, model: bytes, plans: Mapping[str, bytes], name: str, version: str) -> None:
        body = {"name": name, "version": version, "plans": list(plans)}
        grants = self._call("POST", "hosting-upload-urls", json=body).json()
        self._put(grants["model"], model)
        for plan_name, data in plans.items():
            self._put(grants["plans"][plan_name], data)

    def delete_process(self, name: str, version: str) -> dict[str, Any]:
        """Delete the process and everything it owns; what was removed (counts)."""
        body = {"name": name, "version": version}
        return dict(self._call("POST", "delete-process", json=body).json())

    def status(self, name: str, version: str | None = None) -> dict[str, Any]:
        return dict(self._call("GET", "status", params=_named(name, version)).json())

    def checkpoint(self, name: str, version: str | None = None, number: int | None = None) -> bytes:
        params = _named(name, version) | {"checkpoint": str(number) if number else "latest"}
        return self._call("GET", "retrieve-model", params=params).content

    def wait_for_checkpoint(
        self, name: str, version: str | None, number: int, timeout_s: float = 120.0
    ) -> bytes:
        deadline = time.monotonic() + timeout_s
        while self.status(name, version)["latest_checkpoint"] < number:
            if time.monotonic() > deadline:
                raise TimeoutError(f"checkpoint {number} did not appear within {timeout_s:.0f}s")
            time.sleep(0.2)
        return self.checkpoint(name, version, number)

    def training_metrics(self, name: str, version: str | None = None) -> list[dict[str, Any]]:
        rows = self._call("GET", "training-metrics", params=_named(name, version)).json()["metrics"]
        return list(rows)

    def training_metrics_csv(self, name: str, version: str | None = None) -> str:
        """LEAF's CSV layout, as the server renders it."""
        params = _named(name, version) | {"format": "csv"}
        return self._call("GET", "training-metrics", params=params).text

    def push(self, name: str, version: str | None, push_type: str) -> dict[str, Any]:
        body = _named(name, version) | {"type": push_type}
        return dict(self._call("POST", "push", json=body).json()["push"])

    def tick(self) -> dict[str, Any]:
        return dict(self._call("POST", "tick").json())


def _named(name: str, version: str | None) -> dict[str, str]:
    return {"name": name} | ({"version": version} if version else {})
