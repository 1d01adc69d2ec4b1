"""Leases on the work of a closing: one attempt at a time aggregates a cycle (or a
fan-out group), and every write it makes is fenced by its lease.

A lease is taken by one attempt (a random holder id) for ``closing_lease_s`` and
renewed in the background every third of that while the work goes on. A dead
attempt stops renewing, so its work is re-driven one lease after its last renewal;
an attempt overtaken after its lease ran out finds the holder changed and stops.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Generic, Protocol, TypeVar

from firegrid.services.context import Context

log = logging.getLogger(__name__)


class Leasable(Protocol):
    """A record holding an aggregation lease: a ``Cycle`` or a fan-out ``Group``."""

    def take_lease(self, now: datetime, until: datetime, holder: str) -> Leasable | None: ...

    def renew_lease(self, holder: str, until: datetime) -> Leasable | None: ...


T = TypeVar("T", bound=Leasable)
Update = Callable[[Callable[[T], T | None]], T | None]
"""Apply a change to the stored record atomically (``Repository.update_cycle`` and kin)."""


class LeaseLost(Exception):
    """Another attempt took the lease: this one must write nothing more."""


class Lease(Generic[T]):
    """One attempt's lease on a record, kept while the work goes on."""

    def __init__(self, ctx: Context, update: Update[T], what: str) -> None:
        self.ctx, self._update, self.what = ctx, update, what
        self.holder = secrets.token_hex(8)
        self.length = timedelta(seconds=ctx.settings.closing_lease_s)
        self._lost = threading.Event()
        self._stop = threading.Event()

    def take(self) -> T | None:
        now = self.ctx.clock.now()
        return self.update(self._taken(now))

    def _taken(self, now: datetime) -> Callable[[T], T | None]:
        def change(record: T) -> T | None:
            return record.take_lease(now, now + self.length, self.holder)  # type: ignore[return-value]

        return change

    def update(self, change: Callable[[T], T | None]) -> T | None:
        return self._update(change)

    def check(self) -> None:
        """Raise ``LeaseLost`` once a renewal found the lease taken by another attempt."""
        if self._lost.is_set():
            raise LeaseLost

    @contextmanager
    def kept(self) -> Iterator[Lease[T]]:
        renewer = threading.Thread(target=self._renew, name="lease-renewer", daemon=True)
        renewer.start()
        try:
            yield self
        finally:
            self._stop.set()
            renewer.join()

    def _renewed(self, record: T) -> T | None:
        return record.renew_lease(self.holder, self.ctx.clock.now() + self.length)  # type: ignore[return-value]

    def _renew(self) -> None:
        every = self.length.total_seconds() / 3
        while not self._stop.wait(every):
            try:
                if self.update(self._renewed) is None:
                    self._lost.set()
                    return
            except Exception:  # a missed renewal is retried; the lease outlasts two of them
                log.warning("renewing the lease of %s failed", self.what)
