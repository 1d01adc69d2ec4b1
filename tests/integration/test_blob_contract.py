"""The BlobStore port's contract, run against the in-memory fake and against the Cloud
Storage emulator (fake-gcs-server) through the real adapter."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from firegrid.domain.errors import NotFound
from firegrid.ports import BlobStore
from tests.fakes import FakeBlobStore

pytestmark = pytest.mark.integration

DATA = bytes(range(256)) * 4


@pytest.fixture(params=["fake", "gcs"])
def store(request: pytest.FixtureRequest) -> Iterator[BlobStore]:
    if request.param == "fake":
        yield FakeBlobStore()
        return
    import google.cloud.storage as storage

    from firegrid.adapters.storage import GcsBlobStore

    stack = request.getfixturevalue("stack_env")
    yield GcsBlobStore(
        storage.Client(project=stack.project_id),
        stack.bucket,
        emulator_host=stack.storage_host,
    )


@pytest.fixture
def name(store: BlobStore) -> Iterator[str]:
    object_name = f"contract/{secrets.token_hex(6)}"
    store.put(object_name, DATA)
    yield object_name
    store.delete(object_name)


@pytest.fixture
def root() -> str:
    """A prefix of this test's own in the stack's bucket."""
    return f"contract/{secrets.token_hex(6)}/"


def test_put_if_absent_writes_once(store: BlobStore) -> None:
    object_name = f"contract/{secrets.token_hex(6)}"
    assert store.put(object_name, b"first", if_absent=True)
    assert not store.put(object_name, b"second", if_absent=True)
    assert store.get(object_name) == b"first"
    store.delete(object_name)
    with pytest.raises(NotFound):
        store.get(object_name)


@pytest.mark.parametrize(("start", "stop"), [(0, 8), (8, 300), (1000, 1024), (5, 6)])
def test_a_ranged_read_returns_exactly_those_bytes(store: BlobStore, name: str, start, stop):
    assert store.get_range(name, start, stop) == DATA[start:stop]


def test_a_range_past_the_end_is_cut_short(store: BlobStore, name: str) -> None:
    assert store.get_range(name, 1000, 5000) == DATA[1000:]
    assert store.get_range(name, len(DATA), len(DATA) + 10) == b""
    assert store.get_range(name, 3, 3) == b""


def test_a_ranged_read_of_a_missing_object_is_not_found(store: BlobStore) -> None:
    with pytest.raises(NotFound) as missing:
        store.get_range("contract/absent", 0, 8)
    assert missing.value.code == "missing_object"


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
