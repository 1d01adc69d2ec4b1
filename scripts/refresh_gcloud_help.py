"""Record the help of every gcloud command ``firegrid deploy`` uses into
tests/data/gcloud_help/, so tests/unit/test_deploy.py checks every flag offline.

Run where gcloud is installed (no network needed), after changing the plan or
upgrading gcloud: ``python scripts/refresh_gcloud_help.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from firegrid.deploy import Target, plan

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "gcloud_help"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def help_text(argv: tuple[str, ...]) -> tuple[str, str]:
    """(command path, help) of a gcloud command line: its words before the first flag
    may end with positionals, and gcloud's NAME section says which words are the path."""
    words = [word for word in argv[1:] if not word.startswith("-")]
    done = subprocess.run(
        ["gcloud", *words, "--help"],
        env={"PAGER": "cat", "COLUMNS": "100", "PATH": "/usr/bin:/bin:/usr/local/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    text = ANSI.sub("", done.stdout)
    name = text.split("NAME\n", 1)[1].splitlines()[0].strip()
    return name.split(" - ")[0].removeprefix("gcloud ").strip(), text


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    target = Target(project="demo-proj", region="europe-west1")
    lines = {c for step in plan(target) for c in step.commands() if c[0] == "gcloud"}
    recorded = dict(help_text(argv) for argv in sorted(lines))
    for old in OUT.glob("*.txt"):
        old.unlink()
    for path, text in recorded.items():
        (OUT / f"{path.replace(' ', '_')}.txt").write_text(text)
    print(f"recorded {len(recorded)} help texts in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
