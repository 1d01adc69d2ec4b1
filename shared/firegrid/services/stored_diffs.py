"""A cycle's reported diffs in storage, read the way each aggregation rule needs them.

The streaming rules get each diff whole, one at a time; the robust rules get a
reader per diff that fetches only a slice of coordinates (a byte range of the
safetensors file), so the closing never holds every diff. Either way a diff that
is missing, corrupt or does not fit the model is left out and its reason put in
``skipped``, as the closing records it.

Sliced reads check a diff in two steps: its header (names, dtypes, shapes, byte
ranges) before the rule starts, its values slice by slice as the rule reads them.
A stored diff was validated whole when it was reported, so a value that is not
finite here means the object changed since; the reader then leaves the diff out
and the rule starts again without it (``aggregation.UnusableDiff``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from firegrid.domain.aggregation import Contribution, Floats, Slice, Tensors, UnusableDiff
from firegrid.domain.diffs import Schema, TensorSpec, check_finite, check_specs, validate_diff
from firegrid.domain.errors import BadRequest, FireGridError, NotFound
from firegrid.domain.keys import redact
from firegrid.domain.model import Assignment
from firegrid.ports import BlobStore
from firegrid.tensors import TensorLayout, read_layout, view_state

log = logging.getLogger(__name__)
WHAT = "stored diff"


class StoredDiffs:
    """``aggregation.DiffSources`` over the reported assignments of one cycle."""

    def __init__(
        self,
        blobs: BlobStore,
        schema: Schema,
        reported: Sequence[Assignment],
        weights: Sequence[float],
        skipped: dict[str, str],
    ) -> None:
        self._blobs = blobs
        self._schema = schema
        self._reported = list(zip(reported, weights, strict=True))
        self.skipped = skipped
        """Worker id -> why its diff was left out (filled as diffs are read)."""
        self._readers: list[StoredDiffReader] | None = None

    def whole(self) -> Iterator[Contribution]:
        for assignment, weight in self._reported:
            diff = self._whole(assignment)
            if diff is not None:
                yield Contribution(diff=diff, weight=weight)
            del diff  # before the next diff is fetched: one diff in memory at a time

    def _whole(self, assignment: Assignment) -> Tensors | None:
        """The diff as numpy views over its bytes as received (no decoded copy); ``None``
        if it is left out."""
        try:
            data = self._blobs.get(_object_of(assignment))
            return validate_diff(view_state(data, WHAT), self._schema)
        except FireGridError as unusable:
            self.leave_out(assignment.worker_id, unusable)
            return None

    def sliced(self) -> list[StoredDiffReader]:
        if self._readers is None:
            self._readers = []
            for assignment, weight in self._reported:
                try:
                    self._readers.append(self._reader(assignment, weight))
                except FireGridError as unusable:
                    self.leave_out(assignment.worker_id, unusable)
        return [r for r in self._readers if r.worker_id not in self.skipped]

    def _reader(self, assignment: Assignment, weight: float) -> StoredDiffReader:
        name = _object_of(assignment)
        layout = read_layout(lambda start, stop: self._blobs.get_range(name, start, stop), WHAT)
        check_specs({n: TensorSpec(t.dtype, t.shape) for n, t in layout.items()}, self._schema)
        return StoredDiffReader(self, assignment.worker_id, name, layout, weight)

    def leave_out(self, worker_id: str, unusable: FireGridError) -> None:
        self.skipped[worker_id] = unusable.code
        log.warning("diff of %s left out: %s", redact(worker_id), unusable.message)

    def read_range(self, name: str, start: int, stop: int) -> bytes:
        data = self._blobs.get_range(name, start, stop)
        if len(data) != stop - start:
            raise BadRequest(f"{WHAT} ends before its tensors do", "invalid_safetensors")
        return data


@dataclass(frozen=True)
class _Span:
    """One piece's bytes in the file, and where its values go in the slice."""

    begin: int
    end: int
    dtype: np.dtype[np.generic]
    out: int
    name: str


class StoredDiffReader:
    """One diff's slices, by ranged reads; pieces adjacent in the file share a read."""

    def __init__(
        self,
        diffs: StoredDiffs,
        worker_id: str,
        name: str,
        layout: dict[str, TensorLayout],
        weight: float,
    ) -> None:
        self._diffs = diffs
        self.worker_id = worker_id
        self._name = name
        self._layout = layout
        self.weight = weight

    def read(self, pieces: Slice) -> Floats:
        try:
            return self._read(pieces)
        except FireGridError as unusable:
            self._diffs.leave_out(self.worker_id, unusable)
            raise UnusableDiff(unusable.message, unusable.code) from unusable

    def _read(self, pieces: Slice) -> Floats:
        values = np.empty(sum(p.stop - p.start for p in pieces), dtype=np.float64)
        for run in _adjacent(self._spans(pieces)):
            data = self._diffs.read_range(self._name, run[0].begin, run[-1].end)
            for span in run:
                raw = data[span.begin - run[0].begin : span.end - run[0].begin]
                part = np.frombuffer(raw, dtype=span.dtype)
                check_finite(part, span.name)
                values[span.out : span.out + len(part)] = part
        return values

    def _spans(self, pieces: Slice) -> list[_Span]:
        spans, out = [], 0
        for piece in pieces:
            tensor = self._layout[piece.name]
            size = tensor.itemsize
            spans.append(
                _Span(
                    begin=tensor.begin + piece.start * size,
                    end=tensor.begin + piece.stop * size,
                    dtype=np.dtype(tensor.dtype).newbyteorder("<"),
                    out=out,
                    name=piece.name,
                )
            )
            out += piece.stop - piece.start
        return spans


def _adjacent(spans: list[_Span]) -> Iterator[list[_Span]]:
    """Spans in file order, grouped where each starts where the previous ended."""
    run: list[_Span] = []
    for span in sorted(spans, key=lambda s: s.begin):
        if run and span.begin != run[-1].end:
            yield run
            run = []
        run.append(span)
    if run:
        yield run


def _object_of(assignment: Assignment) -> str:
    if assignment.diff_object is None:
        raise NotFound("the report names no diff object", "missing_object")
    return assignment.diff_object
