"""Count the Firestore reads and writes of the local functions server, per route and per
document (benchmarks only; never deployed).

With ``FIREGRID_COUNT_OPS=<file>`` in its environment, the functions server counts every
document its Firestore RPCs return or commit, attributes each to the HTTP route (function
and path) being served on that thread, and rewrites ``<file>`` as JSON a few times a
second. It counts at the RPC layer (``FirestoreClient``), below the repository, so a
query that lists documents counts each one, as Firestore bills them: a document returned
by a lookup or a query is a read, an aggregation (``count()``) one read, a write in a
committed batch or transaction one write (a commit refused, such as a create that found
its document, is counted apart as ``refused``).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from google.cloud.firestore_v1.services.firestore.client import FirestoreClient

from firegrid.local._process import write_atomically

DUMP_EVERY_S = 0.25
BACKGROUND = "(background)"
"""The route of work no request is serving on its thread (lease renewals, re-drives)."""
_DOCUMENTS = "/documents/"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class OpCounts:
    """Counters, thread-safe; ``snapshot`` is what the file holds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        self.requests: Counter[str] = Counter()
        self.reads: Counter[str] = Counter()
        self.writes: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.doc_reads: Counter[str] = Counter()
        self.doc_writes: Counter[str] = Counter()

    @property
    def route(self) -> str:
        return getattr(self._local, "route", BACKGROUND)

    def serving(self, route: str | None) -> None:
        self._local.route = route or BACKGROUND
        if route is not None:
            with self._lock:
                self.requests[route] += 1

    def read(self, names: Iterable[str]) -> None:
        self._add(self.reads, self.doc_reads, names)

    def wrote(self, names: Iterable[str]) -> None:
        self._add(self.writes, self.doc_writes, names)

    def refuse(self, names: Iterable[str]) -> None:
        with self._lock:
            self.refused[self.route] += len(list(names))

    def _add(self, per_route: Counter[str], per_doc: Counter[str], names: Iterable[str]) -> None:
        paths = [_path(name) for name in names]
        with self._lock:
            per_route[self.route] += len(paths)
            per_doc.update(paths)

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "reads": dict(self.reads),
                "writes": dict(self.writes),
                "refused": dict(self.refused),
                "doc_reads": dict(self.doc_reads),
                "doc_writes": dict(self.doc_writes),
            }


def _path(name: str) -> str:
    """``processes/p/cycles/1`` from ``projects/x/databases/(default)/documents/processes/...``."""
    return name.split(_DOCUMENTS, 1)[-1]


def _field(request: Any, name: str) -> Any:
    return request[name] if isinstance(request, dict) else getattr(request, name)


def _written(request: Any) -> list[str]:
    return [w.update.name or w.delete for w in _field(request, "writes")]


def install(counts: OpCounts) -> None:
    """Count every document the Firestore RPCs of this process read or write."""
    batch_get, run_query = FirestoreClient.batch_get_documents, FirestoreClient.run_query
    aggregate, commit = FirestoreClient.run_aggregation_query, FirestoreClient.commit

    def batch_get_documents(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        for response in batch_get(self, *args, **kwargs):
            counts.read([response.found.name or response.missing])
            yield response

    def run_query_counted(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        for response in run_query(self, *args, **kwargs):
            if response.document.name:
                counts.read([response.document.name])
            yield response

    def run_aggregation_query(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts.read([f"(count) {_field(kwargs['request'], 'parent')}"])
        return aggregate(self, *args, **kwargs)

    def commit_counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        names = _written(kwargs["request"])
        try:
            result = commit(self, *args, **kwargs)
        except Exception:
            counts.refuse(names)
            raise
        counts.wrote(names)
        return result

    FirestoreClient.batch_get_documents = batch_get_documents  # type: ignore[method-assign]
    FirestoreClient.run_query = run_query_counted  # type: ignore[method-assign]
    FirestoreClient.run_aggregation_query = run_aggregation_query  # type: ignore[method-assign]
    FirestoreClient.commit = commit_counted  # type: ignore[method-assign]


def counting(app: WSGIApp, path: Path) -> WSGIApp:
    """``app``, with every request's Firestore operations counted into ``path``."""
    counts = OpCounts()
    install(counts)
    dumping = threading.Lock()
    dumper: list[threading.Thread] = []

    def dump() -> None:
        while True:
            write_atomically(path, json.dumps(counts.snapshot()))
            time.sleep(DUMP_EVERY_S)

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with dumping:  # started by the first request: gunicorn forks its worker after loading
            if not dumper:
                dumper.append(threading.Thread(target=dump, name="op-counts", daemon=True))
                dumper[0].start()
        counts.serving(environ.get("PATH_INFO", "/"))
        try:
            return app(environ, start_response)
        finally:
            counts.serving(None)

    return wrapped
