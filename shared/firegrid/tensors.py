"""safetensors <-> numpy, the only tensor wire format (never pickle).

numpy-only on purpose: the device-facing HTTP path must not import torch.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
_HEADER_DTYPES = {
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
    "U8": "uint8",
    "BOOL": "bool",
}
_MAX_HEADER_BYTES = 16 * 1024 * 1024
HEADER_PROBE_BYTES = 64 * 1024
"""Bytes read first for a file's header (one read for any model of a few hundred tensors)."""


def _invalid(what: str, problem: str) -> BadRequest:
    return BadRequest(f"{what} is not a valid safetensors file: {problem}", "invalid_safetensors")


def _header_length(data: bytes, available: int, what: str) -> int:
    if len(data) < 8:
        raise _invalid(what, "too short")
    (length,) = struct.unpack("<Q", data[:8])
    if length > min(available - 8, _MAX_HEADER_BYTES):
        raise _invalid(what, "header length out of range")
    return int(length)


def _parse_header(raw: bytes, what: str) -> dict[str, Any]:
    """The header's tensor entries; FireGrid's dtypes only, checked before the parser sees
    them (bfloat16, float8 and the like are not numpy dtypes)."""
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _invalid(what, "header is not JSON") from None
    if not isinstance(header, dict):
        raise _invalid(what, "header is not an object")
    header.pop("__metadata__", None)
    for name, entry in header.items():
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if dtype not in _HEADER_DTYPES:
            raise BadRequest(
                f"{what}: tensor {name!r} has unsupported dtype {dtype!r}", "invalid_safetensors"
            )
    return header


def _check_header(data: bytes, what: str) -> None:
    length = _header_length(data, len(data), what)
    _parse_header(data[8 : 8 + length], what)


@dataclass(frozen=True)
class TensorLayout:
    """Where one tensor's bytes lie in a safetensors file (little-endian, C order)."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    """Offset of its first byte in the file."""

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def end(self) -> int:
        return self.begin + self.size * self.itemsize


def read_layout(read: Callable[[int, int], bytes], what: str) -> dict[str, TensorLayout]:
    """Each tensor's dtype, shape and place from a file's header alone, read through
    ``read(start, stop)`` (a ranged read), so a slice can be read without the rest."""
    probe = read(0, HEADER_PROBE_BYTES)
    length = _header_length(probe, 8 + _MAX_HEADER_BYTES, what)
    raw = probe[8 : 8 + length]
    if len(raw) < length:
        raw += read(len(probe), 8 + length)
    if len(raw) != length:
        raise _invalid(what, "header cut short")
    layout = {}
    for name, entry in _parse_header(raw, what).items():
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not _are_sizes(shape) or not _are_sizes(offsets) or len(offsets) != 2:
            raise _invalid(what, f"tensor {name!r} has no valid shape and offsets")
        dtype = _HEADER_DTYPES[entry["dtype"]]
        if offsets[1] - offsets[0] != math.prod(shape) * np.dtype(dtype).itemsize:
            raise _invalid(what, f"tensor {name!r} does not span its shape")
        layout[name] = TensorLayout(dtype, tuple(shape), 8 + length + offsets[0])
    return layout


def _are_sizes(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value
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


def view_state(data: bytes, what: str = "tensor file") -> dict[str, npt.NDArray[Any]]:
    """``decode_state`` without a copy: read-only arrays over ``data`` itself (they keep
    it alive). Checked as safetensors checks a file: the tensors lie back to back from
    the header's end to the file's end. Offsets that are not a multiple of the itemsize
    (not written by safetensors, which pads its header) give unaligned views: slower,
    still correct."""
    header_end = 8 + _header_length(data, len(data), what)
    layout = read_layout(lambda start, stop: data[start : min(stop, header_end)], what)
    position = header_end
    for name, tensor in sorted(layout.items(), key=lambda item: item[1].begin):
        if tensor.begin != position:
            raise _invalid(what, f"tensor {name!r} does not start where the one before ends")
        position = tensor.end
    if position != len(data):
        raise _invalid(what, "its tensors do not end where the file does")
    return {
        name: np.frombuffer(
            data, dtype=np.dtype(t.dtype).newbyteorder("<"), count=t.size, offset=t.begin
        ).reshape(t.shape)
        for name, t in layout.items()
    }


def encode_state(state: Mapping[str, npt.NDArray[Any]]) -> bytes:
    # Not np.ascontiguousarray alone: it turns a 0-d tensor (batch norm's
    # num_batches_tracked) into shape [1], which then no longer fits the model.
    return save({name: np.ascontiguousarray(t).reshape(np.shape(t)) for name, t in state.items()})
