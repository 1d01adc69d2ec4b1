"""``firegrid demo``'s options: each parses into the server_config the demo hosts, and
each is one the server accepts (but dp with async, which it refuses with a 400)."""

from __future__ import annotations

import pytest

from firegrid.commands import build_parser
from firegrid.commands.demo import options_of
from firegrid.demo import DemoOptions, Mode, Privacy, Strategy, Wake, server_config
from firegrid.domain.config import ServerConfig


def _config(*argv: str) -> dict:
    return server_config(options_of(build_parser().parse_args(["demo", *argv])))


def test_the_default_is_synchronous_fedavg_woken_by_push() -> None:
    config = _config()

    assert config == {
        "cycle_length": 6.0,
        "num_cycles": 20,
        "max_workers": 25,
        "max_diffs": 20,
        "min_diffs": 5,
        "min_workers": 10,
        "over_selection": 1.3,
        "worker_participation_mode": 1,
    }


def test_polling_devices_all_take_part_and_the_deadline_closes_the_cycle() -> None:
    config = _config("--wake", "poll", "--devices", "30")

    assert config["max_workers"] == 30 and config["min_diffs"] == 5
    assert "max_diffs" not in config


def test_the_old_mode_values_now_belong_to_wake() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--mode", "poll"])


@pytest.mark.parametrize(
    ("strategy", "optimizer"),
    [("fedadam", {"name": "fedadam", "eta": 0.1}), ("fedyogi", {"name": "fedyogi", "eta": 0.1})],
)
def test_a_strategy_sets_the_server_optimizer(strategy: str, optimizer: dict) -> None:
    assert _config("--strategy", strategy)["server_optimizer"] == optimizer
    assert "server_optimizer" not in _config("--strategy", "fedavg")


def test_dp_sets_clip_noise_delta_and_the_population() -> None:
    assert _config("--dp", "1.5,0.7", "--devices", "40")["dp"] == {
        "clip_norm": 1.5,
        "noise_multiplier": 0.7,
        "delta": 1e-3,
        "population": 40,
    }
    assert _config("--dp", "1,0.5,1e-5")["dp"]["delta"] == 1e-5


@pytest.mark.parametrize("bad", ["1", "a,b", "1,2,3,4", ""])
def test_a_malformed_dp_is_a_usage_error(bad: str, capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--dp", bad])
    assert "CLIP,NOISE[,DELTA]" in capsys.readouterr().err


def test_async_mode_sets_fedbuffs_server_config() -> None:
    config = _config("--mode", "async", "--places", "8", "--max-staleness", "6")

    assert config == {
        "cycle_length": 6.0,
        "num_cycles": 20,
        "mode": "async",
        "buffer_size": 4,
        "max_concurrency": 8,
        "max_staleness": 6,
        "staleness_exponent": 0.5,
    }
    assert _config("--mode", "async", "--buffer-size", "3")["buffer_size"] == 3


def test_a_wall_budget_leaves_the_cycles_unlimited() -> None:
    assert _config("--budget", "60", "--cycles", "7")["num_cycles"] == 0
    assert _config("--cycles", "7")["num_cycles"] == 7


def test_a_sync_cycle_can_wait_for_all_its_places() -> None:
    config = _config("--places", "10", "--close-fraction", "1")

    assert config["max_workers"] == config["max_diffs"] == 10


@pytest.mark.parametrize(
    "options",
    [
        DemoOptions(),
        DemoOptions(wake=Wake.POLL),
        DemoOptions(strategy=Strategy.FEDADAM),
        DemoOptions(strategy=Strategy.FEDYOGI, dp=Privacy(clip_norm=1, noise_multiplier=0.5)),
        DemoOptions(places=10, close_fraction=1.0, dp=Privacy(clip_norm=1, noise_multiplier=1)),
        DemoOptions(mode=Mode.ASYNC),
        DemoOptions(mode=Mode.ASYNC, wake=Wake.POLL, strategy=Strategy.FEDYOGI, places=10),
    ],
)
def test_the_server_accepts_every_variant(options: DemoOptions) -> None:
    parsed = ServerConfig.parse(server_config(options))

    assert parsed.num_cycles == options.cycles
    assert parsed.mode == options.mode
