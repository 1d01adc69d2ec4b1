"""safetensors <-> numpy, the only tensor wire format (never pickle).

numpy-only on purpose: the device-facing HTTP path must not import torch.
"""

from __future__ import annotations

import json
import struct
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
# The same dtypes as safetensors names them in a file's header.
_HEADER_DTYPES = frozenset({"F16", "F32", "F64", "I8", "I16", "I32", "I64", "U8", "BOOL"})
_MAX_HEADER_BYTES = 16 * 1024 * 1024


def _invalid(what: str, problem: str) -> BadRequest:
    return BadRequest(f"{what} is not a valid safetensors file: {problem}", "invalid_safetensors")


def _check_header(data: bytes, what: str) -> None:
    """Refuse dtypes FireGrid does not handle before the parser sees them (bfloat16,
    float8 and the like are not numpy dtypes)."""
    if len(data) < 8:
        raise _invalid(what, "too short")
    (length,) = struct.unpack("<Q", data[:8])
    if length > min(len(data) - 8, _MAX_HEADER_BYTES):
        raise _invalid(what, "header length out of range")
    try:
        header = json.loads(data[8 : 8 + length])
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _invalid(what, "header is not JSON") from None
    if not isinstance(header, dict):
        raise _invalid(what, "header is not an object")
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if dtype not in _HEADER_DTYPES:
            raise BadRequest(
                f"{what}: tensor {name!r} has unsupported dtype {dtype!r}", "invalid_safetensors"
            )


def decode_state(data: bytes, what: str = "tensor file") -> dict[str, npt.NDArray[Any]]:
    """Parse safetensors bytes; ``BadRequest`` if they are not a valid file."""
    _check_header(data, what)
    try:
        state = load(data)
    except (SafetensorError, ValueError, TypeError, OverflowError, KeyError) as exc:
        raise _invalid(what, str(exc)) from exc
    for name, tensor in state.items():
        if str(tensor.dtype) not in ALLOWED_DTYPES:
            raise BadRequest(
                f"{what}: tensor '{name}' has unsupported dtype {tensor.dtype}",
                "invalid_safetensors",
            )
    return state


def encode_state(state: Mapping[str, npt.NDArray[Any]]) -> bytes:
    return save({name: np.ascontiguousarray(t) for name, t in state.items()})
