"""The fan-out benchmark's smallest setting (K = 40 in groups of 10), as a smoke test: on
its own stack, both closings complete with every diff and the same checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import fanout

pytestmark = pytest.mark.integration


def test_the_quick_fanout_benchmark_closes_both_ways_with_every_diff(tmp_path: Path) -> None:
    out = tmp_path / "fanout.json"

    assert fanout.main(["--quick", "--out", str(out)]) == 0  # asserts equal checkpoints itself

    result = json.loads(out.read_text())
    assert (result["diffs"], result["group"]) == (40, 10)
    for mode in ("single", "fanout"):
        assert result[mode]["num_diffs"] == 40 and result[mode]["closing_s"] > 0
