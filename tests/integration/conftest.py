"""Fixtures that run the real local stack (emulators, functions, router)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from firegrid.local.stack import StackInfo, start_stack, stop_stack, wipe


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    """One stack for the whole session, without a scheduler: tests fire ticks themselves."""
    directory = tmp_path_factory.mktemp("firegrid")
    info = start_stack(directory, tick_seconds=0)
    try:
        yield info
    finally:
        stop_stack(directory)


@pytest.fixture
def clean_stack(stack: StackInfo) -> StackInfo:
    """The session stack with no documents and an empty bucket."""
    wipe(stack)
    return stack


@pytest.fixture
def stack_env(stack: StackInfo, monkeypatch: pytest.MonkeyPatch) -> StackInfo:
    """The session stack, with this process's Google clients pointed at its emulators."""
    for key, value in stack.client_env().items():
        monkeypatch.setenv(key, value)
    return stack
