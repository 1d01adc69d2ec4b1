"""The strategies comparison (``python -m bench.compare``): its time to 90%, its fairness
(same devices, same seed, same wall budget), its table and its plot; the eta sweep
behind the demo's server optimizers."""

from __future__ import annotations

import json
from pathlib import Path

from bench.compare import settings, table, time_to_accuracy
from firegrid.demo import Mode, Scored, Strategy
from firegrid.plots import plot_accuracy_vs_time

CURVE = [Scored(1, 0.0, 0.1), Scored(2, 4.0, 0.85), Scored(3, 9.5, 0.9), Scored(4, 12.0, 0.95)]


def test_time_to_accuracy_is_the_wall_time_of_the_first_checkpoint_at_the_target() -> None:
    assert time_to_accuracy(CURVE, 0.9) == 9.5  # reaching it exactly counts
    assert time_to_accuracy(CURVE, 0.8) == 4.0
    assert time_to_accuracy(CURVE, 0.05) == 0.0


def test_a_dip_after_reaching_the_target_does_not_move_the_time() -> None:
    dipping = [Scored(1, 0.0, 0.1), Scored(2, 3.0, 0.92), Scored(3, 6.0, 0.7)]

    assert time_to_accuracy(dipping, 0.9) == 3.0


def test_a_target_never_reached_has_no_time() -> None:
    assert time_to_accuracy(CURVE, 0.96) is None
    assert time_to_accuracy([], 0.5) is None


def test_every_setting_gets_the_same_devices_seed_and_wall_budget() -> None:
    chosen = settings(budget_s=60)
    sync = chosen["FedAvg (sync)"]

    for options in chosen.values():
        assert (options.devices, options.seed, options.budget_s) == (50, 0, 60)
        assert (options.latency, options.slow_delay) == (sync.latency, sync.slow_delay)
        assert (options.online, options.dropout, options.places) == (1.0, 0.0, 10)
    assert [name for name, o in chosen.items() if o.slow != 0.2] == [
        "FedAvg (sync), no slow devices"
    ]
    assert chosen["FedBuff (async)"].mode is Mode.ASYNC
    assert chosen["FedAdam (sync)"].strategy is Strategy.FEDADAM
    assert chosen["FedAvg + DP (sync)"].dp is not None
    assert sync.close_fraction == 1.0  # a synchronous cycle waits for its stragglers


def test_the_table_shows_times_accuracies_epsilon_and_settings_not_run() -> None:
    rows = [
        {"setting": "FedAvg (sync)", "time_to_90_s": 28.8, "final_accuracy": 0.93,
         "checkpoints": 21, "device_updates": 200, "wall_s": 80.1, "epsilon": None},
        {"setting": "FedAvg + DP (sync)", "time_to_90_s": None, "final_accuracy": 0.85,
         "checkpoints": 21, "device_updates": 200, "wall_s": 81.0, "epsilon": 21.2},
        {"setting": "FedBuff (async)", "error": "unknown key 'mode'"},
    ]  # fmt: skip

    lines = table(rows).splitlines()

    assert lines[2] == "| FedAvg (sync) | 28.8 s | 0.930 | 21 | 200 |"
    assert lines[3].startswith("| FedAvg + DP (sync) (epsilon 21.2) | not reached | 0.850 |")
    assert lines[4] == "| FedBuff (async) | not run: unknown key 'mode' | | | |"


def test_the_plot_is_a_small_png(tmp_path: Path) -> None:
    curves = {"a": [(0.0, 0.1), (5.0, 0.9)], "b": [(0.0, 0.1), (2.0, 0.5), (9.0, 0.95)]}

    out = plot_accuracy_vs_time(curves, tmp_path / "docs" / "c.png", title="t", target=0.9)

    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") and 10_000 < len(data) < 200_000


def test_the_eta_sweep_scores_fedavg_and_every_eta_of_both_optimizers(tmp_path: Path) -> None:
    from bench import server_eta

    out = tmp_path / "eta.json"
    assert server_eta.main(["--rounds", "1", "--out", str(out)]) == 0

    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1 + 2 * len(server_eta.ETAS)
    assert rows[0]["contender"] == "fedavg"
    for row in rows:
        (score,) = row["heldout"]
        assert 0.0 <= score <= 1.0
