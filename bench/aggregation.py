"""``aggregate``: FedAvg at the memory-bandwidth limit, against plain numpy and Flower.

For each model size P (float32 parameters) and cohort K, K diff files are written
once; the contenders then aggregate them in the same run:

* ``firegrid``: the closing's own path, ``StoredDiffs`` into ``aggregate()`` with
  ``fedavg``: each diff as numpy views over its bytes, checked (names, shapes,
  finite), folded chunk by chunk into the float64 sum, then the new checkpoint.
* ``float64 loop``: the bare numpy loop over the same bytes (views, nothing
  checked): ``acc += np.float64(w) * x`` per tensor.
* ``float32 loop``: the same sum in float32 (``acc += np.float32(w) * x``), the
  least arithmetic there is, at float32 precision.
* ``flower``: Flower's own ``flwr.server.strategy.aggregate.aggregate`` over every
  diff decoded (views, no copy) and held, as its server holds the results.

*seconds*: best wall time of ``--repeat`` runs over the diffs already received
(held in memory, every contender handed the same bytes), so it is the aggregation's
time, not that of the copy a download or a file read makes (on this VM that copy,
page faults included, costs more than the aggregation: ~40 ms per 40 MB diff).
*GB/s*: diff bytes aggregated (K x 4P) per second. *fg speed-up*: FireGrid's speed
over the contender's (their seconds over FireGrid's). Memory comes from another
run that reads each diff from its file as a closing reads it from storage (a fresh
copy per read), so it counts the received diffs a contender keeps. *traced* is
tracemalloc's peak, not the peak RSS: it counts every byte the contender allocates
(numpy arrays and Python objects) beyond what existed before it started, the same
from run to run, where the RSS of one process that runs every contender in turn
mostly shows what glibc kept from the previous one (freed heap memory stays
resident, and its mmap threshold grows with the blocks freed). *x model* divides
the traced peak by the model's 4P bytes.

Every result must equal FireGrid's to float32 precision (the float64 loop: bit for
bit), or the run stops. Targets, at the largest case: >= 0.9x the float64 loop's
speed, >= 5x Flower's, traced memory <= 3x the model.

    firegrid bench aggregate [--quick] [--params 1000000 10000000] [--clients 20 100]
    python -m bench.aggregation ...
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import RESULTS, DirectoryBlobs, reported, write_results
from firegrid.domain.aggregation import aggregate, fedavg_weights
from firegrid.domain.diffs import schema_of
from firegrid.services.stored_diffs import StoredDiffs
from firegrid.tensors import encode_state, view_state

Average = dict[str, np.ndarray]
FLOAT32_PRECISION = 1e-5
"""Largest difference allowed from FireGrid's average, relative to its largest value."""
QUICK = {"params": [100_000], "clients": [5, 10]}
TARGETS = {"vs float64 loop": 0.9, "vs flower": 5.0, "x model": 3.0}


class HeldBlobs:
    """Diffs already received: every read hands out the same bytes, so a timed run
    measures the aggregation, not the copy a download (or a file read) makes."""

    def __init__(self, directory: Path, names: list[str]) -> None:
        self.objects = {name: (directory / name).read_bytes() for name in names}

    def get(self, name: str, *, max_bytes: int | None = None) -> bytes:
        return self.objects[name]

    def get_range(self, name: str, start: int, stop: int) -> bytes:
        return self.objects[name][start:stop]


@dataclass(frozen=True)
class Case:
    """K diffs of one model in ``blobs``, with the reports' sample counts."""

    blobs: DirectoryBlobs | HeldBlobs
    model: dict[str, np.ndarray]
    names: list[str]
    counts: list[int]

    @property
    def model_bytes(self) -> int:
        return sum(t.nbytes for t in self.model.values())

    def received(self) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        """Each diff as views over its bytes, one at a time, with its count."""
        for name, count in zip(self.names, self.counts, strict=True):
            yield view_state(self.blobs.get(name)), count


