"""The local stack starts, serves every function, routes triggers and stops cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from firegrid.commands import main as cli
from firegrid.local._process import http_probe, is_alive, stop_process_groups
from firegrid.local.router import STATUS_PATH
from firegrid.local.stack import (
    StackError,
    StackInfo,
    start_stack,
    stop_stack,
    wait_for_triggers,
    wipe,
)
from firegrid.manifest import FUNCTIONS

from .support import wait_for

pytestmark = pytest.mark.integration

FIELDS = {
    "base_url", "admin_token", "project_id", "bucket", "firestore_host", "storage_host",
    "router_url", "tick_seconds", "pids", "started_at",
}  # fmt: skip


def router_forwards(stack: StackInfo, since_total: int = 0) -> tuple[int, list[dict[str, object]]]:
    """The forward count, and the forwards made after ``since_total`` (recent is capped)."""
    wait_for_triggers(stack)
    status = requests.get(f"{stack.router_url}/_router/status", timeout=5).json()
    total, recent = int(status["total"]), status["recent"]
    return total, recent[len(recent) - (total - since_total) :] if total > since_total else []


def wait_for_log_line(path: Path, text: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in path.read_text():
        assert time.monotonic() < deadline, f"{text!r} not in {path}"
        time.sleep(0.05)


def test_stack_json_describes_a_live_stack(stack: StackInfo) -> None:
    recorded = json.loads(stack.path.read_text())

    assert recorded.keys() >= FIELDS
    assert set(recorded["pids"]) == {
        *("firestore", "storage", "fcm", "supervisor", "router", "functions")
    }
    assert all(stack.alive().values())
    assert stack.client_env()["FIRESTORE_EMULATOR_HOST"] == recorded["firestore_host"]


def test_a_second_up_refuses(stack: StackInfo) -> None:
    with pytest.raises(StackError, match="already running"):
        start_stack(stack.path.parent)


def test_every_function_is_served_under_its_name(stack: StackInfo) -> None:
    for spec in FUNCTIONS:
        response = requests.post(f"{stack.base_url}/{spec.name}", timeout=10, allow_redirects=False)
        assert not response.is_redirect, spec.name
        assert "no function here" not in response.text, spec.name
    assert requests.get(f"{stack.base_url}/not-a-function", timeout=10).status_code == 404


def test_a_firestore_write_reaches_the_matching_function(
    clean_stack: StackInfo, stack_env: StackInfo
) -> None:
    from google.cloud import firestore

    before, _ = router_forwards(clean_stack)
    client = firestore.Client()
    client.document("processes/p-route/cycles/1").set({"status": "open"})
    client.document("processes/p-route/cycles/1/assignments/w1").set({"reported": False})
    client.document("processes/p-route/workers/w1").set({"token": "t"})

    # Routing is under test, not the functions: any answer but 502 means the function ran.
    routed = {
        (forward["trigger"], forward["subject"], forward["status"] != 502)
        for forward in router_forwards(clean_stack, before)[1]
    }
    assert routed == {
        ("on-cycle-written", "documents/processes/p-route/cycles/1", True),
        # Worker ids are credentials: the router's records shorten them.
        ("on-assignment-written", "documents/processes/p-route/cycles/1/assignments/…", True),
    }


def test_wipe_empties_documents_and_objects(stack_env: StackInfo) -> None:
    import google.cloud.storage as storage
    from google.cloud import firestore

    firestore.Client().document("processes/p-wipe").set({"name": "x"})
    blob = storage.Client().bucket(stack_env.bucket).blob("processes/p-wipe/a b.bin")
    blob.upload_from_string(b"x")

    wipe(stack_env)

    assert list(firestore.Client().collection("processes").list_documents()) == []
    bucket = storage.Client().bucket(stack_env.bucket)
    assert bucket.exists()
    assert list(bucket.list_blobs()) == []


def test_cli_status_and_tick(stack: StackInfo, capsys: pytest.CaptureFixture[str]) -> None:
    directory = str(stack.path.parent)

    assert cli(["stack", "status", "--dir", directory]) == 0
    assert stack.base_url in capsys.readouterr().out
    assert cli(["tick", "--dir", directory]) == 0
    json.loads(capsys.readouterr().out)


def test_stale_file_is_replaced_and_stop_kills_exactly_its_pids(
    tmp_path: Path, stack: StackInfo
) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    stale = json.loads(stack.path.read_text()) | {"pids": {"functions": int(finished.stdout)}}
    (tmp_path / "stack.json").write_text(json.dumps(stale))
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 start_new_session=True)  # fmt: skip
    try:
        info = start_stack(tmp_path, tick_seconds=0.5, threads=4)
        expected = {"firestore", "storage", "fcm", "supervisor", "router", "functions", "scheduler"}
        assert set(info.pids) == expected
        wait_for_log_line(tmp_path / "logs" / "scheduler.log", "tick ->")

        stop_stack(tmp_path)

        assert not any(is_alive(pid) for pid in info.pids.values())
        assert not (tmp_path / "stack.json").exists()
        assert is_alive(bystander.pid)
        assert all(stack.alive().values())
    finally:
        bystander.kill()
        bystander.wait()
        stop_stack(tmp_path)


def test_what_dies_is_restarted_and_faults_are_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    info = start_stack(tmp_path, tick_seconds=0.3, threads=4, faults="drop=0.5,duplicate=0.5")
    for key, value in info.client_env().items():
        monkeypatch.setenv(key, value)
    try:
        functions = info.pids["functions"]
        stop_process_groups([functions])  # the whole tree: gunicorn's master and worker

        restarted = wait_for(lambda: _restarted_pid(tmp_path, functions), 30, "a restart")
        assert is_alive(restarted) and not is_alive(functions)
        serving = http_probe(f"{info.base_url}/")
        wait_for(serving, 60, "the restarted server")
        assert cli(["stack", "status", "--dir", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert f"functions  pid {restarted}" in out and "restarted 1x" in out

        from google.cloud import firestore

        client = firestore.Client()
        for index in range(20):  # each write is one delivery to on-cycle-written
            client.document(f"processes/p-faults/cycles/{index + 1}").set({"status": "open"})
        wait_for_triggers(info, timeout_s=30)
        injected = requests.get(f"{info.router_url}{STATUS_PATH}", timeout=5).json()["faults"]
        counts = injected["injected"]
        assert counts["deliveries"] == 20 and 0 < counts["dropped"] < 20
        assert counts.get("duplicated", 0) > 0
        assert cli(["stack", "status", "--dir", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert f"dropped {counts['dropped']}" in out and "skipped" in out
    finally:
        stop_stack(tmp_path)


def _restarted_pid(directory: Path, old: int) -> int | None:
    pid = json.loads((directory / "stack.json").read_text())["pids"]["functions"]
    return pid if pid != old else None
