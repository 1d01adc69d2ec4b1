import argparse
import json
import re
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from firegrid.commands import deploy as deploy_command
from firegrid.commands._common import CommandError
from firegrid.deploy import Target, lifecycle, plan, requirements, resolve, stage
from firegrid.domain import blobs
from firegrid.local import firestore_emulator
from firegrid.manifest import BUCKET, FUNCTIONS, TICK_JOB

DATA = Path(__file__).resolve().parents[1] / "data"
REPO = Path(__file__).resolve().parents[2]
TARGET = Target(project="demo-proj", region="europe-west1")
FLAG = re.compile(r"--(\[no-\])?([a-z][a-z0-9-]*)")


def _fresh() -> list[tuple[str, ...]]:
    """What a run on an empty project executes (every probe fails)."""
    return [command for _, command in resolve(plan(TARGET), lambda probe: False) if command]


def _deployed() -> dict[str, tuple[str, ...]]:
    return {c[3]: c for c in _fresh() if c[:3] == ("gcloud", "functions", "deploy")}


def test_every_function_is_deployed_with_its_trigger_from_the_manifest() -> None:
    deployed = _deployed()
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
        assert f"--entry-point={spec.target}" in command
        assert f"--memory={spec.memory}" in command
        assert f"--timeout={spec.timeout_s}s" in command
        assert f"--max-instances={spec.max_instances}" in command
        assert f"--concurrency={spec.concurrency}" in command
        assert f"--source=build/functions/{spec.name}" in command  # each from its own source


def test_private_functions_are_invoked_only_by_the_accounts_that_need_to() -> None:
    granted = {
        (c[3], c[5].removeprefix("--member=serviceAccount:"))
        for c in _fresh()
        if c[:3] == ("gcloud", "functions", "add-invoker-policy-binding")
    }
    functions = "firegrid-functions@demo-proj.iam.gserviceaccount.com"
    scheduler = "firegrid-scheduler@demo-proj.iam.gserviceaccount.com"
    triggered = {(spec.name, functions) for spec in FUNCTIONS if spec.trigger is not None}
    assert granted == {("tick", scheduler)} | triggered  # admin: granted by the operator
    deployed = _deployed()
    for name, _ in triggered:  # Eventarc calls as the account granted above
        assert f"--trigger-service-account={functions}" in deployed[name]


def test_the_scheduler_calls_tick_with_an_oidc_token_of_its_account() -> None:
    job = next(c for c in _fresh() if c[:3] == ("gcloud", "scheduler", "jobs"))
    url = "https://europe-west1-demo-proj.cloudfunctions.net/tick"
    assert job[3:6] == ("create", "http", TICK_JOB.name)
    assert f"--uri={url}" in job and f"--oidc-token-audience={url}" in job
    assert (
        "--oidc-service-account-email=firegrid-scheduler@demo-proj.iam.gserviceaccount.com" in job
    )


def test_a_fresh_project_gets_apis_database_bucket_rules_and_each_account_once() -> None:
    commands = _fresh()
    assert commands[0][:3] == ("gcloud", "services", "enable")
    assert {"cloudfunctions.googleapis.com", "eventarc.googleapis.com"} <= set(commands[0])
    created = [c[:4] for c in commands if "create" in c]
    assert created.count(("gcloud", "iam", "service-accounts", "create")) == 2
    assert ("gcloud", "firestore", "databases", "create") in created
    assert ("gcloud", "storage", "buckets", "create") in created
    assert any(c[:4] == ("npx", "--yes", "firebase-tools@13", "deploy") for c in commands)
    config = json.loads((REPO / "infra" / "firebase.json").read_text())["firestore"]
    for name in config.values():  # the rules and indexes firebase-tools deploys exist
        assert (REPO / "infra" / name).exists(), name


