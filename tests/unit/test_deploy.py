from dataclasses import replace
from pathlib import Path

import pytest

from firegrid.deploy import Target, plan, requirements, stage
from firegrid.manifest import FUNCTIONS

TARGET = Target(
    project="p",
    region="europe-west1",
    bucket="p-firegrid",
    service_account="fn@p.iam.gserviceaccount.com",
    scheduler_account="sch@p.iam.gserviceaccount.com",
)


def test_every_function_is_deployed_with_its_trigger(tmp_path: Path) -> None:
    commands = plan(TARGET, {spec.name: tmp_path / spec.name for spec in FUNCTIONS})
    deployed = {c[3]: c for c in commands if c[:3] == ["gcloud", "functions", "deploy"]}
    assert set(deployed) == {spec.name for spec in FUNCTIONS}
    assert "--allow-unauthenticated" in deployed["model-centric"]
    assert "--no-allow-unauthenticated" in deployed["admin"]
    assert "--no-allow-unauthenticated" in deployed["tick"]
    for name in ("admin", "tick"):  # the admin API refuses everyone unless IAM guards it
        assert any("FIREGRID_ADMIN_AUTH=iam" in arg for arg in deployed[name])
    assert not any("FIREGRID_ADMIN_AUTH" in arg for arg in deployed["model-centric"])
    assignment = deployed["on-assignment-written"]
    assert (
        "--trigger-event-filters-path-pattern=document="
        "processes/{process}/cycles/{cycle}/assignments/{worker}" in assignment
    )
    assert "--retry" in assignment
    for spec in FUNCTIONS:  # every deploy fact comes from the manifest
        command = deployed[spec.name]
        assert f"--memory={spec.memory}" in command
        assert f"--timeout={spec.timeout_s}s" in command
        assert f"--max-instances={spec.max_instances}" in command
        assert f"--concurrency={spec.concurrency}" in command
        assert f"--source={tmp_path / spec.name}" in command  # each from its own source
    scheduler = commands[-1]
    assert scheduler[:5] == ["gcloud", "scheduler", "jobs", "create", "http"]
    assert "--uri=https://europe-west1-p.cloudfunctions.net/tick" in scheduler


def test_each_function_is_staged_with_main_the_package_and_its_own_requirements(
    tmp_path: Path,
) -> None:
    sources = stage(tmp_path / "bundle")
    assert sources == {spec.name: tmp_path / "bundle" / spec.name for spec in FUNCTIONS}
    for out in sources.values():
        assert (out / "main.py").exists()
        assert (out / "firegrid" / "services" / "devices.py").exists()
        for tooling in ("local", "commands", "client", "demo.py", "deploy.py"):
            assert not (out / "firegrid" / tooling).exists(), tooling
    admin = (sources["admin"] / "requirements.txt").read_text().splitlines()
    assert admin[0].startswith("--extra-index-url https://download.pytorch.org/whl/cpu")
    assert "torch==2.13.0" in admin
    lean = (sources["model-centric"] / "requirements.txt").read_text().splitlines()
    assert not any("torch" in line or "dp-accounting" in line for line in lean)
    accountant = next(line for line in admin if line.startswith("dp-accounting"))
    # The same core, without torch or the privacy accountant (scipy).
    assert set(lean) == set(admin) - {admin[0], "torch==2.13.0", accountant}
    tick = (sources["tick"] / "requirements.txt").read_text().splitlines()
    assert accountant in tick and not any("torch" in line for line in tick)


def test_a_function_naming_an_unknown_extra_is_refused() -> None:
    spec = replace(FUNCTIONS[0], extras=("nonesuch",))
    with pytest.raises(ValueError, match="nonesuch"):
        requirements(spec)
