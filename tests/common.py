"""Test helpers shared by every layer: one tiny model and its plan, base64."""

from __future__ import annotations

import base64
import functools

import numpy as np

State = dict[str, np.ndarray]


@functools.cache
def tiny_model() -> tuple[State, bytes]:
    """A small MLP's state and its torch.export plan (built once per test session)."""
    import torch

    from firegrid.plans import build_plan, state_of

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    return state_of(module), build_plan(module, torch.zeros(2, 8))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
