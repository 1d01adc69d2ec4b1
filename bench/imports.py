"""Cold-start imports per deployed function: ``python -X importtime`` on the staged source.

Each function is staged as ``firegrid deploy`` stages it, then imported as the platform
does (``import main`` and the entry point) in a fresh interpreter, ``--runs`` times; the
median total is the sum of the top-level imports' cumulative times. The hosting function
also pays, at its first ``host-training``, the import of ``firegrid.plans`` and torch:
reported as ``first_hosting_ms``.

    python -m bench.imports [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from firegrid.deploy import stage
from firegrid.manifest import FUNCTIONS

RESULTS = Path(__file__).parent / "results"
HOSTING_IMPORTS = "import firegrid.plans, torch"


def import_ms(source: Path, statement: str) -> tuple[float, int]:
    """Milliseconds the imports of ``statement`` take (after the interpreter's own), and
    how many modules they load."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import main\n{statement}"],
        cwd=source,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(source)},
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [line.split("|") for line in done.stderr.splitlines() if line.startswith("import time:")]
    modules = [(int(cumulative), name) for _, cumulative, name in rows[1:]]  # skip the header
    top_level = [us for us, name in modules if not name.startswith("  ")]  # not nested
    return sum(top_level) / 1000, len(modules)


def measure(source: Path, statement: str, runs: int) -> dict[str, float]:
    samples = [import_ms(source, statement) for _ in range(runs)]
    return {
        "import_ms": statistics.median(ms for ms, _ in samples),
        "modules": samples[0][1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "imports.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sources = stage(Path(tmp))
        for spec in FUNCTIONS:
            source = sources[spec.name]
            row = {"function": spec.name, "extras": list(spec.extras)}
            row |= measure(source, f"main.{spec.target}", args.runs)
            row["torch_in_requirements"] = "torch" in (source / "requirements.txt").read_text()
            if "hosting" in spec.extras:
                hosting = measure(source, HOSTING_IMPORTS, args.runs)
                row["first_hosting_ms"] = hosting["import_ms"] - row["import_ms"]
            rows.append(row)
            first = row.get("first_hosting_ms")
            extra = f", first host-training +{first:.0f} ms" if first is not None else ""
            print(
                f"{spec.name:24s} import {row['import_ms']:6.0f} ms, {row['modules']:4d} modules, "
                f"torch installed: {row['torch_in_requirements']}{extra}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": args.runs, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
