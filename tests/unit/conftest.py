"""Fixtures of the service tests: a tiny model and a Context on the in-memory fakes."""

from __future__ import annotations

import pytest

from firegrid.services.context import Context
from tests.common import State, tiny_model
from tests.fakes import make_context


@pytest.fixture(scope="session")
def tiny() -> tuple[State, bytes]:
    return tiny_model()


@pytest.fixture
def ctx() -> Context:
    return make_context()
