"""Staging one source directory per function and the plan that deploys FireGrid
(``firegrid deploy``): a list of steps, each a command and, for what a second run must
not create twice, the read-only probe that chooses between creating and updating.

Every fact comes from ``firegrid.manifest``, the same table the local stack serves, so
what runs locally is what gets deployed. The plan is pure (commands as data); running
it is ``firegrid.commands.deploy``'s.
"""

from __future__ import annotations

import json
import shutil
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from firegrid.manifest import (
    APIS,
    BUCKET,
    FIREBASE_CONFIG,
    FUNCTIONS,
    SERVICE_ACCOUNTS,
    TICK_JOB,
    FunctionSpec,
    ServiceAccount,
    invokers,
)
from firegrid.settings import ADMIN_AUTH_ENV, BUCKET_ENV, PROJECT_ENV

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD = Path("build")
"""Where ``stage`` writes, relative to the repository (the plan's paths are too)."""
FUNCTIONS_OUT = BUILD / "functions"
LIFECYCLE_FILE = BUILD / "bucket-lifecycle.json"
FIREBASE_TOOLS = "firebase-tools@13"
RUNTIME = "python311"
# Cloud Build would otherwise install a multi-GB CUDA torch.
TORCH_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"


def requirements(spec: FunctionSpec) -> str:
    """The function's dependencies: pyproject.toml's core ones plus its manifest extras,
    each pinned to the version tested here (the CPU torch index only when torch is among
    them)."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    unknown = [extra for extra in spec.extras if extra not in extras]
    if unknown:
        raise ValueError(f"function {spec.name}: no extra {unknown} in pyproject.toml")
    wanted = [*project["dependencies"], *(dep for extra in spec.extras for dep in extras[extra])]
    lines = [pinned(line) for line in wanted]
    if any(line.startswith("torch") for line in lines):
        lines.insert(0, TORCH_INDEX)
    return "\n".join(lines) + "\n"


def pinned(line: str) -> str:
    """``line`` pinned to the version installed here (the one the tests ran against), when
    it is installed and allowed; else ``line`` as pyproject.toml gives it."""
    requirement = Requirement(line)
    if any(spec.operator == "==" for spec in requirement.specifier):
        return line  # pinned already (torch: its CPU build's local version stays implicit)
    try:
        installed = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        return line
    if not requirement.specifier.contains(installed, prereleases=True):
        return line
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    marker = f"; {requirement.marker}" if requirement.marker else ""
    return f"{requirement.name}{extras}=={installed}{marker}"


def stage(out: Path) -> dict[str, Path]:
    """One directory per function, as Cloud Functions builds each from its own source:
    main.py, the firegrid package and the function's own requirements.txt."""
    if out.exists():
        shutil.rmtree(out)
    return {spec.name: _stage_one(spec, out / spec.name) for spec in FUNCTIONS}


def lifecycle() -> dict[str, object]:
    """The bucket's lifecycle (``gcloud storage buckets --lifecycle-file``)."""
    condition = {"age": BUCKET.scratch_days, "matchesSuffix": [BUCKET.scratch_suffix]}
    return {"rule": [{"action": {"type": "Delete"}, "condition": condition}]}


def stage_all(root: Path) -> None:
    """Everything the plan reads from ``BUILD``, under ``root`` (the repository)."""
    stage(root / FUNCTIONS_OUT)
    (root / LIFECYCLE_FILE).write_text(json.dumps(lifecycle(), indent=2) + "\n")


