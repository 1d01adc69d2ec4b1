"""safetensors <-> numpy, the only tensor wire format (never pickle).

numpy-only on purpose: the device-facing HTTP path must not import torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError
from safetensors.numpy import load, save

from firegrid.domain.errors import BadRequest

ALLOWED_DTYPES = frozenset(
    {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}
)


def decode_state(data: bytes, what: str = "tensor file") -> dict[str, npt.NDArray[Any]]:
    """Parse safetensors bytes; ``BadRequest`` if they are not a valid file."""
    try:
        state = load(data)
    except (SafetensorError, ValueError, TypeError, OverflowError) as exc:
        raise BadRequest(
            f"{what} is not a valid safetensors file: {exc}", "invalid_safetensors"
        ) from exc
    for name, tensor in state.items():
        if str(tensor.dtype) not in ALLOWED_DTYPES:
            raise BadRequest(
                f"{what}: tensor '{name}' has unsupported dtype {tensor.dtype}",
                "invalid_safetensors",
            )
    return state


def encode_state(state: Mapping[str, npt.NDArray[Any]]) -> bytes:
    return save({name: np.ascontiguousarray(t) for name, t in state.items()})
