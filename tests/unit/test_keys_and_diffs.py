import json
import struct

import numpy as np
import pytest

from firegrid.domain.diffs import (
    InvalidDiff,
    check_finite,
    max_file_bytes,
    schema_of,
    validate_diff,
)
from firegrid.domain.errors import BadRequest, Unauthorized
from firegrid.domain.keys import (
    WORKER_ID,
    KeyScope,
    derive_worker_id,
    issue_request_key,
    pseudonym,
    redact,
    verify_request_key,
)
from firegrid.tensors import decode_state, encode_state, view_state


def test_request_key_round_trip_and_tampering() -> None:
    key = issue_request_key("secret", "p", "w", KeyScope(3, 1))
    assert verify_request_key("secret", "p", "w", key) == KeyScope(3, 1)
    for forged in (
        key.replace("3.1.", "4.1.", 1),
        issue_request_key("other", "p", "w", KeyScope(3, 1)),
        "garbage",
        "1.2",
    ):
        with pytest.raises(Unauthorized, match="Invalid request key!"):
            verify_request_key("secret", "p", "w", forged)
    with pytest.raises(Unauthorized):
        verify_request_key("secret", "p", "another-worker", key)


MODEL = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}


def test_valid_diff_passes() -> None:
    diff = {"w": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32)}
    assert validate_diff(diff, schema_of(MODEL)) == diff


@pytest.mark.parametrize(
    ("diff", "message"),
    [
        ({"w": np.ones((2, 3), np.float32)}, "missing"),
        ({"w": np.ones((3, 2), np.float32), "b": np.ones(3, np.float32)}, "shape"),
        ({"w": np.ones((2, 3), np.float64), "b": np.ones(3, np.float32)}, "dtype"),
        ({"w": np.full((2, 3), np.nan, np.float32), "b": np.ones(3, np.float32)}, "NaN or Inf"),
        ({"w": np.full((2, 3), np.inf, np.float32), "b": np.ones(3, np.float32)}, "NaN or Inf"),
    ],
)
def test_invalid_diffs_say_what_is_wrong(diff: dict, message: str) -> None:
    with pytest.raises(InvalidDiff, match=message):
        validate_diff(diff, schema_of(MODEL))


def test_norm_limit_rejects_or_clips() -> None:
    diff = {"w": np.full((2, 3), 2.0, np.float32), "b": np.zeros(3, np.float32)}
    with pytest.raises(InvalidDiff, match="exceeds max_diff_norm"):
        validate_diff(diff, schema_of(MODEL), max_norm=1.0)
    clipped = validate_diff(diff, schema_of(MODEL), max_norm=1.0, clip=True)
    norm = np.sqrt(sum(float(np.square(t).sum()) for t in clipped.values()))
    assert norm == pytest.approx(1.0, rel=1e-5)


def test_safetensors_codec_round_trips_and_refuses_garbage() -> None:
    decoded = decode_state(encode_state(MODEL))
    assert set(decoded) == set(MODEL)
    with pytest.raises(BadRequest, match="not a valid safetensors file"):
        decode_state(b"\x00" * 16)


def test_a_scalar_tensor_keeps_its_empty_shape() -> None:
    """Batch norm's ``num_batches_tracked`` is 0-d: it must come back 0-d, not as [1]."""
    state = {"bn.num_batches_tracked": np.array(7, dtype=np.int64), "w": np.ones((2, 3), "f4")}

    for decoded in (decode_state(encode_state(state)), view_state(encode_state(state))):
        assert {name: t.shape for name, t in decoded.items()} == {
            "bn.num_batches_tracked": (),
            "w": (2, 3),
        }
        assert int(decoded["bn.num_batches_tracked"]) == 7


@pytest.mark.parametrize("seq", ["²", "\u0661", "1" * 19, " 1", "+1"])
def test_request_keys_with_unusual_digits_are_forged_not_errors(seq: str) -> None:
    key = issue_request_key("secret", "p", "w", KeyScope(1, 0))
    forged = seq + key[1:]
    with pytest.raises(Unauthorized, match="Invalid request key!"):
        verify_request_key("secret", "p", "w", forged)


