"""Strategies compared (issue 12): wall time to 90% held-out accuracy on the digits task
with 20% slow devices, for synchronous FedAvg, synchronous FedAdam, asynchronous FedBuff
and FedAvg with differential privacy (and, for reference, synchronous FedAvg without
slow devices: the stragglers' cost).

    python -m bench.compare [--budget 75] [--only NAME ...] [--out FILE] [--plot FILE]
    python -m bench.compare --quick      # 20 s each: a smoke run, not figures
    firegrid bench compare ...

Every setting is a ``firegrid demo`` run (``firegrid.demo.run_demo``) on one local stack
started here (warmed up by a short unmeasured run) and stopped by PID at the end, with
the same seed: the same 50 devices, the
same shards (Dirichlet alpha 0.5), the same slow devices (20%, each adding ``SLOW_DELAY_S``
to the ``LATENCY_S`` every device adds to its training and upload), always online, no
drop-outs, so speed is the only difference between devices. Ten devices train at once:
a sync cycle has 10 places and closes when all 10 reported (as synchronous FedAvg waits
for its cohort, so a cohort with a slow device waits for it); FedBuff has 10 places and
makes a checkpoint of every K = 5 reports.

Fair by the same wall budget: each setting trains for ``--budget`` seconds, and the
figures are the time to the first checkpoint at 90% and the accuracy of the last
checkpoint within the budget. Equal device updates would hide what async is for (its
devices keep training while a sync cycle waits for its straggler), and FedBuff's buffers
may take more than K reports that arrive together, so equal counts could not be set
anyway. Wall time is seconds from the start of training until a checkpoint appears in
``admin/status`` (polled every 0.1 s); accuracy is that checkpoint's on 359 held-out
digits no device trained on. Which devices answer a push first depends on thread timing,
so two runs differ by a few seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from bench._common import RESULTS, write_results
from firegrid.demo import (
    DemoOptions,
    DemoRun,
    Mode,
    Privacy,
    Scored,
    Strategy,
    run_demo,
    server_config,
)

PLOT = Path(__file__).parents[1] / "docs" / "comparison.png"
TARGET = 0.9
BUDGET_S = 75.0
WARM_UP_S = 10.0
"""An unmeasured run first: on a fresh stack the first checkpoint took twice as long
(first requests of every function, the emulators' first writes), which would have
counted against whichever setting ran first."""
"""Seconds of training per setting: synchronous FedAvg reaches 90% in about 40-50 s."""
LATENCY_S = 0.5
SLOW_DELAY_S = 2.5
"""A slow device takes 0.5 + 2.5 s more than its training; a fast one 0.5 s more: with
training and HTTP (~0.3-1 s under load) slow devices take 3-4x as long."""
PRIVACY = Privacy(clip_norm=1.0, noise_multiplier=0.5, delta=1e-3)
"""Clip near the diffs' median L2 norm (1.2 measured); noise 0.5: epsilon about 21 after 20
cycles at sampling rate 10/50 (dp-accounting); noise 1.0 (epsilon 5) left FedAvg below 0.7
after 20 rounds."""


def base_options(budget_s: float) -> DemoOptions:
    return DemoOptions(
        devices=50,
        budget_s=budget_s,
        online=1.0,
        dropout=0.0,
        slow=0.2,
        latency=LATENCY_S,
        slow_delay=SLOW_DELAY_S,
        cycle_length=30.0,
        places=10,
        close_fraction=1.0,
        buffer_size=5,
        max_staleness=10,
        concurrency=12,
        seed=0,
        out=None,
    )


def settings(budget_s: float) -> dict[str, DemoOptions]:
    """Each setting's options: the same base, one difference each."""
    base = base_options(budget_s)
    return {
        "FedAvg (sync)": base,
        "FedAdam (sync)": dataclasses.replace(base, strategy=Strategy.FEDADAM),
        "FedBuff (async)": dataclasses.replace(base, mode=Mode.ASYNC),
        "FedAvg + DP (sync)": dataclasses.replace(base, dp=PRIVACY),
        "FedAvg (sync), no slow devices": dataclasses.replace(base, slow=0.0),
    }


def time_to_accuracy(heldout: Sequence[Scored], target: float) -> float | None:
    """Wall seconds until the first checkpoint at or above ``target``; None if none was."""
    return next((scored.wall_s for scored in heldout if scored.accuracy >= target), None)


def row(name: str, options: DemoOptions, run: DemoRun) -> dict[str, Any]:
    last = run.heldout[-1]
    return {
        "setting": name,
        "server_config": server_config(options),
        "time_to_90_s": time_to_accuracy(run.heldout, TARGET),
        "final_accuracy": last.accuracy,
        "best_accuracy": max(scored.accuracy for scored in run.heldout),
        "checkpoints": last.checkpoint,
        "wall_s": last.wall_s,
        "device_updates": run.summary.outcomes.get("reported", 0),
        "late_or_stale": run.summary.outcomes.get("late", 0),
        "epsilon": run.epsilon,
        "heldout": [dataclasses.astuple(scored) for scored in run.heldout],
    }


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The README's table: one line per setting."""
    lines = [
        "| setting | time to 90% | final accuracy | checkpoints | device updates |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['setting']} | not run: {r['error']} | | | |")
            continue
        reached = "not reached" if r["time_to_90_s"] is None else f"{r['time_to_90_s']:.1f} s"
        epsilon = "" if r["epsilon"] is None else f" (epsilon {r['epsilon']:.1f})"
        lines.append(
            f"| {r['setting']}{epsilon} | {reached} | {r['final_accuracy']:.3f} | "
            f"{r['checkpoints']} | {r['device_updates']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from firegrid.functions_client import ServerError
    from firegrid.local.stack import start_stack, stop_stack
    from firegrid.plots import plot_accuracy_vs_time

    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument(
        "--budget", type=float, default=BUDGET_S, help=f"seconds each (default {BUDGET_S:g})"
    )
    parser.add_argument("--quick", action="store_true", help="20 s each (smoke run)")
    parser.add_argument("--only", nargs="+", help="run only these settings (names as listed)")
    parser.add_argument("--out", type=Path, default=RESULTS / "compare.json")
    parser.add_argument("--plot", type=Path, default=PLOT)
    args = parser.parse_args(argv)
    budget = 20.0 if args.quick else args.budget
    chosen = {
        name: options
        for name, options in settings(budget).items()
        if not args.only or name in args.only
    }
    rows: list[dict[str, Any]] = []
    started, load_before = time.monotonic(), os.getloadavg()
    with TemporaryDirectory(prefix="firegrid-compare-") as directory:
        stack = start_stack(Path(directory), tick_seconds=1)
        try:
            print("== warm-up (not measured)", flush=True)
            run_demo(stack, dataclasses.replace(base_options(WARM_UP_S), slow=0.0))
            for name, options in chosen.items():
                print(f"== {name}", flush=True)
                try:
                    rows.append(row(name, options, run_demo(stack, options)))
                except ServerError as refused:  # e.g. a server without async mode
                    print(f"{name}: not run: {refused.message}", file=sys.stderr)
                    rows.append({"setting": name, "error": refused.message})
        finally:
            stop_stack(Path(directory))
    print(table(rows))
    curves = {r["setting"]: [(t, a) for _, t, a in r["heldout"]] for r in rows if "heldout" in r}
    plot_accuracy_vs_time(
        curves, args.plot, title=f"digits, 50 devices, 20% slow, {budget:g} s each",
        target=TARGET,
    )  # fmt: skip
    print(f"wrote {args.plot}")
    method = {
        "target": TARGET,
        "budget_s": budget,
        "latency_s": LATENCY_S,
        "slow_delay_s": SLOW_DELAY_S,
        "seconds": round(time.monotonic() - started, 1),
        "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
    }
    write_results(args.out, {"method": method, "rows": rows})
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
