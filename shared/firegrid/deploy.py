"""Staging one source directory per function and the gcloud commands that deploy them
(``firegrid deploy``).

Every fact about a function comes from ``firegrid.manifest``, the same table the
local stack serves, so what runs locally is what gets deployed.
"""

from __future__ import annotations

import shutil
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from firegrid.manifest import FUNCTIONS, FunctionSpec
from firegrid.settings import ADMIN_AUTH_ENV, BUCKET_ENV, PROJECT_ENV

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNTIME = "python311"
# Cloud Build would otherwise install a multi-GB CUDA torch.
TORCH_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True, kw_only=True)
class Target:
    project: str
    region: str
    bucket: str
    service_account: str
    scheduler_account: str
    tick_schedule: str = "* * * * *"

    @classmethod
    def from_env_file(cls, path: Path) -> Target:
        values: dict[str, str] = {}
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.strip().startswith("#"):
                values[key.strip()] = value.strip()
        try:
            return cls(
                project=values["FIREGRID_PROJECT"],
                region=values["FIREGRID_REGION"],
                bucket=values["FIREGRID_BUCKET"],
                service_account=values["FIREGRID_SERVICE_ACCOUNT"],
                scheduler_account=values["FIREGRID_SCHEDULER_ACCOUNT"],
                tick_schedule=values.get("FIREGRID_TICK_SCHEDULE", "* * * * *"),
            )
        except KeyError as missing:
            raise ValueError(f"{path}: {missing.args[0]} is not set") from None


def requirements(spec: FunctionSpec) -> str:
    """The function's dependencies: pyproject.toml's core ones plus its manifest extras
    (the CPU torch index only when torch is among them)."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    unknown = [extra for extra in spec.extras if extra not in extras]
    if unknown:
        raise ValueError(f"function {spec.name}: no extra {unknown} in pyproject.toml")
    lines = [*project["dependencies"], *(dep for extra in spec.extras for dep in extras[extra])]
    if any(line.startswith("torch") for line in lines):
        lines.insert(0, TORCH_INDEX)
    return "\n".join(lines) + "\n"


def stage(out: Path) -> dict[str, Path]:
    """One directory per function, as Cloud Functions builds each from its own source:
    main.py, the firegrid package and the function's own requirements.txt."""
    if out.exists():
        shutil.rmtree(out)
    return {spec.name: _stage_one(spec, out / spec.name) for spec in FUNCTIONS}


def _stage_one(spec: FunctionSpec, out: Path) -> Path:
    shutil.copytree(REPO_ROOT / "functions", out, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(
        REPO_ROOT / "shared" / "firegrid",
        out / "firegrid",
        ignore=shutil.ignore_patterns(
            "__pycache__", "local", "client", "commands", "demo.py", "deploy.py", "plots.py"
        ),
    )
    (out / "requirements.txt").write_text(requirements(spec))
    return out


def function_command(spec: FunctionSpec, target: Target, source: Path) -> list[str]:
    env = {PROJECT_ENV: target.project, BUCKET_ENV: target.bucket}
    if not spec.public:
        env[ADMIN_AUTH_ENV] = "iam"  # the admin API answers nobody unless IAM guards it
    command = [
        "gcloud", "functions", "deploy", spec.name,
        "--gen2", f"--runtime={RUNTIME}", f"--region={target.region}",
        f"--project={target.project}", f"--source={source}", f"--entry-point={spec.target}",
        f"--service-account={target.service_account}",
        f"--set-env-vars={','.join(f'{k}={v}' for k, v in env.items())}",
        f"--memory={spec.memory}", f"--timeout={spec.timeout_s}s",
        f"--min-instances={spec.min_instances}", f"--max-instances={spec.max_instances}",
        f"--concurrency={spec.concurrency}",
    ]  # fmt: skip
    if spec.trigger is None:
        command.append("--trigger-http")
        command.append("--allow-unauthenticated" if spec.public else "--no-allow-unauthenticated")
    else:
        command += [
            f"--trigger-location={target.region}",
            f"--trigger-event-filters=type={spec.trigger.event_type}",
            "--trigger-event-filters=database=(default)",
            f"--trigger-event-filters-path-pattern=document={spec.trigger.document}",
        ]
        command.append("--retry" if spec.retry else "--no-retry")
    return command


def plan(target: Target, sources: Mapping[str, Path]) -> list[list[str]]:
    """Every command of a deployment, in order (``sources``: function name -> staged dir)."""
    commands = [
        ["gcloud", "storage", "buckets", "create", f"gs://{target.bucket}",
         f"--project={target.project}", f"--location={target.region}",
         "--uniform-bucket-level-access"],
    ]  # fmt: skip
    commands += [function_command(spec, target, sources[spec.name]) for spec in FUNCTIONS]
    tick_url = f"https://{target.region}-{target.project}.cloudfunctions.net/tick"
    commands.append(
        [
            "gcloud",
            "scheduler",
            "jobs",
            "create",
            "http",
            "firegrid-tick",
            f"--project={target.project}",
            f"--location={target.region}",
            f"--schedule={target.tick_schedule}",
            f"--uri={tick_url}",
            "--http-method=POST",
            f"--oidc-service-account-email={target.scheduler_account}",
            f"--oidc-token-audience={tick_url}",
        ]
    )
    return commands
