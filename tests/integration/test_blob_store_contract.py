"""The BlobStore port's contract, run against the in-memory fake and against the Cloud
Storage emulator (each Cloud Storage run under a prefix of its own in the stack's bucket)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from firegrid.domain.errors import NotFound
from firegrid.ports import BlobStore
from tests.fakes import FakeBlobStore

pytestmark = pytest.mark.integration


@pytest.fixture(params=["fake", "gcs"])
def store(request: pytest.FixtureRequest) -> Iterator[BlobStore]:
    if request.param == "fake":
        yield FakeBlobStore()
        return
    from google.cloud import storage

    from firegrid.adapters.storage import GcsBlobStore

    stack = request.getfixturevalue("stack_env")
    yield GcsBlobStore(
        storage.Client(project=stack.project_id), stack.bucket, emulator_host=stack.storage_host
    )


@pytest.fixture
def root() -> str:
    return f"contract/{uuid.uuid4().hex}/"


def test_delete_prefix_deletes_exactly_the_objects_under_it_and_counts_them(
    store: BlobStore, root: str
) -> None:
    inside = [f"{root}processes/p1/checkpoints/{i}.safetensors" for i in range(3)]
    outside = [f"{root}processes/p10/checkpoints/1.safetensors", f"{root}other"]
    for name in inside + outside:
        store.put(name, b"x")

    assert store.delete_prefix(f"{root}processes/p1/") == 3
    assert store.delete_prefix(f"{root}processes/p1/") == 0  # a second run is harmless
    for name in inside:
        with pytest.raises(NotFound):
            store.get(name)
    assert [store.get(name) for name in outside] == [b"x", b"x"]
