"""The BlobStore port on Cloud Storage."""

from __future__ import annotations

import google.cloud.storage as storage
from google.api_core import exceptions as gexc

from firegrid.domain.errors import NotFound


class GcsBlobStore:
    def __init__(self, client: storage.Client, bucket: str) -> None:
        self._bucket = client.bucket(bucket)

    def put(self, name: str, data: bytes, *, if_absent: bool = False) -> bool:
        blob = self._bucket.blob(name)
        try:
            blob.upload_from_string(
                data,
                content_type="application/octet-stream",
                if_generation_match=0 if if_absent else None,
            )
        except gexc.PreconditionFailed:
            return False
        return True

    def get(self, name: str) -> bytes:
        try:
            return bytes(self._bucket.blob(name).download_as_bytes())
        except gexc.NotFound:
            raise NotFound(f"Object {name} not found", "missing_object") from None

    def delete_prefix(self, prefix: str) -> None:
        for blob in self._bucket.list_blobs(prefix=prefix):
            blob.delete()
