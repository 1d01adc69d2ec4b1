"""schemathesis against a FireGrid stack, from docs/openapi.yaml (``firegrid fuzz``).

Hosts a small open process named ``fuzz`` (so that the stateful phase can
authenticate, join a cycle and report), then runs every schemathesis phase
(examples, coverage, fuzzing, stateful) with every check, plus FireGrid's own:
no response carries traceback text. The HAR recording gives the status of every
response, so the 5xx count is read from what the server answered, not inferred.

schemathesis is a development tool (``pip install -e '.[dev]'``), not a runtime
dependency.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from firegrid.local._process import StackError
from firegrid.local.stack import StackInfo

REPO_ROOT = Path(__file__).resolve().parents[3]
SPEC = REPO_ROOT / "docs" / "openapi.yaml"
FUZZ_MODEL = "fuzz"
# A model-valid process never reaches every branch from random data; FireGrid does not
# promise that schema-valid input is accepted (an unknown worker id is schema-valid).
EXCLUDED_CHECKS = ("positive_data_acceptance",)


@dataclass
class FuzzResult:
    cases: int
    """Test cases schemathesis generated."""
    requests: int
    """HTTP requests it sent (a stateful scenario sends several per case)."""
    statuses: dict[int, int]
    """Response status -> how many."""
    failures: list[dict[str, Any]] = field(default_factory=list)
    """schemathesis's failures: ``{code, title, count, operations}``."""
    exit_code: int = 0
    output: str = ""

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)


def summary(result: FuzzResult) -> str:
    statuses = ", ".join(f"{s}: {n}" for s, n in sorted(result.statuses.items()))
    lines = [
        f"fuzz: {result.cases} cases, {result.requests} requests, "
        f"{result.server_errors} server errors (5xx), {len(result.failures)} kinds of failure",
        f"fuzz: statuses {statuses}",
    ]
    lines += [f"fuzz: {f['code']} {f['title']} x{f['count']}" for f in result.failures]
    return "\n".join(lines)


def host_fuzz_process(info: StackInfo) -> None:
    """An open process with a deadline far away: the stateful phase's playground."""
    import torch

    from firegrid.plans import build_plan, state_of
    from firegrid.tensors import encode_state

    module = torch.nn.Sequential(torch.nn.Linear(4, 3))
    plan = build_plan(module, torch.zeros(2, 4))
    body: dict[str, Any] = {
        "model": base64.b64encode(encode_state(state_of(module))).decode(),
        "plans": {"training_plan": base64.b64encode(plan).decode()},
        "client_config": {"name": FUZZ_MODEL, "version": "1.0", "batch_size": 4, "lr": 0.1},
        "server_config": {"cycle_length": 3600, "num_cycles": 0, "max_diffs": 100_000},
    }
    response = requests.post(
        f"{info.base_url}/admin/host-training",
        json=body,
        headers={"Authorization": f"Bearer {info.admin_token}"},
        timeout=120,
    )
    if response.status_code not in (201, 409):  # 409: hosted by an earlier run
        raise StackError(f"could not host the fuzz process: HTTP {response.status_code}")


def run_fuzz(
    info: StackInfo,
    *,
    examples: int,
    seed: int | None = None,
    max_time_s: float | None = None,
    report_dir: Path | None = None,
    echo: bool = False,
) -> FuzzResult:
    executable = Path(sys.executable).with_name("schemathesis")
    if not executable.exists():
        raise StackError(
            "schemathesis is not installed: pip install -e '.[dev]' (it is a development tool)"
        )
    host_fuzz_process(info)
    with tempfile.TemporaryDirectory(prefix="firegrid-fuzz-") as scratch:
        reports = report_dir or Path(scratch)
        reports.mkdir(parents=True, exist_ok=True)
        json_path, har_path = reports / "run.json", reports / "requests.har"
        command = [
            str(executable),
            "run", str(SPEC),
            "--url", info.base_url,
            "--header", f"Authorization: Bearer {info.admin_token}",
            "--max-examples", str(examples),
            "--checks", "all",
            "--exclude-checks", ",".join(EXCLUDED_CHECKS),
            "--workers", "1",  # hypothesis parses lambdas with ast: not thread-safe on 3.11
            "--request-timeout", "60",
            "--report", "json,har",
            "--report-json-path", str(json_path),
            "--report-har-path", str(har_path),
            "--output-sanitize", "true",
        ]  # fmt: skip
        if seed is not None:
            command += ["--seed", str(seed)]
        if max_time_s is not None:
            command += ["--max-time", str(max_time_s)]
        env = os.environ | {"SCHEMATHESIS_HOOKS": "firegrid.local.fuzz_checks"}
        done = subprocess.run(
            command, env=env, cwd=scratch, capture_output=not echo, text=True, check=False
        )  # cwd: schemathesis keeps a cache directory where it runs
        if not json_path.exists():
            raise StackError(f"schemathesis did not run:\n{done.stdout}\n{done.stderr}")
        report = json.loads(json_path.read_text())
        statuses = _statuses(json.loads(har_path.read_text()))
        return FuzzResult(
            cases=int(report["test_cases"]["generated"]),
            requests=sum(statuses.values()),
            statuses=statuses,
            failures=[
                {k: f.get(k) for k in ("code", "title", "count", "operations")}
                for f in report.get("failures", [])
            ],
            exit_code=done.returncode,
            output=(done.stdout or "") + (done.stderr or ""),
        )


def _statuses(har: dict[str, Any]) -> dict[int, int]:
    counted: collections.Counter[int] = collections.Counter(
        int(entry["response"]["status"]) for entry in har["log"]["entries"]
    )
    return dict(counted)
