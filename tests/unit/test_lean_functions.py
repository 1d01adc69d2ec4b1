"""Each deployed function imports only what its own requirements.txt installs, and the
device-facing ones never torch: checked in a fresh interpreter per function, on the
staged source Cloud Functions would build."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from firegrid.deploy import requirements, stage
from firegrid.manifest import FUNCTIONS, FunctionSpec

# Imports the entry point as the platform does, in an interpreter where only the
# distributions of argv[2] (JSON) can be imported, as in the function's own environment
# (an optional import such as grpc's of grpc_health then fails as it would there).
PROBE = """
import importlib.abc, importlib.metadata, json, sys
from packaging.utils import canonicalize_name
installed = set(json.loads(sys.argv[2]))
owners = importlib.metadata.packages_distributions()

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        dists = {canonicalize_name(dist) for dist in owners.get(name, [])}
        if path is None and dists and name != "firegrid" and not dists & installed:
            raise ModuleNotFoundError(f"{name} is not installed for this function", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
import main
getattr(main, sys.argv[1])
print(json.dumps({"torch": "torch" in sys.modules}))
"""


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return stage(tmp_path_factory.mktemp("functions"))


def _probe(source: Path, spec: FunctionSpec) -> dict:
    installed = json.dumps(sorted(_installed_by(spec)))
    done = subprocess.run(
        [sys.executable, "-c", PROBE, spec.target, installed],
        cwd=source,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(source)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _installed_by(spec: FunctionSpec) -> set[str]:
    """Every distribution pip installs for the function's requirements.txt (the closure of
    its requirements over the metadata of what is installed here)."""
    pending = [
        Requirement(line) for line in requirements(spec).splitlines() if not line.startswith("-")
    ]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        requirement = pending.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        for line in metadata.requires(requirement.name) or []:
            child = Requirement(line)
            wanted = [{"extra": extra} for extra in requirement.extras] or [{"extra": ""}]
            if child.marker is None or any(child.marker.evaluate(env) for env in wanted):
                pending.append(child)
    return {name for name, _ in seen}


@pytest.mark.parametrize("spec", FUNCTIONS, ids=lambda spec: spec.name)
def test_a_function_imports_with_only_its_requirements_installed(
    spec: FunctionSpec, staged: dict[str, Path]
) -> None:
    imported = _probe(staged[spec.name], spec)  # fails if an import needs more
    if "hosting" not in spec.extras:
        assert not imported["torch"], f"{spec.name} imports torch"
        assert "torch" not in _installed_by(spec)


def test_only_the_hosting_function_installs_torch() -> None:
    with_torch = {spec.name for spec in FUNCTIONS if "torch" in requirements(spec)}
    assert with_torch == {"admin"}


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("FIREGRID_BUNDLE_INSTALL_TEST"),
    reason="on demand (pip installs from PyPI, 1-3 minutes): FIREGRID_BUNDLE_INSTALL_TEST=1",
)
@pytest.mark.parametrize("name", ["model-centric", "on-group-written"])
def test_a_staged_bundle_installs_into_a_fresh_venv_and_its_entry_point_loads(
    name: str, staged: dict[str, Path], tmp_path: Path
) -> None:
    """What the platform's build does with ``--source``: a fresh environment, only the
    bundle's requirements.txt, then the entry point loaded by functions-framework."""
    spec = next(spec for spec in FUNCTIONS if spec.name == name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "--quiet", "-r", "requirements.txt"]
    subprocess.run(install, cwd=staged[name], check=True, timeout=900)
    load = (
        "import sys, functions_framework; "
        f"functions_framework.create_app(target={spec.target!r}, source='main.py', "
        f"signature_type={spec.signature!r}); print('torch' in sys.modules)"
    )
    done = subprocess.run(
        [str(python), "-c", load], cwd=staged[name], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
