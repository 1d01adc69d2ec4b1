"""A process with a server optimizer, closed cycle after cycle on the fakes: each
checkpoint is the domain's optimizer step from the state stored with the one before,
and a closing done again (overtaken) applies the state once."""

from __future__ import annotations

from typing import Any

import numpy as np

from firegrid.domain import optimizers
from firegrid.domain.aggregation import Contribution, combine
from firegrid.domain.optimizers import OptimizerState
from firegrid.services import cycles
from firegrid.services.context import Context
from firegrid.tensors import decode_state, encode_state
from tests.common import State, server_optimizer
from tests.unit.test_services import checkpoint, host, join, on_report, send_report

Tiny = tuple[State, bytes]
ADAM = {"name": "fedadam", "eta": 0.05, "beta_1": 0.8}
SAMPLES = (10, 30)


def _diffs(tiny: Tiny, rng: np.random.Generator) -> list[State]:
    return [
        {k: (0.1 * rng.normal(size=v.shape)).astype(v.dtype) for k, v in tiny[0].items()}
        for _ in SAMPLES
    ]


def _report_all(ctx: Context, diffs: list[State]) -> None:
    for diff, samples in zip(diffs, SAMPLES, strict=True):
        worker_id, key = join(ctx)
        send_report(ctx, worker_id, key, diff, num_samples=samples)


def _expected(before: State, diffs: list[State], state: OptimizerState) -> tuple[Any, Any]:
    """The domain's step, with the state stored and read back as the service does."""
    contributions = [
        Contribution(diff=d, weight=float(n)) for d, n in zip(diffs, SAMPLES, strict=True)
    ]
    step = combine(before, contributions)
    optimizer = server_optimizer(ADAM)
    after, new_state = optimizers.step(before, step.delta, optimizer, state)
    return after, optimizers.decode(decode_state(encode_state(optimizers.encode(new_state))))


def _overtaken_closing(ctx: Context, process_id: str, seq: int) -> None:
    """The first attempt stalls past its lease after reading a diff; a second one closes
    the cycle meanwhile, so the first is overtaken."""
    get = ctx.blobs.get
    overtaker: list[bool] = []

    def stalls(name: str, **kw: Any) -> bytes:
        data = get(name, **kw)
        if not overtaker and "/diffs/" in name:
            ctx.clock.advance(ctx.settings.closing_lease_s + 1)
            ctx.blobs.get = get
            overtaker.append(cycles.close_cycle(ctx, process_id, seq))
        return data

    ctx.blobs.get = stalls
    assert cycles.on_report(ctx, process_id, seq)
    assert not cycles.close_cycle(ctx, process_id, seq)
    assert overtaker == [True]


def _state_writes(ctx: Context, process_id: str) -> list[str]:
    return [name for name in ctx.blobs.writes if f"processes/{process_id}/optimizer/" in name]


def test_fedadam_over_several_cycles_with_an_overtaken_closing(ctx, tiny: Tiny) -> None:
    process_id = host(ctx, tiny, num_cycles=4, server_optimizer=ADAM)
    rng = np.random.default_rng(7)
    expected, state = dict(tiny[0]), OptimizerState()
    for seq in range(1, 5):
        diffs = _diffs(tiny, rng)
        _report_all(ctx, diffs)
        if seq == 2:
            _overtaken_closing(ctx, process_id, seq)
        else:
            assert on_report(ctx, process_id, seq)
        expected, state = _expected(expected, diffs, state)
        new = checkpoint(ctx, process_id, seq + 1)
        for name, values in expected.items():
            np.testing.assert_allclose(new[name], values, rtol=1e-6, atol=1e-7)

    # Both attempts of closing 2 wrote a state; the overtaken one deleted its own.
    writes = _state_writes(ctx, process_id)
    assert len(writes) == 5
    summaries = [ctx.repo.get_cycle(process_id, seq).summary for seq in range(1, 5)]
    published = [s.optimizer_state_object for s in summaries if s is not None]
    assert [name for name in writes if name in ctx.blobs.objects] == published
    stored = optimizers.decode(decode_state(ctx.blobs.get(published[-1])))
    assert stored.steps == 4  # four steps, the re-driven one counted once
    for name, values in state.v.items():
        np.testing.assert_array_equal(stored.v[name], values)


def test_without_an_optimizer_nothing_changes_and_no_state_is_stored(ctx, tiny: Tiny) -> None:
    process_id = host(ctx, tiny)
    diffs = _diffs(tiny, np.random.default_rng(3))
    _report_all(ctx, diffs)
    assert on_report(ctx, process_id, 1)

    new, old = checkpoint(ctx, process_id, 2), tiny[0]
    for name, values in old.items():
        average = (SAMPLES[0] * diffs[0][name] + SAMPLES[1] * diffs[1][name]) / sum(SAMPLES)
        np.testing.assert_allclose(new[name], values - average, rtol=1e-5, atol=1e-6)
    assert _state_writes(ctx, process_id) == []
    summary = ctx.repo.get_cycle(process_id, 1).summary
    assert summary is not None and summary.optimizer_state_object is None
