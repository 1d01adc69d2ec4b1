"""Faults the local stack injects, as the platform produces them: trigger deliveries
duplicated, dropped, delayed and reordered, and scheduler ticks skipped.

``firegrid stack up --faults duplicate=0.3,drop=0.1,delay=1,reorder=0.2 --fault-seed 7``:
each probability applies to each delivery independently; ``delay`` is the most a
delivery waits (uniformly drawn); a ``reorder``ed delivery is held back until the
next one has gone out (or ``HOLD_MAX_S`` passed). ``drop`` also skips scheduler ticks.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass

PROBABILITIES = ("duplicate", "drop", "reorder")
HOLD_MAX_S = 2.0
"""The longest a reordered delivery waits for a later one to overtake it."""


@dataclass(frozen=True, kw_only=True)
class Faults:
    duplicate: float = 0.0
    drop: float = 0.0
    delay: float = 0.0
    """Seconds: each delivery waits a uniform draw in ``[0, delay]``."""
    reorder: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """``"duplicate=0.3,drop=0.1,delay=1"``; ValueError with the reason otherwise."""
        values: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, sep, text = item.partition("=")
            if not sep or name not in (*PROBABILITIES, "delay"):
                raise ValueError(
                    f"fault '{item}' is not one of duplicate=P, drop=P, delay=SECONDS, reorder=P"
                )
            if name in values:
                raise ValueError(f"fault '{name}' is given twice")
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"fault '{name}' needs a number, not '{text}'") from None
            limit = 60.0 if name == "delay" else 1.0
            if not 0.0 <= value <= limit:
                raise ValueError(f"fault '{name}' must be between 0 and {limit:g}")
            values[name] = value
        return cls(**values)

    def __bool__(self) -> bool:
        return any((self.duplicate, self.drop, self.delay, self.reorder))

    def __str__(self) -> str:
        return ",".join(f"{name}={getattr(self, name):g}" for name in (*PROBABILITIES, "delay"))


@dataclass(frozen=True, kw_only=True)
class Fate:
    """What happens to one delivery."""

    copies: list[float]
    """The delay of each copy sent, in seconds: [] when dropped, two when duplicated."""
    held: bool
    """Held back until a later delivery went out."""


class Injector:
    """Draws each delivery's fate from one seeded generator and counts what it injected."""

    def __init__(self, faults: Faults, seed: int) -> None:
        self.faults = faults
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.injected: Counter[str] = Counter()

    def fate(self) -> Fate:
        faults = self.faults
        with self._lock:
            self.injected["deliveries"] += 1
            if self._rng.random() < faults.drop:
                self.injected["dropped"] += 1
                return Fate(copies=[], held=False)
            count = 2 if self._rng.random() < faults.duplicate else 1
            delays = [self._rng.uniform(0.0, faults.delay) for _ in range(count)]
            held = self._rng.random() < faults.reorder
            self.injected["duplicated"] += count - 1
            self.injected["delayed"] += sum(1 for delay in delays if delay > 0)
            self.injected["reordered"] += held
            return Fate(copies=delays, held=held)

    def skips_tick(self) -> bool:
        with self._lock:
            return self._rng.random() < self.faults.drop
