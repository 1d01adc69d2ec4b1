"""The robust rules hold against poisoned diffs on the digits task (bench/attack.py, short)."""

from __future__ import annotations

import pytest

from bench.attack import SHORT, run

pytestmark = pytest.mark.slow


def test_median_and_trimmed_mean_resist_sign_flipped_diffs_that_break_fedavg() -> None:
    """One device in ten sends -10x its diff: FedAvg's model falls apart, the robust rules
    stay within a few points of a clean run (seeded, so the numbers are reproducible)."""
    clean = run(SHORT, "fedavg", None).accuracy
    attacked = run(SHORT, "fedavg", "flip").accuracy
    assert clean > 0.85
    assert attacked < clean - 0.2
    for method in ("median", "trimmed_mean"):
        assert run(SHORT, method, "flip").accuracy > clean - 0.05, method
