"""Checking a reported diff against the checkpoint it was trained from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from firegrid.domain.errors import BadRequest

Tensor = npt.NDArray[Any]


@dataclass(frozen=True)
class TensorSpec:
    dtype: str
    shape: tuple[int, ...]

    def as_dict(self) -> dict[str, object]:
        return {"dtype": self.dtype, "shape": list(self.shape)}


Schema = dict[str, TensorSpec]


def schema_of(state: Mapping[str, Tensor]) -> Schema:
    return {
        name: TensorSpec(str(t.dtype), tuple(int(d) for d in t.shape)) for name, t in state.items()
    }


def payload_bytes(schema: Schema) -> int:
    """Bytes of tensor data in a safetensors file of this schema (its header is small)."""
    total = 0
    for spec in schema.values():
        count = 1
        for dim in spec.shape:
            count *= dim
        total += count * np.dtype(spec.dtype).itemsize
    return total


def max_file_bytes(schema: Schema) -> int:
    """The largest safetensors file of this schema: its tensor data, plus a header bound
    (names JSON-escaped, 20 digits per number, a little metadata and padding)."""
    header = 8 + 1024
    for name, spec in schema.items():
        header += 6 * len(name.encode()) + 64 + 21 * (len(spec.shape) + 2)
    return payload_bytes(schema) + header


def schema_from_dict(raw: Mapping[str, Mapping[str, Any]]) -> Schema:
    return {
        name: TensorSpec(str(s["dtype"]), tuple(int(d) for d in s["shape"]))
        for name, s in raw.items()
    }


def schema_to_dict(schema: Schema) -> dict[str, dict[str, object]]:
    return {name: spec.as_dict() for name, spec in schema.items()}


class InvalidDiff(BadRequest):
    default_code = "invalid_diff"


def check_specs(specs: Mapping[str, TensorSpec], schema: Schema) -> None:
    """A diff's tensor names, dtypes and shapes are the model's; ``InvalidDiff`` if not.
    ``specs`` may come from the decoded tensors or from a file's header alone."""
    missing = sorted(set(schema) - set(specs))
    extra = sorted(set(specs) - set(schema))
    if missing or extra:
        raise InvalidDiff(
            f"diff keys do not match the model: missing {missing}, unexpected {extra}"
        )
    for name, expected in schema.items():
        spec = specs[name]
        if spec.dtype != expected.dtype:
            raise InvalidDiff(f"diff '{name}' has dtype {spec.dtype}, expected {expected.dtype}")
        if spec.shape != expected.shape:
            raise InvalidDiff(
                f"diff '{name}' has shape {list(spec.shape)}, expected {list(expected.shape)}"
            )


def check_finite(values: Tensor, name: str) -> None:
    """A diff (or any part of one) with NaN or Inf would poison the checkpoint.

    One sum first, in the values' own dtype: NaN and Inf survive any addition, so a
    finite sum means finite values, at the cost of one read and no allocation. Only a
    sum that is not finite (a NaN, an Inf, or finite values overflowing it) has each
    value checked. Integers and booleans are always finite.
    """
    if values.dtype.kind != "f":
        return
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(values, axis=None)
    if not np.isfinite(total) and not np.isfinite(values).all():
        raise InvalidDiff(f"diff '{name}' contains NaN or Inf")


def validate_diff(
    diff: Mapping[str, Tensor],
    schema: Schema,
    *,
    max_norm: float | None = None,
    clip: bool = False,
) -> dict[str, Tensor]:
    """The diff, checked (and clipped if asked); ``InvalidDiff`` says what is wrong."""
    check_specs(schema_of(diff), schema)
    for name in schema:
        check_finite(diff[name], name)
    if max_norm is None:
        return dict(diff)
    squares = (np.square(diff[name].astype(np.float64, copy=False)).sum() for name in schema)
    norm = float(sum(squares)) ** 0.5
    if norm <= max_norm:
        return dict(diff)
    if not clip:
        raise InvalidDiff(f"diff L2 norm {norm:.4g} exceeds max_diff_norm {max_norm:g}")
    scale = max_norm / norm
    return {name: (t * scale).astype(t.dtype) for name, t in diff.items()}
