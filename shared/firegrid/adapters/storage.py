"""The BlobStore port on Cloud Storage, with v4 signed URLs for large payloads."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import google.cloud.storage as storage
from google.api_core import exceptions as gexc

from firegrid.domain.errors import NotFound

OCTET_STREAM = "application/octet-stream"


class GcsBlobStore:
    def __init__(
        self, client: storage.Client, bucket: str, *, emulator_host: str | None = None
    ) -> None:
        self._bucket = client.bucket(bucket)
        self._emulator_host = emulator_host

    def put(self, name: str, data: bytes, *, if_absent: bool = False) -> bool:
        blob = self._bucket.blob(name)
        try:
            blob.upload_from_string(
                data,
                content_type=OCTET_STREAM,
                if_generation_match=0 if if_absent else None,
            )
        except gexc.PreconditionFailed:
            return False
        return True

    def get(self, name: str, *, max_bytes: int | None = None) -> bytes:
        blob = self._bucket.blob(name)
        try:
            if max_bytes is not None:
                blob.reload()
                if blob.size is not None and blob.size > max_bytes:
                    raise NotFound(f"Object {name} is larger than {max_bytes} bytes", "too_large")
            return bytes(blob.download_as_bytes())
        except gexc.NotFound:
            raise NotFound(f"Object {name} not found", "missing_object") from None

    def get_range(self, name: str, start: int, stop: int) -> bytes:
        if stop <= start:
            return b""
        try:  # HTTP ranges are inclusive
            return bytes(self._bucket.blob(name).download_as_bytes(start=start, end=stop - 1))
        except gexc.NotFound:
            raise NotFound(f"Object {name} not found", "missing_object") from None
        except gexc.RequestRangeNotSatisfiable:
            return b""  # the range starts past the end

    def delete(self, name: str) -> None:
        with contextlib.suppress(gexc.NotFound):
            self._bucket.blob(name).delete()

    def delete_prefix(self, prefix: str) -> int:
        deleted = 0
        for blob in self._bucket.list_blobs(prefix=prefix):  # paged: memory stays bounded
            try:
                blob.delete()
            except gexc.NotFound:
                continue  # deleted meanwhile by someone else
            deleted += 1
        return deleted

    def signed_url(
        self,
        name: str,
        *,
        method: str,
        expires_in: timedelta,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """A v4 signed URL to GET or PUT one object (PUT bodies are octet-stream)."""
        blob = self._bucket.blob(name)
        signed_headers = {k: v for k, v in (headers or {}).items() if k.lower() != "content-type"}
        options: dict[str, Any] = {
            "version": "v4",
            "expiration": expires_in,
            "method": method,
            "content_type": OCTET_STREAM if method == "PUT" else None,
            "headers": signed_headers or None,
        }
        if self._emulator_host:
            options |= {"credentials": _local_signer(), "api_access_endpoint": self._emulator_host}
        else:
            options |= _production_signer()
        return str(blob.generate_signed_url(**options))


@functools.cache
def _local_signer() -> Any:
    """A throwaway key: the emulator accepts any signature, but the client must sign."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google.oauth2 import service_account

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
        {
            "type": "service_account",
            "client_email": "firegrid-local@demo-firegrid.iam.gserviceaccount.com",
            "private_key": pem,
            "token_uri": "http://127.0.0.1/token",
            "project_id": "demo-firegrid",
        }
    )


def _production_signer() -> dict[str, Any]:
    """Cloud Functions' credentials hold no key: sign through IAM (signBlob) instead."""
    import google.auth
    import google.auth.transport.requests

    credentials: Any = google.auth.default()[0]
    if hasattr(credentials, "sign_bytes") and getattr(credentials, "signer", None):
        return {"credentials": credentials}
    credentials.refresh(google.auth.transport.requests.Request())
    return {
        "service_account_email": credentials.service_account_email,
        "access_token": credentials.token,
    }
