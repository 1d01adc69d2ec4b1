"""Start, describe, wipe and stop the local stack; its state is ``<dir>/stack.json``.

``start_stack`` launches every server detached and returns once all are ready,
so the stack outlives the command that started it; ``stop_stack`` (from any
process) stops exactly the pids recorded in ``stack.json``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import requests

from firegrid.local import fcm_endpoint, firestore_emulator, storage_emulator, supervisor
from firegrid.local._process import (
    HOST,
    StackError,
    free_port,
    http_probe,
    is_alive,
    spawn,
    stop_process_groups,
    wait_until_ready,
    write_atomically,
)
from firegrid.local.faults import Faults
from firegrid.local.router import STATUS_PATH
from firegrid.local.scheduler import STATE_FILE as SCHEDULER_STATE
from firegrid.manifest import FUNCTIONS
from firegrid.settings import (
    ADMIN_TOKEN_ENV,
    BUCKET_ENV,
    FCM_URL_ENV,
    FIRESTORE_EMULATOR_ENV,
    LOCAL_STACK_ENV,
    PROJECT_ENV,
    STORAGE_EMULATOR_ENV,
)

__all__ = ["StackError", "StackInfo", "load_stack", "start_stack", "stop_stack", "wipe"]

DEFAULT_DIR = Path(".firegrid")
DEFAULT_PROJECT = "demo-firegrid"
STACK_FILE = "stack.json"
REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_SOURCE = REPO_ROOT / "functions" / "main.py"

FIRESTORE_READY_S = 60.0
"""The JVM is ready in 1-2 s on an idle machine; allow for a loaded one."""
SERVER_READY_S = 30.0
QUIET_S = 0.3
"""How long the router must stay idle before ``wipe`` trusts its delete events are done."""


@dataclass(frozen=True, kw_only=True)
class StackInfo:
    """What a running stack offers; the contents of ``stack.json``."""

    base_url: str
    """Functions server, e.g. ``http://127.0.0.1:P``; a function is ``{base_url}/{name}``."""
    admin_token: str
    project_id: str
    bucket: str
    firestore_host: str
    """``127.0.0.1:P``, the value of ``FIRESTORE_EMULATOR_HOST``."""
    storage_host: str
    """``http://127.0.0.1:P``, the value of ``STORAGE_EMULATOR_HOST``."""
    router_url: str
    fcm_url: str = ""
    """Local FCM endpoint, ``http://127.0.0.1:P``; empty in a ``stack.json`` from before it."""
    tick_seconds: float
    """Scheduler interval; 0 means no scheduler runs."""
    faults: str = ""
    """Faults the router and scheduler inject (``duplicate=P,drop=P,delay=S,reorder=P``)."""
    fault_seed: int = 0
    pids: dict[str, int]
    """Each server's own pid, kept current by the supervisor when it restarts one."""
    started_at: datetime
    log_dir: str
    source: str
    """The ``functions/main.py`` being served."""
    path: Path = field(default=Path(), compare=False)
    """Where this stack's ``stack.json`` lives (not stored in the file)."""

    def client_env(self) -> dict[str, str]:
        """Environment for code that talks to this stack's emulators directly."""
        return {
            FIRESTORE_EMULATOR_ENV: self.firestore_host,
            STORAGE_EMULATOR_ENV: self.storage_host,
            PROJECT_ENV: self.project_id,
            BUCKET_ENV: self.bucket,
            ADMIN_TOKEN_ENV: self.admin_token,
            LOCAL_STACK_ENV: "1",
        } | ({FCM_URL_ENV: self.fcm_url} if self.fcm_url else {})

    def alive(self) -> dict[str, bool]:
        return {name: is_alive(pid) for name, pid in self.current_pids().items()}

    def current_pids(self) -> dict[str, int]:
        """``pids`` as the supervisor last wrote them (a restart changes a pid)."""
        try:
            return load_stack(self.path.parent).pids
        except StackError:
            return self.pids

    def to_json(self) -> str:
        data: dict[str, Any] = asdict(self)
        del data["path"]
        data["started_at"] = self.started_at.isoformat()
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, path: Path) -> StackInfo:
        data = json.loads(text)
        data["started_at"] = datetime.fromisoformat(data["started_at"])
        return cls(**data, path=path)


def load_stack(directory: Path = DEFAULT_DIR) -> StackInfo:
    path = Path(directory).resolve() / STACK_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise StackError(f"no FireGrid stack in {directory} (run `firegrid stack up`)") from None
    try:
        return StackInfo.from_json(text, path)
    except (ValueError, TypeError, KeyError) as error:
        raise StackError(f"{path} is unreadable ({error}); delete it") from error


