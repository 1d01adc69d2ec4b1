import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from scipy.stats import chisquare

from firegrid.domain.config import ServerConfig
from firegrid.domain.selection import Candidate, RoundState, invitations_wanted, select

POOL = [Candidate(worker_id=f"w{i:02d}") for i in range(20)]
FRESH = RoundState(assigned=0, invited=0, invited_and_assigned=0)


def _config(**kw: object) -> ServerConfig:
    return ServerConfig.parse({"cycle_length": 60, "num_cycles": 5} | kw)


def test_random_sample_is_distinct_and_reproducible_with_a_seed() -> None:
    first = select(POOL, 8, "random", random.Random(7))
    assert len(set(first)) == 8
    assert select(list(reversed(POOL)), 8, "random", random.Random(7)) == first
    assert select(POOL, 8, "random", random.Random(8)) != first


def test_random_sample_is_uniform_over_many_draws() -> None:
    rng = random.Random(12345)
    counts = Counter(w for _ in range(4000) for w in select(POOL, 5, "random", rng))
    observed = [counts[c.worker_id] for c in POOL]
    assert sum(observed) == 20_000
    # Each worker is expected 1,000 times; a fair sampler passes at the 1% level.
    assert chisquare(observed).pvalue > 0.01


def test_iterate_takes_the_least_recently_invited_first() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    pool = [
        Candidate(worker_id="recent", last_invited_at=t0 + timedelta(hours=2)),
        Candidate(worker_id="never"),
        Candidate(worker_id="old", last_invited_at=t0),
    ]
    assert select(pool, 2, "iterate", random.Random(0)) == ["never", "old"]


def test_sample_never_exceeds_the_pool() -> None:
    assert sorted(select(POOL[:3], 10, "random", random.Random(0))) == ["w00", "w01", "w02"]


@pytest.mark.parametrize(
    ("config", "state", "pool", "wanted"),
    [
        (_config(max_workers=10, min_workers=5), FRESH, 4, 0),
        (_config(max_workers=10, min_workers=5), FRESH, 20, 13),
        (_config(max_workers=10, goal_count=4, over_selection=1.5), FRESH, 20, 6),
        (_config(max_workers=10, goal_count=4), FRESH, 3, 3),
        (
            _config(max_workers=10),
            RoundState(assigned=0, invited=13, invited_and_assigned=0),
            20,
            0,
        ),
        (_config(max_workers=10), RoundState(assigned=2, invited=0, invited_and_assigned=0), 20, 0),
        (
            _config(max_workers=10, worker_participation_mode=1, over_selection=1.0),
            RoundState(assigned=4, invited=6, invited_and_assigned=4),
            20,
            4,
        ),
        (
            _config(max_workers=10, worker_participation_mode=1),
            RoundState(assigned=10, invited=13, invited_and_assigned=10),
            20,
            0,
        ),
        (_config(max_diffs=2, cycle_length=None), FRESH, 7, 7),
    ],
)
def test_how_many_to_invite(
    config: ServerConfig, state: RoundState, pool: int, wanted: int
) -> None:
    assert invitations_wanted(config, state, pool) == wanted
