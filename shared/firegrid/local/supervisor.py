"""Restart what dies, as the platform starts a new instance: the local stack's
functions server, trigger router and scheduler run under this supervisor.

Each child runs in its own session (so killing a child's process group leaves the
supervisor alone) with its output appended to ``<log_dir>/<name>.log``. The
supervisor keeps ``<dir>/supervisor.json`` (each child's pid, restarts and last exit)
and the ``pids`` of ``<dir>/stack.json`` naming each child itself, so ``stack down``
and tests always reach the live process. A child that dies within ``FAST_EXIT_S`` of
starting is restarted with a doubling back-off, so a broken one does not spin. On
SIGTERM the supervisor stops its children and exits.

Run: ``python -m firegrid.local.supervisor --dir D --log-dir L --child NAME ARGV_JSON ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from firegrid.local._process import kill_group, stop_process_groups, write_atomically

log = logging.getLogger("firegrid.supervisor")

STATE_FILE = "supervisor.json"
STACK_FILE = "stack.json"
POLL_S = 0.2
FAST_EXIT_S = 5.0
"""A child that exits sooner than this after starting is restarted with back-off."""
MAX_BACKOFF_S = 10.0


@dataclass
class Child:
    name: str
    argv: list[str]
    pid: int = 0
    restarts: int = 0
    last_exit: int | None = None
    started_at: float = 0.0
    backoff_s: float = field(default=0.0, repr=False)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)


def state_of(children: list[Child]) -> dict[str, dict[str, int | None]]:
    return {
        child.name: {"pid": child.pid, "restarts": child.restarts, "last_exit": child.last_exit}
        for child in children
    }


def read_state(directory: Path) -> dict[str, dict[str, int | None]]:
    """``supervisor.json``: each child's pid, restarts and last exit status ({} if none)."""
    try:
        state: dict[str, dict[str, int | None]] = json.loads((directory / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state


class Supervisor:
    def __init__(self, directory: Path, log_dir: Path, children: list[Child]) -> None:
        self.directory, self.log_dir, self.children = directory, log_dir, children
        self._stopping = threading.Event()

    def run(self) -> None:
        for child in self.children:
            self._start(child)
        self._publish()
        while not self._stopping.wait(POLL_S):
            changed = False
            for child in self.children:
                if self._stopping.is_set():
                    break
                changed |= self._check(child)
            if changed:
                self._publish()
            else:
                self._sync_stack_file()  # a stack.json written after our last change
        stop_process_groups(child.pid for child in self.children if child.pid)
        log.info("supervisor stopped")

    def stop(self, *_: object) -> None:
        self._stopping.set()

    def _start(self, child: Child) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{child.name}.log", "ab") as output:
            child.process = subprocess.Popen(
                child.argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child.pid, child.started_at = child.process.pid, time.monotonic()
        log.info("%s started (pid %d)", child.name, child.pid)

    def _check(self, child: Child) -> bool:
        """Restart ``child`` if it died; True if it was restarted."""
        assert child.process is not None
        code = child.process.poll()
        if code is None:
            return False
        lived_s = time.monotonic() - child.started_at
        child.backoff_s = (
            min(max(2 * child.backoff_s, 0.5), MAX_BACKOFF_S) if lived_s < FAST_EXIT_S else 0.0
        )
        log.warning(
            "%s (pid %d) exited with %s after %.1f s; restarting%s",
            *(child.name, child.pid, code, lived_s),
            f" in {child.backoff_s:.1f} s" if child.backoff_s else "",
        )
        kill_group(child.pid)  # what the dead leader left behind (gunicorn's worker)
        if self._stopping.wait(child.backoff_s):
            return False
        child.restarts += 1
        child.last_exit = code
        self._start(child)
        return True

    def _publish(self) -> None:
        write_atomically(self.directory / STATE_FILE, json.dumps(state_of(self.children)))
        self._sync_stack_file()

    def _sync_stack_file(self) -> None:
        path = self.directory / STACK_FILE
        try:
            stack = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        pids = stack.get("pids", {})
        current = {child.name: child.pid for child in self.children}
        if all(pids.get(name) == pid for name, pid in current.items()):
            return
        stack["pids"] = pids | current
        write_atomically(path, json.dumps(stack, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="FireGrid local supervisor")
    parser.add_argument("--dir", type=Path, required=True, help="the stack's state directory")
    parser.add_argument("--log-dir", type=Path, required=True)
    parser.add_argument(
        "--child",
        nargs=2,
        action="append",
        required=True,
        metavar=("NAME", "ARGV_JSON"),
        help="a child to run and restart: its name and its argv as a JSON list",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    children = [Child(name=name, argv=json.loads(command)) for name, command in args.child]
    supervisor = Supervisor(args.dir, args.log_dir, children)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        supervisor.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    supervisor.run()


if __name__ == "__main__":
    main()