def start_stack(
    directory: Path = DEFAULT_DIR,
    tick_seconds: float = 0,
    threads: int = 32,
    *,
    project_id: str = DEFAULT_PROJECT,
    source: Path = DEFAULT_SOURCE,
    faults: str = "",
    fault_seed: int = 0,
) -> StackInfo:
    """Start every server, wire the triggers, write ``stack.json``; return its contents.

    The emulators run on their own; the functions server, the trigger router and the
    scheduler run under a supervisor that restarts them when they die. ``faults``
    (``duplicate=P,drop=P,delay=S,reorder=P``) makes the router and the scheduler
    misbehave as the platform may. Refuses while a stack recorded in ``directory``
    still runs; on any failure stops what it started before raising ``StackError``.
    """
    Faults.parse(faults)  # refuse a bad spec before starting anything
    directory = Path(directory).resolve()
    _refuse_if_running(directory)
    java = firestore_emulator.find_java()
    jar = firestore_emulator.find_jar(REPO_ROOT)
    if not Path(source).is_file():
        raise StackError(f"function source {source} does not exist")
    firestore_port, storage_port, functions_port, router_port, fcm_port = (
        free_port() for _ in range(5)
    )

    log_dir = directory / "logs"
    bucket = f"{project_id}-firegrid"
    admin_token = secrets.token_urlsafe(32)
    base_url = f"http://{HOST}:{functions_port}"
    info = StackInfo(
        base_url=base_url,
        admin_token=admin_token,
        project_id=project_id,
        bucket=bucket,
        firestore_host=f"{HOST}:{firestore_port}",
        storage_host=f"http://{HOST}:{storage_port}",
        router_url=f"http://{HOST}:{router_port}",
        fcm_url=f"http://{HOST}:{fcm_port}",
        tick_seconds=tick_seconds,
        faults=faults,
        fault_seed=fault_seed,
        pids={},
        started_at=datetime.now(UTC),
        log_dir=str(log_dir),
        source=str(Path(source).resolve()),
        path=directory / STACK_FILE,
    )
    servers = _servers(info, java, jar)
    supervised = _supervised(info, threads)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, server in servers.items():
            processes[name] = spawn(name, server.argv, log_dir, server.env)
        processes["supervisor"] = _start_supervisor(info, supervised, log_dir)
        waits = [(name, processes[name], server) for name, server in servers.items()]
        waits += [(name, processes["supervisor"], server) for name, server in supervised.items()]
        for name, process, server in waits:
            log_path = log_dir / f"{name}.log"
            wait_until_ready(name, process, server.probe, log_path, server.ready_within_s)
            if name == "firestore":
                # A fresh JVM answers its first requests slowly (~0.6 s);
                # register while the functions server is still importing.
                firestore_emulator.register_triggers(info.firestore_host, project_id, FUNCTIONS)
        storage_emulator.create_bucket(info.storage_host, project_id, bucket)
        pids = {name: process.pid for name, process in processes.items()}
        pids |= {name: _supervised_pid(directory, name) for name in supervised}
        info = replace(info, pids=pids)
        write_atomically(info.path, info.to_json())
    except BaseException:
        stop_process_groups(process.pid for process in processes.values())
        raise
    return info


class _Server(NamedTuple):
    argv: list[str]
    env: dict[str, str] | None
    probe: Callable[[], bool]
    ready_within_s: float


def _servers(info: StackInfo, java: str, jar: Path) -> dict[str, _Server]:
    """The emulators: how to start each and tell it is ready, in the order to wait."""
    # fmt: off
    firestore = firestore_emulator.command(
        java, jar, port=_port(info.firestore_host), project_id=info.project_id,
        functions_host=f"{HOST}:{_port(info.router_url)}",
    )
    fcm = [sys.executable, "-m", "firegrid.local.fcm_endpoint", "--port", str(_port(info.fcm_url))]
    return {
        "firestore": _Server(firestore, None,
                             http_probe(f"http://{info.firestore_host}/", "Ok"), FIRESTORE_READY_S),
        "storage": _Server(storage_emulator.command(_port(info.storage_host)), None,
                           http_probe(f"{info.storage_host}/storage/v1/b"), SERVER_READY_S),
        "fcm": _Server(fcm, None,
                       http_probe(f"{info.fcm_url}{fcm_endpoint.MESSAGES_PATH}"), SERVER_READY_S),
    }
    # fmt: on


