"""``firegrid console`` prints where the local stack's console is and where its token is
kept (never the token itself), and refuses a stack that is not running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from firegrid.commands import main
from tests.common import write_stack_file

TOKEN = "s3cret-admin-token"


def write_stack(directory: Path, pids: dict[str, int]) -> None:
    write_stack_file(directory, base_url="http://127.0.0.1:8123", admin_token=TOKEN, pids=pids)


def test_it_prints_the_console_url_and_where_the_token_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_stack(tmp_path, {"functions": os.getpid()})

    assert main(["console", "--dir", str(tmp_path)]) == 0

    out = capsys.readouterr().out
    assert "operator console: http://127.0.0.1:8123/admin/console" in out
    assert str(tmp_path / "stack.json") in out
    assert TOKEN not in out


def test_a_stack_that_is_not_running_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    write_stack(tmp_path, {"functions": int(finished.stdout)})

    assert main(["console", "--dir", str(tmp_path)]) == 1
    assert "not running (functions down)" in capsys.readouterr().err


def test_without_a_stack_it_says_how_to_start_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["console", "--dir", str(tmp_path)]) == 1
    assert "firegrid stack up" in capsys.readouterr().err