def test_a_second_run_creates_nothing_and_updates_what_can_drift() -> None:
    recorded = json.loads((DATA / "deploy" / "describe_existing.json").read_text())
    second = [
        command
        for _, command in resolve(plan(TARGET), lambda probe: shlex.join(probe) in recorded)
        if command
    ]
    assert not [c for c in second if "create" in c]
    assert ("gcloud", "scheduler", "jobs", "update", "http", TICK_JOB.name) == second[-1][:6]
    assert any(c[:4] == ("gcloud", "storage", "buckets", "update") for c in second)
    probes = [shlex.join(step.probe) for step in plan(TARGET) if step.probe]
    assert sorted(probes) == sorted(key for key in recorded if not key.startswith("_"))


def _recorded_help() -> dict[tuple[str, ...], set[str]]:
    """Command path -> the flags its recorded help names (``[no-]x`` as ``x``, ``no-x``)."""
    recorded = {}
    for path in (DATA / "gcloud_help").glob("*.txt"):
        flags = set()
        for negatable, name in FLAG.findall(path.read_text()):
            flags |= {name, f"no-{name}"} if negatable else {name}
        recorded[tuple(path.stem.split("_"))] = flags
    return recorded


def test_every_gcloud_flag_used_is_in_that_commands_help() -> None:
    recorded = _recorded_help()
    used = {c for step in plan(TARGET) for c in step.commands() if c[0] == "gcloud"}
    assert used
    for command in used:
        words = tuple(word for word in command[1:] if not word.startswith("-"))
        paths = [path for path in recorded if words[: len(path)] == path]
        assert paths, (
            f"no recorded help for {shlex.join(command)}: run scripts/refresh_gcloud_help.py"
        )
        flags = recorded[max(paths, key=len)]
        for arg in command:
            if arg.startswith("--"):
                assert arg[2:].split("=")[0] in flags, f"{arg} in {shlex.join(command)}"


def test_the_flag_check_would_catch_a_flag_gcloud_does_not_have() -> None:
    assert "retry" in _recorded_help()[("functions", "deploy")]
    assert "no-retry" not in _recorded_help()[("functions", "deploy")]


def test_the_bucket_deletes_scratch_objects_and_keeps_diffs_and_checkpoints() -> None:
    rule = lifecycle()["rule"][0]  # type: ignore[index]
    assert rule == {
        "action": {"type": "Delete"},
        "condition": {"age": BUCKET.scratch_days, "matchesSuffix": [blobs.SCRATCH_SUFFIX]},
    }
    scratch = [
        blobs.upload_object("p", 1, "w", 0),
        blobs.partial_object("p", 1, 0, "a"),
        blobs.hosting_model_upload("p"),
        blobs.hosting_plan_upload("p", "training"),
    ]
    assert all(name.endswith(blobs.SCRATCH_SUFFIX) for name in scratch)
    kept = [blobs.diff_object("p", 1, "w", 0, "a"), blobs.checkpoint_object("p", 1)]
    assert not any(name.endswith(blobs.SCRATCH_SUFFIX) for name in kept)


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    deploy_command.register(parser.add_subparsers())
    return parser.parse_args(["deploy", *argv])


def test_flags_win_over_the_env_file_and_project_and_region_are_required(tmp_path: Path) -> None:
    env = tmp_path / "deploy.env"
    env.write_text("FIREGRID_PROJECT=from-file\nFIREGRID_REGION=us-central1\n# x=y\n")
    target = deploy_command.target_of(_args(["--env-file", str(env), "--project", "flag"]))
    assert target == Target(project="flag", region="us-central1", bucket="flag-firegrid")
    with pytest.raises(CommandError, match="--project and --region"):
        deploy_command.target_of(_args(["--project", "p"]))


def test_only_keeps_the_named_parts_and_refuses_unknown_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = _args(["--project", "demo-proj", "--region", "europe-west1", "--dry-run"])
    args.only = "tick,scheduler"
    assert deploy_command.deploy_command(args) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$")]
    assert [shlex.split(line)[1:4] for line in printed] == [
        ["gcloud", "functions", "deploy"],
        ["gcloud", "functions", "add-invoker-policy-binding"],
        ["gcloud", "scheduler", "jobs"],
    ]
    args.only = "tick,nonesuch"
    with pytest.raises(CommandError, match="nonesuch"):
        deploy_command.deploy_command(args)


