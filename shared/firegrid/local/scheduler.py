"""The local stand-in for Cloud Scheduler: POST the tick every N seconds.

A failed tick is logged and the loop goes on, as Cloud Scheduler would simply
fire again at the next slot. With ``--faults ...drop=P...`` it skips each tick with
probability P. ``--state FILE`` keeps its counts (ticks, skipped, failed) there, for
``firegrid stack status``, continued across restarts.

Run: ``python -m firegrid.local.scheduler --url URL/tick --token T --interval 5``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import requests

from firegrid.local._process import write_atomically
from firegrid.local.faults import Faults, Injector
from firegrid.settings import ADMIN_TOKEN_ENV

STATE_FILE = "scheduler.json"

log = logging.getLogger("firegrid.scheduler")


def tick_once(url: str, token: str, timeout_s: float = 600.0) -> requests.Response:
    return requests.post(url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s)


def run(
    url: str,
    token: str,
    interval_s: float,
    *,
    ticks: int | None = None,
    tick: Callable[[str, str], requests.Response] = tick_once,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    injector: Injector | None = None,
    state: Path | None = None,
) -> None:
    """Tick every ``interval_s`` seconds (forever unless ``ticks`` is given)."""
    counts = Counter(read_counts(state)) if state else Counter()
    done = 0
    next_at = clock()
    while ticks is None or done < ticks:
        counts["ticks"] += 1
        if injector is not None and injector.skips_tick():
            counts["skipped"] += 1
            log.info("tick skipped (fault)")
        else:
            counts["failed"] += not _tick(url, token, tick)
        if state is not None:
            write_atomically(state, json.dumps(counts))
        done += 1
        next_at = max(next_at + interval_s, clock())
        if ticks is None or done < ticks:
            sleep(max(0.0, next_at - clock()))


def _tick(url: str, token: str, tick: Callable[[str, str], requests.Response]) -> bool:
    try:
        response = tick(url, token)
    except Exception:
        log.exception("tick failed")
        return False
    if response.ok:
        log.info("tick -> %d", response.status_code)
    else:
        log.warning("tick -> %d %s", response.status_code, response.text[:500])
    return response.ok


def read_counts(state: Path) -> dict[str, int]:
    """The counts a scheduler kept in ``state`` ({} when there are none yet)."""
    try:
        counts: dict[str, int] = json.loads(state.read_text())
    except (OSError, ValueError):
        return {}
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="FireGrid local scheduler loop")
    parser.add_argument("--url", required=True)
    parser.add_argument(
        "--token",
        default=os.environ.get(ADMIN_TOKEN_ENV),
        help=f"admin bearer token (default: ${ADMIN_TOKEN_ENV}, which keeps it out of ps)",
    )
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--state", type=Path, help="file to keep the tick counts in")
    parser.add_argument("--faults", default="", help="drop=P skips each tick with probability P")
    parser.add_argument("--fault-seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.token:
        parser.error(f"--token or ${ADMIN_TOKEN_ENV} is required")
    try:
        faults = Faults.parse(args.faults)
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # Its own stream of draws: the router's seed would replay the same choices.
    injector = Injector(faults, args.fault_seed + 1) if faults.drop else None
    run(args.url, args.token, args.interval, injector=injector, state=args.state)


if __name__ == "__main__":
    main()
