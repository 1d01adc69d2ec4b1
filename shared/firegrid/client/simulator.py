"""Many simulated devices against any FireGrid base URL, with realistic availability.

Each device is a ``firegrid.client.device.Device`` speaking HTTP. Accepted
devices train and report, unless they drop out (``dropout``) or are slow
(``slow_fraction``, reporting ``slow_delay_s`` later, possibly after the
deadline); every device may add a ``latency_s``. Concurrency is bounded. Two
ways to decide when a device asks:

* push (with an inbox): devices register an FCM token and act on pushes only:
  ``request_for_cycle``, ``cycle_completed`` and ``cycle_reset`` make an online
  device ask for a cycle, ``worker_online_status`` makes it confirm (or withdraw)
  its availability, ``fl_completed`` stops it. No polling loop.
* polling (no inbox, e.g. against a deployment): at every wave the online
  devices that are not waiting out a rejection's ``timeout`` ask.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import requests

from firegrid.client.device import CycleResult, Device, LocalData, Outcome
from firegrid.client.inbox import LocalFcmInbox
from firegrid.client.protocol import ServerError
from firegrid.domain.push import PushType

if TYPE_CHECKING:
    from firegrid.client.data import FederatedDataset

log = logging.getLogger(__name__)

_ASK_FOR_A_CYCLE = frozenset(
    {PushType.REQUEST_FOR_CYCLE, PushType.CYCLE_COMPLETED, PushType.CYCLE_RESET}
)


@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    devices: int
    """How many devices take part."""
    concurrency: int = 4
    """Devices working at once (threads)."""
    online_fraction: float = 1.0
    """Probability that a device is online when it could ask for a cycle."""
    dropout: float = 0.0
    """Probability that an accepted device leaves after downloading (never reports)."""
    slow_fraction: float = 0.0
    """Fraction of devices that are slow."""
    slow_delay_s: float = 2.0
    """Extra seconds a slow device takes before reporting."""
    latency_s: float = 0.0
    """Seconds every device adds before reporting: a phone trains and uploads slower than
    this machine's CPU, and the stragglers' effect depends on the ratio."""
    poll_s: float = 0.25
    """Pause between waves."""
    time_limit_s: float = 600.0
    """Give up after this long."""
    seed: int = 0
    """Makes availability, drop-outs and training reproducible."""


@dataclass
class CycleTally:
    reported: int = 0
    dropped: int = 0
    late: int = 0
    rejected: int = 0
    accuracy_sum: float = 0.0
    accuracy_weight: int = 0

    @property
    def local_accuracy(self) -> float | None:
        return self.accuracy_sum / self.accuracy_weight if self.accuracy_weight else None


@dataclass
class SimulationSummary:
    cycles: dict[int, CycleTally] = field(default_factory=lambda: defaultdict(CycleTally))
    outcomes: Counter[str] = field(default_factory=Counter)
    completed: bool = False
    seconds: float = 0.0

    def table(self) -> str:
        lines = [f"{'cycle':>5} {'reported':>8} {'dropped':>7} {'late':>4} {'local acc':>9}"]
        for cycle_id in sorted(self.cycles):
            tally = self.cycles[cycle_id]
            accuracy = tally.local_accuracy
            shown = f"{accuracy:.3f}" if accuracy is not None else "-"
            lines.append(
                f"{cycle_id:>5} {tally.reported:>8} {tally.dropped:>7} {tally.late:>4} {shown:>9}"
            )
        outcome_text = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        status = "training completed" if self.completed else "stopped before completion"
        lines.append(f"{status} in {self.seconds:.1f}s; device outcomes: {outcome_text}")
        return "\n".join(lines)


@dataclass
class _SimulatedDevice:
    device: Device
    index: int
    slow: bool
    retry_at: float = 0.0
    busy: bool = False
    done: bool = False
    pending: str | None = None
    """A cycle-asking push that came while busy: acted on once idle (its start key, or "")."""


class Simulator:
    def __init__(
        self,
        base_url: str,
        model: str,
        shards: list[LocalData],
        config: SimulationConfig,
        *,
        version: str | None = None,
        tokens: list[str] | None = None,
        on_cycle_done: Callable[[int], float | None] | None = None,
        expected_cycles: int | None = None,
        progress: bool = True,
        inbox: LocalFcmInbox | None = None,
    ) -> None:
        """``on_cycle_done(n)`` runs when cycle n is seen completed; it may return an accuracy."""
        if len(shards) < config.devices:
            raise ValueError(
                f"{config.devices} devices need as many data shards, got {len(shards)}"
            )
        self.config = config
        self._rng = random.Random(config.seed)
        self._devices = [
            _SimulatedDevice(
                device=Device(
                    base_url,
                    model,
                    shards[i],
                    version=version,
                    auth_token=tokens[i] if tokens else None,
                    seed=config.seed * 7919 + i,
                ),
                index=i,
                slow=self._rng.random() < config.slow_fraction,
            )
            for i in range(config.devices)
        ]
        self._on_cycle_done = on_cycle_done
        self._expected_cycles = expected_cycles
        self._progress = progress
        self._inbox = inbox
        self._process = {"model": model} | ({"version": version} if version else {})
        self._by_token = {f"sim-{config.seed}-{i}": d for i, d in enumerate(self._devices)}
        self.summary = SimulationSummary()
        self.last_accuracy: float | None = None
        self._highest_cycle = 0

    def run(self) -> SimulationSummary:
        started = time.monotonic()
        bar = self._bar()
        futures: dict[Future[CycleResult | None], _SimulatedDevice] = {}
        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            if self._inbox is not None:
                list(pool.map(self._join_pool, self._by_token.items()))
            while not all(d.done for d in self._devices):
                if time.monotonic() - started > self.config.time_limit_s:
                    break
                for sim, task in self._due():
                    sim.busy = True
                    futures[pool.submit(task)] = sim
                finished, _ = wait(futures, timeout=self.config.poll_s, return_when=FIRST_COMPLETED)
                for future in finished:
                    self._record(futures.pop(future), future.result())
                if bar is not None:
                    self._update_bar(bar, active=len(futures))
            for future, sim in futures.items():
                self._record(sim, future.result())
        self.summary.completed = all(d.done for d in self._devices)
        self.summary.seconds = time.monotonic() - started
        if bar is not None:
            self._update_bar(bar, active=0)
            bar.close()
        return self.summary

    def _due(self) -> list[tuple[_SimulatedDevice, Callable[[], CycleResult | None]]]:
        """The work to start now: devices answering pushes, or polling devices."""
        if self._inbox is None:
            return [(sim, partial(self._take_part, sim)) for sim in self._ready()]
        due: list[tuple[_SimulatedDevice, Callable[[], CycleResult | None]]] = []
        for waiting in self._devices:
            if waiting.pending is not None and not waiting.busy and not waiting.done:
                key, waiting.pending = waiting.pending or None, None
                due.append((waiting, partial(self._take_part, waiting, key)))
        for push in self._inbox.poll():
            sim = self._by_token.get(push.token)
            if sim is None or sim.done or not self._about_this_process(push.data):
                continue
            kind = push.data.get("type")
            if kind == PushType.FL_COMPLETED:
                sim.done = True
                if self._expected_cycles is not None:
                    self._see_cycle(self._expected_cycles + 1)
            elif kind == PushType.CYCLE_COMPLETED and push.data.get("cycle_id", "").isdigit():
                self._see_cycle(int(push.data["cycle_id"]))
            if sim.busy and kind in _ASK_FOR_A_CYCLE:
                sim.pending = push.data.get("cycle_start_request_key") or ""
            if sim.done or sim.busy or any(s is sim for s, _ in due):
                continue
            online = self._rng.random() < self.config.online_fraction
            if kind == PushType.WORKER_ONLINE_STATUS:
                due.append((sim, partial(self._confirm, sim, online)))
            elif kind in _ASK_FOR_A_CYCLE and online:
                key = push.data.get("cycle_start_request_key") or None
                due.append((sim, partial(self._take_part, sim, key)))
        self._rng.shuffle(due)  # devices answer a push in no particular order
        return due

    def _about_this_process(self, data: dict[str, str]) -> bool:
        """A token gets every process's pushes (an app filters them, as here): one run's
        ``fl_completed`` must not stop the next run's devices."""
        return all(data.get(key) == value for key, value in self._process.items())

    def _join_pool(self, entry: tuple[str, _SimulatedDevice]) -> None:
        token, sim = entry
        try:
            sim.device.register_token(token, ram_gb=1.0 if sim.slow else 4.0, cpu_cores=4)
        except (ServerError, requests.RequestException) as error:
            log.warning("device %s could not join the pool: %s", token, error)

    def _confirm(self, sim: _SimulatedDevice, online: bool) -> None:
        try:
            sim.device.set_available(online)
        except (ServerError, requests.RequestException) as error:
            log.warning("device %s: %s", sim.device.worker_id, error)

    def _ready(self) -> list[_SimulatedDevice]:
        now = time.monotonic()
        idle = [d for d in self._devices if not d.busy and not d.done and d.retry_at <= now]
        online = [d for d in idle if self._rng.random() < self.config.online_fraction]
        for device in idle:
            if device not in online:
                device.retry_at = now + self.config.poll_s * 4  # offline for a while
        return online

    def _drops_out(self, sim: _SimulatedDevice, cycle_id: int) -> bool:
        """Whether this device leaves this cycle: fixed by the seed, whatever the thread timing."""
        draw = random.Random(f"{self.config.seed}:{sim.index}:{cycle_id}").random()
        return draw < self.config.dropout

    def _take_part(self, sim: _SimulatedDevice, start_key: str | None = None) -> CycleResult:
        try:
            extra = {"cycle_start_request_key": start_key} if start_key else {}
            reply = sim.device.request(**extra)
            if isinstance(reply, CycleResult):
                return reply
            return sim.device.train_and_report(
                reply,
                drop=self._drops_out(sim, reply.cycle_id),
                delay_s=self.config.latency_s + (self.config.slow_delay_s if sim.slow else 0.0),
            )
        except (ServerError, requests.RequestException) as error:
            log.warning("device %s: %s", sim.device.worker_id, error)
            return CycleResult(outcome=Outcome.ERROR, reason=str(error))

    def _record(self, sim: _SimulatedDevice, result: CycleResult | None) -> None:
        sim.busy = False
        if result is None:
            return
        self.summary.outcomes[result.outcome.value] += 1
        if result.outcome is Outcome.COMPLETED:
            sim.done = True
            if self._expected_cycles is not None:
                self._see_cycle(self._expected_cycles + 1)
            return
        if result.outcome is Outcome.REJECTED:
            sim.retry_at = time.monotonic() + (result.timeout or 1)
            return
        if result.outcome is Outcome.ERROR:
            sim.retry_at = time.monotonic() + 1.0
            return
        assert result.cycle_id is not None
        self._see_cycle(result.cycle_id)
        tally = self.summary.cycles[result.cycle_id]
        if result.outcome is Outcome.REPORTED:
            tally.reported += 1
            if result.accuracy is not None:
                weight = len(sim.device.data.y_test)
                tally.accuracy_sum += result.accuracy * weight
                tally.accuracy_weight += weight
        elif result.outcome is Outcome.DROPPED:
            tally.dropped += 1
            sim.retry_at = time.monotonic() + self.config.slow_delay_s
        else:
            tally.late += 1

    def _see_cycle(self, cycle_id: int) -> None:
        """A device saw cycle ``cycle_id``: every cycle before it has completed."""
        while self._highest_cycle + 1 < cycle_id:
            self._highest_cycle += 1
            if self._on_cycle_done is not None:
                score = self._on_cycle_done(self._highest_cycle)
                if score is not None:
                    self.last_accuracy = score
        self._highest_cycle = max(self._highest_cycle, cycle_id - 1)

    def _bar(self) -> Any:
        if not self._progress:
            return None
        from tqdm import tqdm

        return tqdm(total=self._expected_cycles, desc="cycles", unit="cycle", dynamic_ncols=True)

    def _update_bar(self, bar: Any, active: int) -> None:
        bar.n = self._highest_cycle
        accuracy = "-" if self.last_accuracy is None else f"{self.last_accuracy:.3f}"
        bar.set_postfix_str(f"devices active {active}, last accuracy {accuracy}", refresh=False)
        bar.refresh()


def shards_of(dataset: FederatedDataset) -> list[LocalData]:
    """One device's data per user of a federated dataset."""
    return [
        LocalData(dataset.train[u].x, dataset.train[u].y, dataset.test[u].x, dataset.test[u].y)
        for u in dataset.users
    ]