def test_cloudbuild_deploys_with_the_same_command() -> None:
    build = yaml.safe_load((REPO / "cloudbuild.yaml").read_text())
    script = next(step for step in build["steps"] if step["id"] == "deploy")["args"][-1]
    line = next(line for line in script.splitlines() if "firegrid deploy" in line)
    argv = shlex.split(line)
    args = _args(argv[argv.index("deploy") + 1 :])
    assert (args.project, args.region, args.bucket) == ("${PROJECT_ID}", "${_REGION}", "${_BUCKET}")
    assert not args.dry_run and args.only is None  # deploys everything the manifest holds
    used = set(re.findall(r"\$\{(_[A-Z_]+)\}", (REPO / "cloudbuild.yaml").read_text()))
    assert used == set(build["substitutions"]) == {"_REGION", "_BUCKET"}


def test_the_local_stack_registers_exactly_the_manifests_triggers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registered = {}

    class Response:
        ok = True

    def post(url: str, params: dict, json: dict, timeout: float) -> Response:
        registered[params["eventarcTriggerId"]] = (json["eventType"], json["document"]["value"])
        return Response()

    monkeypatch.setattr(firestore_emulator.requests, "post", post)
    firestore_emulator.register_triggers("h", "p", FUNCTIONS)
    assert registered == {
        spec.name: (spec.trigger.event_type, spec.trigger.document)
        for spec in FUNCTIONS
        if spec.trigger is not None
    }


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
    for asset in ("index.html", "app.js", "style.css"):  # the console, served by admin
        assert (sources["admin"] / "firegrid" / "console" / asset).is_file(), asset
    admin = (sources["admin"] / "requirements.txt").read_text().splitlines()
    assert admin[0].startswith("--extra-index-url https://download.pytorch.org/whl/cpu")
    assert "torch==2.13.0" in admin
    lean = (sources["model-centric"] / "requirements.txt").read_text().splitlines()
    assert not any("torch" in line or "dp-accounting" in line for line in lean)
    accountant = next(line for line in admin if line.startswith("dp-accounting"))
    assert "executorch==1.4.1" in admin  # validates ExecuTorch plans in their runtime
    # The same core, without torch, ExecuTorch or the privacy accountant (scipy).
    assert set(lean) == set(admin) - {admin[0], "torch==2.13.0", "executorch==1.4.1", accountant}
    tick = (sources["tick"] / "requirements.txt").read_text().splitlines()
    assert accountant in tick and not any("torch" in line for line in tick)


def test_a_function_naming_an_unknown_extra_is_refused() -> None:
    spec = replace(FUNCTIONS[0], extras=("nonesuch",))
    with pytest.raises(ValueError, match="nonesuch"):
        requirements(spec)


def test_requirements_are_pinned_to_the_versions_tested_here() -> None:
    from importlib import metadata

    lines = requirements(next(spec for spec in FUNCTIONS if spec.name == "model-centric"))

    assert f"numpy=={metadata.version('numpy')}" in lines.splitlines()
    assert f"pyjwt[crypto]=={metadata.version('pyjwt')}" in lines.splitlines()
    assert all("==" in line for line in lines.splitlines())


def test_the_console_proxy_command_in_the_deploy_docs_uses_flags_gcloud_has() -> None:
    lines = (DATA.parents[1] / "docs" / "deploy.md").read_text().splitlines()
    command = shlex.split(next(line for line in lines if line.startswith("gcloud run services")))
    flags = [arg[2:].split("=")[0] for arg in command if arg.startswith("--")]
    assert command[:5] == ["gcloud", "run", "services", "proxy", "admin"]
    assert flags and set(flags) <= _recorded_help()[("run", "services", "proxy")], flags
