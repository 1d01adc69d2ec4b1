"""The local stand-in for Cloud Scheduler: POST the tick every N seconds.

A failed tick is logged and the loop goes on, as Cloud Scheduler would simply
fire again at the next slot.

Run: ``python -m firegrid.local.scheduler --url URL/tick --token T --interval 5``.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable

import requests

from firegrid.settings import ADMIN_TOKEN_ENV

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
) -> None:
    """Tick every ``interval_s`` seconds (forever unless ``ticks`` is given)."""
    done = 0
    next_at = clock()
    while ticks is None or done < ticks:
        try:
            response = tick(url, token)
            if response.ok:
                log.info("tick -> %d", response.status_code)
            else:
                log.warning("tick -> %d %s", response.status_code, response.text[:500])
        except Exception:
            log.exception("tick failed")
        done += 1
        next_at = max(next_at + interval_s, clock())
        if ticks is None or done < ticks:
            sleep(max(0.0, next_at - clock()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="FireGrid local scheduler loop")
    parser.add_argument("--url", required=True)
    parser.add_argument(
        "--token",
        default=os.environ.get(ADMIN_TOKEN_ENV),
        help=f"admin bearer token (default: ${ADMIN_TOKEN_ENV}, which keeps it out of ps)",
    )
    parser.add_argument("--interval", type=float, required=True)
    args = parser.parse_args(argv)
    if not args.token:
        parser.error(f"--token or ${ADMIN_TOKEN_ENV} is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    run(args.url, args.token, args.interval)


if __name__ == "__main__":
    main()
