"""The cycle benchmark's smallest setting (N = 50, about 20 s), as a smoke test: it runs
end to end on its own stack, and the costs it counts do not grow with the cohort."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import cycle
from firegrid.domain.selection import PROBES

pytestmark = pytest.mark.integration


def test_the_quick_cycle_benchmark_runs_and_admission_lists_nothing(tmp_path: Path) -> None:
    out = tmp_path / "cycle.json"

    assert cycle.main(["--quick", "--out", str(out)]) == 0

    (run,) = json.loads(out.read_text())["runs"]
    assert run["devices"] == 50
    assert all(run["endpoints"][e]["requests"] == 50 for e in cycle.ENDPOINTS)
    assert run["last_report_to_checkpoint_s"] > 0
    ops = run["operations"]
    admission = ops["per_route"]["/model-centric/cycle-request"]
    assert admission["requests"] == 50
    assert admission["reads_per_request"] < PROBES  # a listing would read ~N/2 slots
    assert ops["most_written"]["writes"] <= 5  # no document is written once per device
