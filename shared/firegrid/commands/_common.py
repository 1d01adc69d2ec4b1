"""What the verbs share: the one error type, and where a verb's target is.

A verb talks either to a deployment (``--base-url`` and ``--token``) or to the local
stack (``.firegrid/stack.json``, or ``--dir``); flags win, the stack fills in what
they leave out.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from firegrid.local.stack import DEFAULT_DIR

if TYPE_CHECKING:
    from firegrid.operator_client import OperatorClient


class CommandError(Exception):
    """A failure the operator can act on: ``firegrid`` prints it and exits 1."""


@contextlib.contextmanager
def failures_as_command_errors() -> Iterator[None]:
    """The lower layers' failures, in the operator's words (one translation table)."""
    import requests

    from firegrid.functions_client import ServerError
    from firegrid.local._process import StackError

    try:
        yield
    except ServerError as error:
        raise CommandError(f"HTTP {error.status}: {error.message}") from error
    except requests.RequestException as error:
        url = str(error.request.url) if error.request is not None else "the server"
        raise CommandError(f"cannot reach {url}: {error}") from error
    except StackError as error:
        raise CommandError(str(error)) from error


def add_stack_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help="local stack directory (default .firegrid)"
    )


def add_target_arguments(parser: argparse.ArgumentParser, *, admin: bool = True) -> None:
    parser.add_argument("--base-url", help="functions base URL (default: the local stack's)")
    if admin:
        parser.add_argument("--token", help="admin bearer token (default: the local stack's)")
    add_stack_dir(parser)


@dataclass(frozen=True)
class Target:
    base_url: str
    token: str | None


def target(args: argparse.Namespace) -> Target:
    """Flags win; the local stack fills in whatever they leave out."""
    base_url, token = args.base_url, getattr(args, "token", None)
    if base_url is None or (token is None and hasattr(args, "token")):
        from firegrid.local.stack import load_stack

        stack = load_stack(args.dir)
        base_url, token = base_url or stack.base_url, token or stack.admin_token
    return Target(base_url.rstrip("/"), token)


def operator(args: argparse.Namespace) -> OperatorClient:
    from firegrid.operator_client import OperatorClient

    where = target(args)
    return OperatorClient(where.base_url, where.token)
