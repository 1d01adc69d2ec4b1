"""The one validation toolkit: every value that passes fits where it goes (int64, finite
floats, bounded strings, Firestore-safe names); every failure is a 400 naming the field."""

from __future__ import annotations

import math
import re

import pytest

from firegrid.domain import limits
from firegrid.domain.errors import BadRequest
from firegrid.domain.fields import Fields, check_storable, is_reserved_name


def test_a_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(BadRequest, match="must be a JSON object"):
        Fields(["worker_id"])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (2**63, "must be <= 9223372036854775807"),
        (10**400, "must be <= 9223372036854775807"),
        (-1, "must not be negative"),
        (True, "must be an integer"),
        (1.0, "must be an integer"),
        ("5", "must be an integer"),
    ],
)
def test_integers_stay_within_int64_and_their_bounds(value: object, message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(f"'cycle_id' {message}")) as raised:
        Fields({"cycle_id": value}).integer("cycle_id")
    assert raised.value.code == "invalid_field"


def test_integer_bounds_and_aliases() -> None:
    fields = Fields({"train_num_samples": 7})
    assert fields.integer("num_samples", "train_num_samples", required=True, minimum=1) == 7
    with pytest.raises(BadRequest, match="'train_num_samples' must be <= 5"):
        fields.integer("num_samples", "train_num_samples", maximum=5)
    with pytest.raises(BadRequest, match="'other' is required") as raised:
        fields.integer("other", required=True)
    assert raised.value.code == "missing_field"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (10**400, "is out of range"),  # float(10**400) overflows: a 500 before
        ("1e400", "must be a finite number"),
        ("nan", "must be a finite number"),
        ("fast", "must be a number"),
        ("x" * 65, "must be a number"),
        ([1], "must be a number"),
        (-0.5, "must not be negative"),
        (2e15, "must be <= 1e+15"),
    ],
)
def test_numbers_are_finite_and_bounded(value: object, message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(f"'ping' {message}")):
        Fields({"ping": value}).number("ping", maximum=1e15, strings=True)


def test_numeric_strings_only_where_asked() -> None:
    assert Fields({"ping": "12.5"}).number("ping", strings=True) == 12.5
    with pytest.raises(BadRequest, match="must be a number"):
        Fields({"ping": "12.5"}).number("ping")


def test_text_is_bounded_and_matches_its_form() -> None:
    fields = Fields({"token": "a b", "name": "x" * 201, "empty": ""})
    with pytest.raises(BadRequest, match="must be at most 200 characters"):
        fields.text("name", max_length=200)
    with pytest.raises(BadRequest, match="must be a non-empty string"):
        fields.text("empty")
    with pytest.raises(BadRequest, match="form that is not allowed"):
        fields.text("token", pattern=re.compile(r"\S+"))
    assert fields.text("absent") is None


@pytest.mark.parametrize("value", ["²", "\u0661\u0662", "1.5", "-1", "9" * 19])
def test_digits_are_ascii_only(value: str) -> None:
    """``"²".isdigit()`` is true but ``int("²")`` raises: that was a 500."""
    with pytest.raises(BadRequest, match="'checkpoint'"):
        Fields({"checkpoint": value}).digits("checkpoint")


def test_versions_accept_numbers_but_not_infinity() -> None:
    assert Fields({"v": 1.5}).version("v") == "1.5"
    assert Fields({"v": 2}).version("v") == "2"
    with pytest.raises(BadRequest):
        Fields({"v": math.inf}).version("v")


def test_config_fields_carry_their_own_codes_and_prefix() -> None:
    fields = Fields(
        {"secret": 5, "extra": 1},
        prefix="authentication.",
        invalid="invalid_config",
        missing="invalid_config",
    )
    with pytest.raises(BadRequest, match=r"'authentication\.secret' must be a non-empty") as raised:
        fields.text("secret")
    assert raised.value.code == "invalid_config"
    with pytest.raises(BadRequest, match="unknown authentication keys: extra"):
        fields.only(["secret"], kind="authentication")


@pytest.mark.parametrize("name", ["__name__", "__x__", "____"])
def test_reserved_names(name: str) -> None:
    assert is_reserved_name(name)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": 2**63}, r"'client_config.a' is an integer outside the 64-bit range"),
        ({"a": [-(2**63) - 1]}, r"'client_config.a\[0\]' is an integer outside"),
        ({"a": math.nan}, "not finite"),
        ({"__x__": 1}, "field name that is not allowed"),
        ({"": 1}, "field name that is not allowed"),
        ({"a": {"b": object()}}, "not JSON"),
    ],
)
def test_check_storable_refuses_what_firestore_cannot_hold(value: object, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        check_storable(value, "'client_config'")


def test_check_storable_bounds_nesting() -> None:
    deep: object = 1
    for _ in range(limits.MAX_NESTING + 1):
        deep = [deep]
    with pytest.raises(BadRequest, match="nested too deeply"):
        check_storable(deep, "body")
    check_storable({"a": [1, 2.5, "x", None, True, {"b": -(2**63)}]}, "body")


def test_a_field_and_its_alias_together_are_refused() -> None:
    """The alias's value would be silently ignored otherwise (the fuzzer found it)."""
    fields = Fields({"fcm_token": "a", "fcm_device_token": "b c"})
    with pytest.raises(BadRequest, match="name the same field"):
        fields.text("fcm_token", "fcm_device_token")
    assert (
        Fields({"fcm_device_token": "b", "fcm_token": None}).text("fcm_token", "fcm_device_token")
        == "b"
    )
