"""``firegrid deploy``: stage the functions bundle and deploy it with gcloud
(``--dry-run`` prints the commands)."""

from __future__ import annotations

import argparse
import shlex
import subprocess
from pathlib import Path
from typing import Any

from firegrid.commands._common import CommandError
from firegrid.deploy import REPO_ROOT, Target, plan, stage


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("deploy", help="stage the functions and deploy them with gcloud")
    parser.add_argument(
        "--env-file",
        type=Path,
        default=REPO_ROOT / "infra" / "deploy.env",
        help="deployment settings",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "functions")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.set_defaults(handler=deploy_command)


def deploy_command(args: argparse.Namespace) -> int:
    if not args.env_file.exists():
        raise CommandError(f"no {args.env_file}: copy infra/deploy.env.example and fill it in")
    try:
        target = Target.from_env_file(args.env_file)
    except ValueError as error:
        raise CommandError(str(error)) from None
    sources = stage(args.out)
    print(f"staged {len(sources)} functions under {args.out}")
    for command in plan(target, sources):
        print("$", shlex.join(command))
        if not args.dry_run:
            try:
                subprocess.run(command, check=True)
            except (OSError, subprocess.CalledProcessError) as error:
                raise CommandError(f"{command[0]} failed: {error}") from None
    return 0