def _stage_one(spec: FunctionSpec, out: Path) -> Path:
    shutil.copytree(REPO_ROOT / "functions", out, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(
        REPO_ROOT / "shared" / "firegrid",
        out / "firegrid",
        ignore=shutil.ignore_patterns(
            "__pycache__", "local", "client", "commands", "demo.py", "deploy.py", "plots.py"
        ),
    )
    (out / "requirements.txt").write_text(requirements(spec))
    return out


@dataclass(frozen=True, kw_only=True)
class Target:
    """Where to deploy: everything the manifest leaves to the operator."""

    project: str
    region: str
    bucket: str = ""
    """Defaults to ``{project}`` + ``manifest.BUCKET.suffix``."""
    tick_schedule: str = TICK_JOB.schedule

    def __post_init__(self) -> None:
        if not self.bucket:
            object.__setattr__(self, "bucket", self.project + BUCKET.suffix)

    def email(self, account: str) -> str:
        return f"{account}@{self.project}.iam.gserviceaccount.com"

    def function_url(self, name: str) -> str:
        return f"https://{self.region}-{self.project}.cloudfunctions.net/{name}"


@dataclass(frozen=True, kw_only=True)
class Step:
    """One thing to make true, and how to make it so whether or not it already is."""

    resource: str
    """What it deploys (``--only`` selects by it): a function name, ``scheduler``, ..."""
    description: str
    create: tuple[str, ...]
    """Run on a fresh project; idempotent itself when there is no ``probe``."""
    probe: tuple[str, ...] | None = None
    """Read-only; succeeds when the resource exists (then ``update`` runs instead)."""
    update: tuple[str, ...] | None = None
    """Brings an existing resource up to date; None: nothing to do."""
    fix: str = "check the error above, fix it and run firegrid deploy again"
    """What to do when the step fails (re-running is always safe)."""

    def commands(self) -> list[tuple[str, ...]]:
        """Every command the step may run (what the offline checks inspect)."""
        return [command for command in (self.probe, self.create, self.update) if command]

    def command(self, exists: bool) -> tuple[str, ...] | None:
        """The command to run, knowing whether ``probe`` found the resource."""
        return self.update if self.probe is not None and exists else self.create


def resolve(
    steps: Iterable[Step], exists: Callable[[tuple[str, ...]], bool]
) -> Iterator[tuple[Step, tuple[str, ...] | None]]:
    """Each step with the command to run (None: nothing), ``exists`` answering its probe
    just before (lazily: a probe runs after the steps before it did)."""
    for step in steps:
        yield step, step.command(step.probe is not None and exists(step.probe))


def plan(target: Target) -> list[Step]:
    """Every step of a deployment, in order: the APIs, the accounts, the stores, their
    rights, the functions, who may call them, then the job that calls ``tick``."""
    return [
        _apis(target),
        *(_account(target, account) for account in SERVICE_ACCOUNTS),
        _database(target),
        _bucket(target),
        *(step for account in SERVICE_ACCOUNTS for step in _roles(target, account)),
        _rules_and_indexes(target),
        *(_function(target, spec) for spec in FUNCTIONS),
        *(_invoker(target, spec, account) for spec in FUNCTIONS for account in invokers(spec)),
        _scheduler(target),
    ]


def resources() -> list[str]:
    """Every name ``--only`` accepts."""
    return list(dict.fromkeys(step.resource for step in plan(Target(project="p", region="r"))))


def _gcloud(target: Target, *args: str) -> tuple[str, ...]:
    return ("gcloud", *args, f"--project={target.project}")


def _apis(target: Target) -> Step:
    return Step(
        resource="apis",
        description="enable the APIs FireGrid uses",
        create=_gcloud(target, "services", "enable", *APIS),
        fix="the deploying account needs roles/serviceusage.serviceUsageAdmin and billing on",
    )


def _account(target: Target, account: ServiceAccount) -> Step:
    email = target.email(account.name)
    return Step(
        resource="service-accounts",
        description=f"service account {email}",
        probe=_gcloud(target, "iam", "service-accounts", "describe", email),
        create=_gcloud(
            target,
            "iam",
            "service-accounts",
            "create",
            account.name,
            f"--display-name={account.description}",
        ),
        fix="the deploying account needs roles/iam.serviceAccountAdmin",
    )


def _database(target: Target) -> Step:
    database = ("--database=(default)",)
    return Step(
        resource="firestore",
        description="the Firestore database (native mode)",
        probe=_gcloud(target, "firestore", "databases", "describe", *database),
        create=_gcloud(
            target,
            "firestore",
            "databases",
            "create",
            *database,
            f"--location={target.region}",
            "--type=firestore-native",
        ),
        fix="a Datastore-mode database cannot host FireGrid: use another project",
    )


def _bucket(target: Target) -> Step:
    bucket, rules = f"gs://{target.bucket}", f"--lifecycle-file={LIFECYCLE_FILE}"
    return Step(
        resource="bucket",
        description=f"bucket {bucket}, scratch objects deleted after {BUCKET.scratch_days} days",
        probe=_gcloud(target, "storage", "buckets", "describe", bucket),
        create=_gcloud(
            target,
            "storage",
            "buckets",
            "create",
            bucket,
            f"--location={target.region}",
            "--uniform-bucket-level-access",
            rules,
        ),
        update=_gcloud(target, "storage", "buckets", "update", bucket, rules),
        fix="bucket names are global: if another project owns it, pass --bucket",
    )


def _roles(target: Target, account: ServiceAccount) -> list[Step]:
    """Least privilege: each role on the narrowest resource that can hold it (adding a
    binding that exists changes nothing, so these need no probe)."""
    email = target.email(account.name)
    on_project = ("projects", "add-iam-policy-binding", target.project, "--condition=None")
    on_bucket = ("storage", "buckets", "add-iam-policy-binding", f"gs://{target.bucket}")
    on_itself = ("iam", "service-accounts", "add-iam-policy-binding", email)
    bindings = [
        *((on_project, "the project", role) for role in account.project_roles),
        *((on_bucket, "the bucket", role) for role in account.bucket_roles),
        *((on_itself, "itself", role) for role in account.self_roles),
    ]
    return [
        Step(
            resource="iam",
            description=f"{role} for {account.name} on {where}",
            create=_gcloud(target, *on, f"--member=serviceAccount:{email}", f"--role={role}"),
            fix="the deploying account needs roles/resourcemanager.projectIamAdmin",
        )
        for on, where, role in bindings
    ]


def _rules_and_indexes(target: Target) -> Step:
    """firebase-tools deploys both (gcloud has no command for security rules); both are
    replaced as a whole, so a re-run is harmless."""
    return Step(
        resource="rules",
        description="Firestore security rules and indexes (infra/)",
        create=(
            "npx",
            "--yes",
            FIREBASE_TOOLS,
            "deploy",
            "--only",
            "firestore:rules,firestore:indexes",
            f"--project={target.project}",
            f"--config={FIREBASE_CONFIG}",
            "--non-interactive",
        ),
        fix="needs Node.js (npx) and Firebase added to the project (firebase projects:addfirebase)",
    )


def _function(target: Target, spec: FunctionSpec) -> Step:
    """``gcloud functions deploy`` creates or updates, so it needs no probe."""
    env = {PROJECT_ENV: target.project, BUCKET_ENV: target.bucket}
    if not spec.public:
        env[ADMIN_AUTH_ENV] = "iam"  # the admin API answers nobody unless IAM guards it
    account = target.email(spec.service_account)
    command = [
        "gcloud", "functions", "deploy", spec.name,
        "--gen2", f"--runtime={RUNTIME}", f"--region={target.region}",
        f"--source={FUNCTIONS_OUT / spec.name}", f"--entry-point={spec.target}",
        f"--service-account={account}",
        f"--set-env-vars={','.join(f'{k}={v}' for k, v in env.items())}",
        f"--memory={spec.memory}", f"--timeout={spec.timeout_s}s",
        f"--min-instances={spec.min_instances}", f"--max-instances={spec.max_instances}",
        f"--concurrency={spec.concurrency}",
    ]  # fmt: skip
    if spec.trigger is None:
        command.append("--trigger-http")
        command.append("--allow-unauthenticated" if spec.public else "--no-allow-unauthenticated")
    else:
        command += [
            f"--trigger-location={target.region}",
            f"--trigger-event-filters=type={spec.trigger.event_type}",
            "--trigger-event-filters=database=(default)",
            f"--trigger-event-filters-path-pattern=document={spec.trigger.document}",
            f"--trigger-service-account={account}",
            *(("--retry",) if spec.retry else ()),  # gcloud has no --no-retry: the default
        ]
    command.append(f"--project={target.project}")
    return Step(
        resource=spec.name,
        description=f"function {spec.name} ({spec.trigger.document if spec.trigger else 'HTTP'})",
        create=tuple(command),
        fix="see the build log link above; a Firestore trigger needs the database first",
    )


def _invoker(target: Target, spec: FunctionSpec, account: str) -> Step:
    return Step(
        resource=spec.name,
        description=f"{account} may invoke {spec.name}",
        create=_gcloud(
            target,
            "functions",
            "add-invoker-policy-binding",
            spec.name,
            f"--region={target.region}",
            f"--member=serviceAccount:{target.email(account)}",
        ),
        fix=f"deploy the function first (firegrid deploy --only {spec.name})",
    )


def _scheduler(target: Target) -> Step:
    url = target.function_url(TICK_JOB.target)
    job = [
        TICK_JOB.name, f"--location={target.region}", f"--schedule={target.tick_schedule}",
        f"--uri={url}", "--http-method=POST",
        f"--oidc-service-account-email={target.email(TICK_JOB.service_account)}",
        f"--oidc-token-audience={url}",
    ]  # fmt: skip
    jobs = ("scheduler", "jobs")
    return Step(
        resource="scheduler",
        description=f"job {TICK_JOB.name} calling {TICK_JOB.target} ({target.tick_schedule})",
        probe=_gcloud(target, *jobs, "describe", TICK_JOB.name, f"--location={target.region}"),
        create=_gcloud(target, *jobs, "create", "http", *job),
        update=_gcloud(target, *jobs, "update", "http", *job),
        fix=f"Cloud Scheduler must be offered in {target.region}; else pass another --region",
    )
