import re

import pytest

from firegrid.domain.config import ClientConfig, ServerConfig
from firegrid.domain.errors import BadRequest

BASE = {"cycle_length": 60, "num_cycles": 5, "max_diffs": 2}


def test_defaults_follow_the_protocol() -> None:
    config = ServerConfig.parse(BASE)
    assert config.aggregation == "fedavg"
    assert config.on_expiry == "reset"
    assert config.over_selection == 1.3
    assert config.min_workers == 1
    assert not config.requires_speed_test
    assert not config.authentication.required


def test_a_minimum_speed_requires_the_speed_test() -> None:
    assert ServerConfig.parse(BASE | {"minimum_upload_speed": 0}).requires_speed_test


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"max_diff": 3}, "unknown server_config keys: max_diff"),
        ({"num_cycles": "5"}, "'num_cycles' must be an integer"),
        ({"num_cycles": True}, "'num_cycles' must be an integer"),
        ({"cycle_length": -1}, "'cycle_length' must not be negative"),
        ({"cycle_length": None, "max_diffs": None}, "a cycle needs a way to close"),
        ({"min_diffs": 3}, "'min_diffs' must not exceed 'max_diffs'"),
        ({"max_workers": 1}, "'max_diffs' must not exceed 'max_workers'"),
        ({"aggregation": "sum"}, "'aggregation' must be one of"),
        ({"worker_participation_mode": 2}, "'worker_participation_mode' must be one of"),
        ({"authentication": {"secret": ""}}, "'authentication.secret' must be a non-empty string"),
        ({"authentication": {"password": "x"}}, "unknown authentication keys"),
    ],
)
def test_invalid_server_configs_are_refused_with_the_reason(override: dict, message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)):
        ServerConfig.parse(BASE | override)


def test_required_keys_are_named() -> None:
    with pytest.raises(BadRequest, match="'cycle_length' is required"):
        ServerConfig.parse({"num_cycles": 1})
    with pytest.raises(BadRequest, match="'num_cycles' is required"):
        ServerConfig.parse({"cycle_length": 1})


def test_server_config_round_trips_through_storage() -> None:
    config = ServerConfig.parse(BASE | {"authentication": {"secret": "abc"}})
    assert ServerConfig.from_dict(config.to_dict()) == config


def test_client_config_keeps_extra_keys_and_checks_known_ones() -> None:
    config = ClientConfig.parse({"name": "m", "version": "1", "lr": 0.1, "app_hint": "x"})
    assert config.raw["app_hint"] == "x"
    with pytest.raises(BadRequest, match=re.escape("'client_config.version' is required")):
        ClientConfig.parse({"name": "m", "version": 1})
    with pytest.raises(BadRequest, match="'loss' must be one of"):
        ClientConfig.parse({"name": "m", "version": "1", "loss": "hinge"})
