"""``firegrid console``: where the operator console of the local stack is, and how to sign in
(in production: ``gcloud run services proxy admin``, docs/deploy.md)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from firegrid.commands._common import CommandError, add_stack_dir

if TYPE_CHECKING:
    from firegrid.local.stack import StackInfo


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "console", help="print the URL of the operator console of the local stack"
    )
    add_stack_dir(parser)
    parser.set_defaults(handler=console_command)


def console_url(stack: StackInfo) -> str:
    return f"{stack.base_url}/admin/console"


def describe(stack: StackInfo) -> str:
    """The URL, and where the token is: never printed, pasted once into the page, which
    keeps it in that tab's session storage."""
    return (
        f"operator console: {console_url(stack)}\n"
        f'sign in with the admin token: "admin_token" in {stack.path}'
    )


def console_command(args: argparse.Namespace) -> int:
    from firegrid.local.stack import load_stack

    stack = load_stack(args.dir)
    down = sorted(name for name, alive in stack.alive().items() if not alive)
    if down:
        raise CommandError(
            f"the local stack at {stack.path} is not running ({', '.join(down)} down): "
            "`firegrid stack up` or `firegrid demo --console`"
        )
    print(describe(stack))
    return 0