def test_worker_ids_need_the_process_secret() -> None:
    one = derive_worker_id("secret-1", "p", "sub:alice")
    assert one == derive_worker_id("secret-1", "p", "sub:alice")  # stable within a process
    assert WORKER_ID.fullmatch(one)
    assert one != derive_worker_id("secret-2", "p", "sub:alice")  # public data is not enough
    assert one != derive_worker_id("secret-1", "q", "sub:alice")
    assert one != derive_worker_id("secret-1", "p", "sub:bob")
    assert pseudonym(one) != one and len(pseudonym(one)) == 16
    assert redact(one) == one[:6] + "…"


def _raw_safetensors(dtype: str, shape: list[int], nbytes: int) -> bytes:
    header = json.dumps({"w": {"dtype": dtype, "shape": shape, "data_offsets": [0, nbytes]}})
    return struct.pack("<Q", len(header)) + header.encode() + b"\0" * nbytes


@pytest.mark.parametrize("dtype", ["BF16", "F8_E4M3", "U16", "U32", "C64", None])
def test_unsupported_dtypes_are_a_400(dtype: str | None) -> None:
    """BF16 made safetensors' numpy loader raise KeyError: a 500 before."""
    with pytest.raises(BadRequest, match="unsupported dtype") as raised:
        decode_state(_raw_safetensors(dtype, [2], 4), "diff")  # type: ignore[arg-type]
    assert raised.value.code == "invalid_safetensors"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff" * 8,
        struct.pack("<Q", 2) + b"[]",
        struct.pack("<Q", 3) + b"{x}",
        struct.pack("<Q", 2**63) + b"{}",
    ],
)
def test_broken_headers_are_a_400(data: bytes) -> None:
    with pytest.raises(BadRequest, match="not a valid safetensors file"):
        decode_state(data, "diff")


def test_max_file_bytes_bounds_every_file_of_the_schema() -> None:
    schema = schema_of(MODEL)
    assert len(encode_state(MODEL)) <= max_file_bytes(schema)
    assert max_file_bytes(schema) < len(encode_state(MODEL)) + 4096


def test_views_decode_like_the_copying_decoder_without_a_copy() -> None:
    state = {**MODEL, "mask": np.array([True, False]), "empty": np.zeros((0, 2), np.float64)}
    data = encode_state(state)
    views = view_state(data)
    for name, tensor in decode_state(data).items():
        view = views[name]
        assert view.dtype == tensor.dtype and np.array_equal(view, tensor)
        assert not view.flags.writeable
        assert view.size == 0 or np.shares_memory(view, np.frombuffer(data, np.uint8))


def _tensors_at(offsets: list[list[int]], payload: int) -> bytes:
    header = {
        f"t{i}": {"dtype": "F32", "shape": [(stop - start) // 4], "data_offsets": [start, stop]}
        for i, (start, stop) in enumerate(offsets)
    }
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * payload


@pytest.mark.parametrize(
    ("offsets", "payload"),
    [
        ([[0, 8], [12, 16]], 16),  # a gap
        ([[0, 8], [4, 12]], 12),  # overlapping tensors
        ([[0, 8]], 12),  # bytes after the last tensor
        ([[0, 8], [8, 16]], 12),  # the file ends inside a tensor
        ([[4, 8]], 8),  # bytes before the first tensor
    ],
)
def test_views_refuse_what_the_copying_decoder_refuses(offsets, payload) -> None:
    data = _tensors_at(offsets, payload)
    for decode in (decode_state, view_state):
        with pytest.raises(BadRequest, match="not a valid safetensors file"):
            decode(data, "diff")


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_value_that_is_not_finite_is_found_anywhere(dtype, bad) -> None:
    values = np.ones(1001, dtype)
    values[617] = bad
    with pytest.raises(InvalidDiff, match="NaN or Inf"):
        check_finite(values, "w")


def test_finite_values_whose_sum_overflows_are_finite() -> None:
    check_finite(np.full(8, np.finfo(np.float32).max, np.float32), "w")
    check_finite(np.full(8, np.iinfo(np.int64).max, np.int64), "n")
