"""``firegrid deploy``: stage the functions, then run the deployment plan
(``firegrid.deploy.plan``) step by step, or print it (``--dry-run``).

A step with a probe runs the probe first (read-only) and then creates or updates, so a
second run changes what drifted and creates nothing twice.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
from pathlib import Path
from typing import Any

from firegrid.commands._common import CommandError
from firegrid.deploy import REPO_ROOT, Step, Target, plan, resolve, resources, stage_all


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "deploy", help="deploy FireGrid to a Google Cloud project with gcloud"
    )
    parser.add_argument("--project", help="Google Cloud project id")
    parser.add_argument("--region", help="region of the functions, bucket, database and job")
    parser.add_argument("--bucket", help="bucket name (default: PROJECT-firegrid)")
    parser.add_argument(
        "--env-file",
        type=Path,
        help="FIREGRID_PROJECT, FIREGRID_REGION, FIREGRID_BUCKET, FIREGRID_TICK_SCHEDULE "
        "lines (infra/deploy.env.example); flags win",
    )
    parser.add_argument(
        "--only", help=f"comma-separated parts to deploy, of: {', '.join(resources())}"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the commands for a fresh project"
    )
    parser.set_defaults(handler=deploy_command)


def deploy_command(args: argparse.Namespace) -> int:
    steps = plan(target_of(args))
    if args.only:
        steps = _only(steps, args.only.split(","))
    stage_all(REPO_ROOT)
    exists = _nothing_exists if args.dry_run else _succeeds
    for step, command in resolve(steps, exists):
        print(f"# {step.resource}: {step.description}")
        if step.probe is not None:
            print(f"#   if `{shlex.join(step.probe)}` succeeds: {_show(step.update)}")
        if command is not None:
            print("$", shlex.join(command))
            if not args.dry_run:
                _run(step, command)
    return 0


def target_of(args: argparse.Namespace) -> Target:
    """The flags, falling back on the env file's lines."""
    values = _read_env(args.env_file) if args.env_file else {}
    project = args.project or values.get("FIREGRID_PROJECT")
    region = args.region or values.get("FIREGRID_REGION")
    if not project or not region:
        raise CommandError("give --project and --region (or an --env-file that sets them)")
    optional = {"tick_schedule": values.get("FIREGRID_TICK_SCHEDULE")}
    optional["bucket"] = args.bucket or values.get("FIREGRID_BUCKET")
    return Target(
        project=project, region=region, **{k: v for k, v in optional.items() if v is not None}
    )


def _read_env(path: Path) -> dict[str, str]:
    if not path.exists():
        raise CommandError(f"no {path}: copy infra/deploy.env.example and fill it in")
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.strip().startswith("#"):
            values[key.strip()] = value.strip()
    return values


def _only(steps: list[Step], names: list[str]) -> list[Step]:
    unknown = sorted(set(names) - set(resources()))
    if unknown:
        raise CommandError(f"--only: unknown {unknown}; known: {', '.join(resources())}")
    return [step for step in steps if step.resource in names]


def _show(command: tuple[str, ...] | None) -> str:
    return f"`{shlex.join(command)}` instead" if command else "nothing to do"


def _nothing_exists(probe: tuple[str, ...]) -> bool:
    """A dry run's answer: it shows what a fresh project needs."""
    return False


def _succeeds(probe: tuple[str, ...]) -> bool:
    done = subprocess.run(probe, cwd=REPO_ROOT, capture_output=True, check=False)
    return done.returncode == 0


def _run(step: Step, command: tuple[str, ...]) -> None:
    try:
        subprocess.run(command, cwd=REPO_ROOT, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        raise CommandError(
            f"step {step.resource} ({step.description}) failed: {error}\n"
            f"what to do: {step.fix}; re-running firegrid deploy is safe"
        ) from None
