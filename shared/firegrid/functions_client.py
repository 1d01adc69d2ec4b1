"""Calls to one of FireGrid's HTTP functions, shared by the device SDK (``client/``)
and the operator client: JSON error answers become ``ServerError``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests


class ServerError(Exception):
    """A 4xx/5xx answer, with the server's message and machine code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class FunctionClient:
    """Calls to one FireGrid HTTP function; error answers become ``ServerError``."""

    def __init__(self, base_url: str, function: str, *, timeout_s: float) -> None:
        self._url = f"{base_url.rstrip('/')}/{function}"
        self._http = requests.Session()
        self._timeout = timeout_s

    def _call(self, method: str, path: str, **kw: Any) -> requests.Response:
        response = self._http.request(method, f"{self._url}/{path}", timeout=self._timeout, **kw)
        if response.status_code >= 400:
            try:
                body = response.json()
                code, message = str(body["code"]), str(body["error"])
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", response.text[:200]
            raise ServerError(response.status_code, code, message)
        return response

    def _put(self, grant: Mapping[str, Any], data: bytes) -> None:
        """PUT ``data`` to the signed URL of an upload grant (``report-upload-url``,
        ``hosting-upload-urls``)."""
        response = self._http.request(
            grant["method"],
            grant["upload_url"],
            data=data,
            # The URL is signed with these (a content-length range among them).
            headers=grant.get("headers") or {"Content-Type": grant["content_type"]},
            timeout=self._timeout,
        )
        if response.status_code >= 400:
            raise ServerError(response.status_code, "upload_failed", response.text[:200])
