"""Payloads too large for a request or response body move through Cloud Storage by
short-lived signed URLs: devices download models and plans and upload diffs this way,
operators upload the model and plans they host."""

from __future__ import annotations

from datetime import timedelta

from firegrid.domain.errors import NotFound, PayloadTooLarge
from firegrid.domain.model import Process
from firegrid.services.context import Context
from firegrid.services.results import SignedUrl, UploadGrant

SIGNED_URL_TTL = timedelta(minutes=15)
CONTENT_LENGTH_RANGE = "x-goog-content-length-range"
OCTET_STREAM = "application/octet-stream"


def download(ctx: Context, process: Process, name: str, size: int) -> bytes | SignedUrl:
    """Small payloads inline; larger ones by a short-lived signed URL (HTTP 307), so the
    function never holds a large model, however many download it at once."""
    if size <= _inline_limit(ctx, process):
        return ctx.blobs.get(name)
    return SignedUrl(ctx.blobs.signed_url(name, method="GET", expires_in=SIGNED_URL_TTL))


def _inline_limit(ctx: Context, process: Process) -> int:
    lowered = process.server_config.max_inline_bytes
    return min(ctx.settings.inline_limit_bytes, lowered or ctx.settings.inline_limit_bytes)


def upload_grant(ctx: Context, name: str, max_bytes: int) -> UploadGrant:
    """A signed PUT URL for object ``name``; Cloud Storage itself refuses a body above
    ``max_bytes`` (the content-length range is signed with the URL)."""
    headers = {"Content-Type": OCTET_STREAM, CONTENT_LENGTH_RANGE: f"0,{max_bytes}"}
    url = ctx.blobs.signed_url(name, method="PUT", expires_in=SIGNED_URL_TTL, headers=headers)
    return UploadGrant(
        url=url,
        expires_at=ctx.clock.now() + SIGNED_URL_TTL,
        headers=headers,
        max_bytes=max_bytes,
    )


def read_upload(ctx: Context, name: str, max_bytes: int, what: str) -> bytes | None:
    """The uploaded object, None if nothing was uploaded; 413 above ``max_bytes`` (read
    only after its size is checked, so an oversized object is never held)."""
    try:
        return ctx.blobs.get(name, max_bytes=max_bytes)
    except NotFound as missing:
        if missing.code == "too_large":
            raise PayloadTooLarge(f"The uploaded {what} is larger than {max_bytes} bytes") from None
        return None
