"""``firegrid stack up|down|status|env``: run the local stack from a shell."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Any

import requests

from firegrid.commands._common import CommandError
from firegrid.local import supervisor
from firegrid.local.faults import Faults
from firegrid.local.router import STATUS_PATH
from firegrid.local.scheduler import STATE_FILE as SCHEDULER_STATE
from firegrid.local.scheduler import read_counts
from firegrid.local.stack import DEFAULT_DIR, StackInfo, load_stack, start_stack, stop_stack


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("stack", help="start, stop or inspect the local emulator stack")
    verbs = parser.add_subparsers(dest="stack_verb", required=True, metavar="up|down|status|env")

    up = verbs.add_parser("up", help="start the emulators, the functions and the trigger router")
    up.add_argument("--tick-seconds", type=float, default=5.0,
                    help="scheduler interval; 0 runs no scheduler (default 5)")  # fmt: skip
    up.add_argument("--threads", type=int, default=32, help="functions server threads")
    up.add_argument("--faults", default="", metavar="duplicate=P,drop=P,delay=S,reorder=P",
                    help="make trigger deliveries and ticks misbehave")  # fmt: skip
    up.add_argument("--fault-seed", type=int, default=0, help="seed of the fault draws (default 0)")
    up.set_defaults(handler=up_command)

    down = verbs.add_parser("down", help="stop exactly the processes `stack up` started")
    down.set_defaults(handler=down_command)

    status = verbs.add_parser("status", help="show URLs and whether each process is alive")
    status.set_defaults(handler=status_command)

    env = verbs.add_parser(
        "env", help='print exports for the emulators: eval "$(firegrid stack env)"'
    )
    env.set_defaults(handler=env_command)

    for verb in (up, down, status, env):
        verb.add_argument(
            "--dir", type=Path, default=DEFAULT_DIR, help="state directory (default .firegrid)"
        )


def up_command(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        Faults.parse(args.faults)
    except ValueError as error:
        raise CommandError(f"--faults: {error}") from None
    info = start_stack(
        args.dir,
        tick_seconds=args.tick_seconds,
        threads=args.threads,
        faults=args.faults,
        fault_seed=args.fault_seed,
    )
    print(f"FireGrid stack up in {time.monotonic() - started:.1f} s ({info.path})")
    _print_urls(info)
    return 0


def down_command(args: argparse.Namespace) -> int:
    info = stop_stack(args.dir)
    if info is None:
        print(f"No FireGrid stack in {args.dir}")
    else:
        print(f"Stopped {', '.join(f'{name} ({pid})' for name, pid in info.pids.items())}")
    return 0


def status_command(args: argparse.Namespace) -> int:
    info = load_stack(args.dir)
    print(f"FireGrid stack started {info.started_at:%Y-%m-%d %H:%M:%S %Z} ({info.path})")
    _print_urls(info)
    alive = info.alive()
    restarts = supervisor.read_state(info.path.parent)
    for name, pid in info.current_pids().items():
        restarted = restarts.get(name, {}).get("restarts") or 0
        note = f"  restarted {restarted}x" if restarted else ""
        print(f"  {name:<10} pid {pid:<8} {'alive' if alive[name] else 'DEAD'}{note}")
    if info.faults:
        _print_faults(info)
    return 0 if all(alive.values()) else 1


def _print_faults(info: StackInfo) -> None:
    """What the router and the scheduler injected so far."""
    try:
        injected = requests.get(f"{info.router_url}{STATUS_PATH}", timeout=5).json()["faults"]
    except (requests.RequestException, ValueError, KeyError):
        print("    router: unreachable")
    else:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(injected["injected"].items()))
        print(f"    router: {counts or 'no deliveries yet'}")
    ticks = read_counts(info.path.parent / SCHEDULER_STATE)
    if ticks:
        print(f"    scheduler: {', '.join(f'{k} {v}' for k, v in sorted(ticks.items()))}")


def env_command(args: argparse.Namespace) -> int:
    for key, value in load_stack(args.dir).client_env().items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def _print_urls(info: StackInfo) -> None:
    tick = f"every {info.tick_seconds:g} s" if info.tick_seconds > 0 else "off (firegrid tick)"
    print(f"  functions  {info.base_url}/<name>   e.g. {info.base_url}/model-centric")
    print(f"  firestore  {info.firestore_host}")
    print(f"  storage    {info.storage_host}   bucket {info.bucket}")
    print(f"  router     {info.router_url}")
    if info.fcm_url:
        print(f"  fcm        {info.fcm_url}/_fcm/messages")
    print(f"  project    {info.project_id}")
    print(f"  scheduler  {tick}")
    if info.faults:
        print(f"  faults     {info.faults} (seed {info.fault_seed})")
    print(f"  logs       {info.log_dir}")
