"""``firegrid bench``: the benchmarks in the repository's ``bench/`` folder.

``bench/`` sits at the repository root, beside ``shared/``, not in the package: the
command finds it from the package's own location (an editable install of a source
checkout). Each benchmark is a module with a ``main(argv) -> int``, imported only
when it runs, so a benchmark that is not in this checkout stops only itself.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from firegrid.commands._common import CommandError

BENCHMARKS: dict[str, str] = {
    "aggregate": "bench.aggregation:main",
    "admission": "bench.admission:main",
    "cycle": "bench.cycle:main",
    "fanout": "bench.fanout:main",
    "compare": "bench.compare:main",
}
"""Benchmark name -> ``module:function`` of its entry point."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run a benchmark from bench/ (figures and ratios to same-run baselines, JSON "
        "in bench/results/)",
        description="Run one benchmark, or all of them; the arguments after the name go to "
        "the benchmark (e.g. firegrid bench aggregate --quick; --help shows its own).",
    )
    parser.add_argument("benchmark", choices=[*BENCHMARKS, "all"])
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own arguments")
    parser.set_defaults(handler=bench_command)


def bench_command(args: argparse.Namespace) -> int:
    if args.benchmark != "all":
        return entry_point(args.benchmark)(args.args)
    failed = 0
    for name in BENCHMARKS:
        try:
            run = entry_point(name)
        except CommandError as missing:
            print(f"firegrid bench all: {missing}, skipped", file=sys.stderr)
            continue
        print(f"== {name}", flush=True)
        failed += run(args.args) != 0
    return 1 if failed else 0


def entry_point(name: str) -> Callable[[list[str]], int]:
    """The benchmark's ``main``; ``CommandError`` if it is not in this checkout."""
    module_name, function = BENCHMARKS[name].split(":")
    root = repository_root()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name not in (module_name, "bench"):
            raise  # a dependency of the benchmark is missing: its own message says which
        path = root.joinpath(*module_name.split(".")).with_suffix(".py")
        message = f"benchmark '{name}' is not in this checkout ({path} is missing)"
        raise CommandError(message) from None
    main: Callable[[list[str]], int] = getattr(module, function)
    return main


def repository_root() -> Path:
    """The checkout the package is installed from (editable), which holds ``bench/``."""
    import firegrid

    root = Path(firegrid.__file__).resolve().parents[2]
    if not (root / "bench" / "__init__.py").is_file():
        raise CommandError(
            f"no bench/ folder beside {root / 'shared'}: the benchmarks run from a source "
            "checkout installed with `pip install -e '.[dev]'`"
        )
    return root
