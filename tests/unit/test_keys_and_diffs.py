import numpy as np
import pytest

from firegrid.domain.diffs import InvalidDiff, schema_of, validate_diff
from firegrid.domain.errors import BadRequest, Unauthorized
from firegrid.domain.keys import KeyScope, issue_request_key, verify_request_key
from firegrid.tensors import decode_state, encode_state


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
