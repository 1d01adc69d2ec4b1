"""What the benchmarks share: where results go, a traced measurement, diff files."""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from firegrid.domain.model import Assignment

RESULTS = Path(__file__).parent / "results"
T = TypeVar("T")


def measure(run: Callable[[], T]) -> tuple[T, float, float]:
    """``run()``'s result, its seconds and its peak traced memory in MiB."""
    tracemalloc.start()
    started = time.perf_counter()
    result = run()
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, elapsed, peak / 2**20


class DirectoryBlobs:
    """The two reads StoredDiffs needs, over files (a bucket's ranged reads, locally)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def get(self, name: str, *, max_bytes: int | None = None) -> bytes:
        return (self.directory / name).read_bytes()

    def get_range(self, name: str, start: int, stop: int) -> bytes:
        with (self.directory / name).open("rb") as file:
            file.seek(start)
            return file.read(max(0, stop - start))


def reported(names: list[str]) -> list[Assignment]:
    """One reported assignment per diff object, as a closing lists them."""
    at = datetime.now(UTC)
    return [
        Assignment(worker_id=f"w{k}", seq=1, epoch=0, assigned_at=at, reported_at=at,
                   diff_object=name)
        for k, name in enumerate(names)
    ]  # fmt: skip


def write_results(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