def _supervised(info: StackInfo, threads: int) -> dict[str, _Server]:
    """What the supervisor runs and restarts (the platform's part), and how to tell
    each is ready; the scheduler has no probe (it only calls out)."""
    python = sys.executable
    faults = ["--faults", info.faults, "--fault-seed", str(info.fault_seed)] if info.faults else []
    # fmt: off
    router = [python, "-m", "firegrid.local.router", "--port", str(_port(info.router_url)),
              "--functions-url", info.base_url, "--project", info.project_id, *faults]
    functions = [python, "-m", "firegrid.local.functions_server",
                 "--port", str(_port(info.base_url)), "--source", info.source,
                 "--threads", str(threads)]
    servers = {
        "router": _Server(router, None, http_probe(f"{info.router_url}{STATUS_PATH}"),
                          SERVER_READY_S),
        "functions": _Server(functions, None, http_probe(f"{info.base_url}/"), SERVER_READY_S),
    }
    if info.tick_seconds > 0:
        scheduler = [python, "-m", "firegrid.local.scheduler", "--url", f"{info.base_url}/tick",
                     "--interval", str(info.tick_seconds),
                     "--state", str(info.path.parent / SCHEDULER_STATE), *faults]
        servers["scheduler"] = _Server(scheduler, None, lambda: True, SERVER_READY_S)
    # fmt: on
    return servers


def _start_supervisor(
    info: StackInfo, children: dict[str, _Server], log_dir: Path
) -> subprocess.Popen[bytes]:
    """The supervisor, with the environment its children need (the admin token stays
    out of every command line)."""
    argv = [sys.executable, "-m", "firegrid.local.supervisor",
            "--dir", str(info.path.parent), "--log-dir", str(log_dir)]  # fmt: skip
    for name, child in children.items():
        argv += ["--child", name, json.dumps(child.argv)]
    env = {**os.environ, **info.client_env(), "PYTHONUNBUFFERED": "1"}
    return spawn("supervisor", argv, log_dir, env)


def _supervised_pid(directory: Path, name: str, timeout_s: float = 10.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = supervisor.read_state(directory).get(name, {}).get("pid")
        if pid:
            return pid
        time.sleep(0.05)
    raise StackError(f"the supervisor did not report {name}'s pid within {timeout_s:.0f} s")


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _refuse_if_running(directory: Path) -> None:
    try:
        existing = load_stack(directory)
    except StackError:
        return
    if any(existing.alive().values()):
        raise StackError(
            f"FireGrid stack already running (see {existing.path}); run `firegrid stack down` first"
        )


def stop_stack(directory: Path = DEFAULT_DIR) -> StackInfo | None:
    """Stop exactly the processes recorded in ``stack.json`` and remove it.

    Returns the stack that was stopped, or None when there was none.
    """
    try:
        info = load_stack(directory)
    except StackError:
        return None
    # The supervisor first, so it stops its children instead of restarting them.
    stop_process_groups([info.pids["supervisor"]] if "supervisor" in info.pids else [])
    stop_process_groups(info.current_pids().values())
    info.path.unlink(missing_ok=True)
    (info.path.parent / supervisor.STATE_FILE).unlink(missing_ok=True)
    return info


def wipe(stack: StackInfo, quiet_timeout_s: float = 10.0) -> None:
    """Delete every document and every object (keeping the bucket), and every push.

    Deleting documents makes the emulator send a delete event per document to
    the triggers, after the DELETE has returned; waiting until the router is
    idle keeps those events from landing in whatever runs next.
    """
    firestore_emulator.delete_all_documents(stack.firestore_host, stack.project_id)
    storage_emulator.delete_all_objects(stack.storage_host, stack.bucket)
    wait_for_triggers(stack, quiet_timeout_s)
    if stack.fcm_url:
        # Last, so pushes sent by the functions the delete events woke are gone too.
        fcm_endpoint.clear(stack.fcm_url)


def wait_for_triggers(stack: StackInfo, timeout_s: float = 10.0, quiet_s: float = QUIET_S) -> None:
    """Return once the router has had nothing in flight for ``quiet_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    last_total = -1
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        state = requests.get(f"{stack.router_url}/_router/status", timeout=5).json()
        if state["in_flight"] or state["total"] != last_total:
            last_total = state["total"]
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        time.sleep(0.02)
    raise StackError(f"trigger deliveries still running after {timeout_s:.0f} s")