def _write_case(directory: Path, clients: int, params: int) -> Case:
    rng = np.random.default_rng(0)
    sizes = {"conv.weight": params // 10, "fc.weight": params - params // 10 - 10, "fc.bias": 10}
    model = {name: rng.standard_normal(n, np.float32) for name, n in sizes.items()}
    names = []
    for k in range(clients):
        diff = {name: rng.standard_normal(n, np.float32) for name, n in sizes.items()}
        names.append(f"{k}.safetensors")
        (directory / names[-1]).write_bytes(encode_state(diff))
    counts = [int(n) for n in rng.integers(1, 1000, size=clients)]
    return Case(DirectoryBlobs(directory), model, names, counts)


def _firegrid(case: Case) -> Average:
    weights = fedavg_weights(case.counts)
    diffs = StoredDiffs(case.blobs, schema_of(case.model), reported(case.names), weights, {})
    return aggregate(case.model, diffs)[1].delta


def _loop(dtype: type[np.floating[Any]]) -> Callable[[Case], Average]:
    def run(case: Case) -> Average:
        total = {name: np.zeros(t.shape, dtype) for name, t in case.model.items()}
        for diff, count in case.received():
            for name, acc in total.items():
                acc += dtype(count) * diff[name]
        return {name: acc / dtype(sum(case.counts)) for name, acc in total.items()}

    return run


def _flower(case: Case) -> Average:
    from flwr.server.strategy.aggregate import aggregate as flower_aggregate

    results = [([diff[name] for name in case.model], count) for diff, count in case.received()]
    return dict(zip(case.model, flower_aggregate(results), strict=True))


CONTENDERS: dict[str, Callable[[Case], Average]] = {
    "firegrid": _firegrid,
    "float64 loop": _loop(np.float64),
    "float32 loop": _loop(np.float32),
    "flower": _flower,
}


def _flower_installed() -> bool:
    try:
        import flwr  # noqa: F401
    except ImportError:
        return False
    return True


def _seconds(run: Callable[[], Average], repeat: int) -> tuple[Average, float]:
    """``run()``'s result and its best wall time in seconds over ``repeat`` runs."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return result, best


def _traced_peak(run: Callable[[], Average]) -> float:
    """MiB allocated at ``run()``'s peak beyond what was there before (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def _difference(result: Average, reference: Average) -> float:
    """Largest difference from the reference, relative to the reference's largest value."""
    scale = max(float(np.abs(v).max()) for v in reference.values())
    return max(float(np.abs(result[k] - reference[k]).max()) for k in reference) / scale


def _compare(stored: Case, repeat: int, contenders: list[str]) -> list[dict[str, Any]]:
    """Seconds over the diffs already received (held in memory); memory while reading
    them as a closing does (each read a fresh copy), so it counts what a contender keeps."""
    assert isinstance(stored.blobs, DirectoryBlobs)
    held = replace(stored, blobs=HeldBlobs(stored.blobs.directory, stored.names))
    rows, reference, firegrid_s = [], None, 0.0
    for label in contenders:
        result, seconds = _seconds(partial(CONTENDERS[label], held), repeat)
        if reference is None:
            reference, firegrid_s = result, seconds
        difference = _difference(result, reference)
        exact = label == "float64 loop"
        if (difference != 0.0) if exact else (difference > FLOAT32_PRECISION):
            raise AssertionError(f"{label} differs from firegrid by {difference:.2g}")
        del result
        data = len(stored.names) * stored.model_bytes
        rows.append(
            {
                "params": sum(t.size for t in stored.model.values()),
                "clients": len(stored.names),
                "contender": label,
                "seconds": round(seconds, 3),
                "gb_per_s": round(data / seconds / 1e9, 2),
                "speed_up": round(seconds / firegrid_s, 2),
                "difference": difference,
            }
        )
    del held
    for row in rows:
        traced = _traced_peak(partial(CONTENDERS[row["contender"]], stored))
        row["traced_mib"] = round(traced, 1)
        row["x_model"] = round(traced * 2**20 / stored.model_bytes, 2)
    return rows


COLUMNS = {
    "params": "{:>11,}",
    "clients": "{:>5}",
    "contender": "{:>14}",
    "seconds": "{:>9.3f}",
    "gb_per_s": "{:>7.2f}",
    "speed_up": "{:>12.2f}",
    "traced_mib": "{:>11.1f}",
    "x_model": "{:>8.2f}",
}
HEADINGS = ("params", "K", "contender", "seconds", "GB/s", "fg speed-up", "traced MiB",
            "x model")  # fmt: skip


def _line(row: dict[str, Any]) -> str:
    return "".join(form.format(row[column]) for column, form in COLUMNS.items())


def _verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The targets, at the largest case of the run."""
    largest = max((r["params"], r["clients"]) for r in rows)
    case = {r["contender"]: r for r in rows if (r["params"], r["clients"]) == largest}
    firegrid = case["firegrid"]
    figures = {"x model": firegrid["x_model"]}
    for other in ("float64 loop", "flower"):
        if other in case:
            figures[f"vs {other}"] = case[other]["speed_up"]
    met = {
        name: (value <= TARGETS[name]) if name == "x model" else (value >= TARGETS[name])
        for name, value in figures.items()
    }
    return {"params": largest[0], "clients": largest[1], "figures": figures, "met": met}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="firegrid bench aggregate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--params", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--clients", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--quick", action="store_true", help=f"CI smoke: {QUICK}")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs, best kept")
    parser.add_argument("--out", type=Path, default=RESULTS / "aggregation.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.params, args.clients = QUICK["params"], QUICK["clients"]
    contenders = list(CONTENDERS)
    if not _flower_installed():
        contenders.remove("flower")
        print("flwr is not installed (pip install -e '.[dev]'): no Flower figures")
    print("".join(f"{h:>{len(COLUMNS[c].format(0 if c != 'contender' else ''))}}"
                  for h, c in zip(HEADINGS, COLUMNS, strict=True)))  # fmt: skip
    rows: list[dict[str, Any]] = []
    for params in args.params:
        with tempfile.TemporaryDirectory(prefix="firegrid-bench-") as tmp:
            full = _write_case(Path(tmp), max(args.clients), params)
            for clients in sorted(args.clients):
                case = replace(full, names=full.names[:clients], counts=full.counts[:clients])
                for row in _compare(case, args.repeat, contenders):
                    rows.append(row)
                    print(_line(row))
    print(f"every result equals firegrid's to {FLOAT32_PRECISION:g} of its largest value "
          "(the float64 loop: bit for bit)")  # fmt: skip
    verdict = None if args.quick else _verdict(rows)
    for name, value in verdict["figures"].items() if verdict else ():
        target = ("<= " if name == "x model" else ">= ") + f"{TARGETS[name]:g}"
        state = "met" if verdict["met"][name] else "MISSED"
        print(f"target at P={verdict['params']:,}, K={verdict['clients']}: "
              f"{name} {value:g} ({target}): {state}")  # fmt: skip
    write_results(args.out, {"rows": rows, "targets": TARGETS, "verdict": verdict})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
