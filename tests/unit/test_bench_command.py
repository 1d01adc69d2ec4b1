"""``firegrid bench``: the registry, the smallest aggregation benchmark, and what it says
when a benchmark or the bench/ folder is not there."""

from __future__ import annotations

import json

from firegrid.commands import bench, main


def test_the_aggregate_benchmark_runs_quick_and_writes_its_figures(tmp_path, capsys) -> None:
    out = tmp_path / "aggregation.json"

    assert main(["bench", "aggregate", "--quick", "--out", str(out)]) == 0

    rows = json.loads(out.read_text())["rows"]
    contenders = {row["contender"] for row in rows}
    assert {"firegrid", "float64 loop", "float32 loop", "flower"} == contenders
    assert {(row["params"], row["clients"]) for row in rows} == {(100_000, 5), (100_000, 10)}
    for row in rows:
        assert row["seconds"] > 0 and row["traced_mib"] > 0
        assert row["difference"] <= 1e-5
    firegrid = [row for row in rows if row["contender"] == "firegrid"]
    # The sum and one diff, not K diffs: holding the 10 diffs would be at least 10x the model.
    # (Not 3x exactly: tracemalloc also counts what other threads of the session allocate.)
    assert all(row["x_model"] < 8 for row in firegrid if row["clients"] == 10)
    printed = capsys.readouterr().out
    assert "flower" in printed and "bit for bit" in printed


def test_a_benchmark_not_in_the_checkout_is_named_and_the_others_still_run(
    monkeypatch, capsys
) -> None:
    monkeypatch.setattr(bench, "BENCHMARKS", {"ghost": "bench.ghost:main"})

    assert main(["bench", "ghost"]) == 1
    assert "benchmark 'ghost' is not in this checkout" in capsys.readouterr().err
    assert main(["bench", "all"]) == 0
    assert "ghost' is not in this checkout" in capsys.readouterr().err


def test_without_a_source_checkout_the_command_says_where_bench_should_be(
    monkeypatch, tmp_path, capsys
) -> None:
    import firegrid

    installed = tmp_path / "site-packages" / "firegrid" / "__init__.py"
    monkeypatch.setattr(firegrid, "__file__", str(installed))

    assert main(["bench", "aggregate", "--quick"]) == 1
    assert "no bench/ folder" in capsys.readouterr().err
