"""Detached child processes: start, wait until ready, stop by process group.

Every server of the stack runs in its own session so that ``stack down`` (maybe
from another shell, long after ``stack up`` returned) can stop it and all its
children with one signal, and so that Ctrl-C in the starting shell does not.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import requests

HOST = "127.0.0.1"


class StackError(RuntimeError):
    """The local stack cannot start, or is not in the state a command needs."""


def free_port() -> int:
    """A port the OS considers free now (a later bind may still race, rarely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


_DETACHED: list[subprocess.Popen[bytes]] = []
"""Servers meant to outlive their Popen handle: kept so collecting it never warns mid-run."""


def spawn(
    name: str, argv: list[str], log_dir: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` detached, with stdout and stderr in ``<log_dir>/<name>.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.log", "wb") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    _DETACHED.append(process)
    return process


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers never see half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def wait_until_ready(
    name: str,
    process: subprocess.Popen[bytes],
    probe: Callable[[], bool],
    log_path: Path,
    timeout_s: float,
) -> None:
    """Poll ``probe`` until it is true; fail fast if the process exits first."""
    deadline = time.monotonic() + timeout_s
    while True:
        code = process.poll()
        if code is not None:
            raise StackError(
                f"{name} exited with status {code} while starting; last lines of {log_path}:\n"
                f"{log_tail(log_path)}"
            )
        if probe():
            return
        if time.monotonic() > deadline:
            raise StackError(
                f"{name} was not ready within {timeout_s:.0f} s; last lines of {log_path}:\n"
                f"{log_tail(log_path)}"
            )
        time.sleep(0.05)


def http_probe(url: str, expect_body: str | None = None) -> Callable[[], bool]:
    """A probe that is true once ``url`` answers HTTP (with ``expect_body`` if given)."""

    def probe() -> bool:
        try:
            response = requests.get(url, timeout=1)
        except requests.RequestException:
            return False
        return expect_body is None or response.text.strip() == expect_body

    return probe


def is_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as dead."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def stop_process_groups(pids: Iterable[int], grace_s: float = 5.0) -> None:
    """SIGTERM each pid's process group, wait up to ``grace_s``, then SIGKILL.

    Each pid leads its own group (``start_new_session``), so the group signal
    reaches gunicorn's workers and the JVM's children as well.
    """
    alive = [pid for pid in pids if is_alive(pid)]
    for pid in alive:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if is_alive(pid)]
    for pid in alive:
        _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if is_alive(pid)]


def kill_group(pid: int) -> None:
    """SIGKILL what is left of ``pid``'s process group (its leader may be gone already)."""
    _signal_group(pid, signal.SIGKILL)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)
