"""What FireGrid deploys: every function, its entry point, its trigger and every fact
the deployment needs (who may call it, memory, timeout, retry, instances), and every
other resource (APIs, service accounts and their roles, the bucket and its lifecycle,
Firestore rules and indexes, the Scheduler job).

One table, read by the local emulator stack (to serve and route) and by
``firegrid.deploy`` (to deploy, reading nothing else), so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from firegrid.domain.blobs import SCRATCH_SUFFIX

FUNCTIONS_ACCOUNT = "firegrid-functions"
"""Runs every function and delivers their Firestore events (Eventarc's trigger account)."""
SCHEDULER_ACCOUNT = "firegrid-scheduler"
"""Signs the Scheduler's OIDC token; may invoke ``tick`` and nothing else."""

FIRESTORE_WRITTEN = "google.cloud.firestore.document.v1.written"


@dataclass(frozen=True, kw_only=True)
class FirestoreTrigger:
    event_type: str
    """Eventarc event type, e.g. ``google.cloud.firestore.document.v1.written``."""
    document: str
    """Document path pattern, e.g. ``processes/{process}/cycles/{cycle}``."""


@dataclass(frozen=True, kw_only=True)
class FunctionSpec:
    name: str
    """Deployed function name; the URL path segment (``{base}/{name}/...``)."""
    target: str
    """Attribute of ``functions/main.py`` that implements it."""
    signature: str
    """``http`` or ``cloudevent``."""
    trigger: FirestoreTrigger | None = None
    """Firestore trigger for cloudevent functions; None for HTTP functions."""
    public: bool = False
    """Anyone may call it (the device API); otherwise only IAM invokers (default)."""
    memory: str = "2GiB"
    """Memory of one instance; for the functions that close cycles it bounds the models a
    process may host (``domain/capacity.py``)."""
    timeout_s: int = 540
    """Longest invocation (event-triggered functions stop at 540 s)."""
    retry: bool = False
    """Redeliver the event when the function raises (Firestore triggers only)."""
    min_instances: int = 0
    """Instances kept warm (0: scale to zero)."""
    max_instances: int = 100
    """Upper bound on instances, hence on concurrent Firestore writers and cost."""
    concurrency: int = 1
    """Requests one instance serves at once (gen2; more needs more than one vCPU)."""
    aggregates: bool = False
    """Closes cycles, so its ``memory`` bounds what a process may host (hosting checks)."""
    service_account: str = FUNCTIONS_ACCOUNT
    """Account id (``ServiceAccount.name``) the function runs as."""
    invokers: tuple[str, ...] = ()
    """Account ids granted the invoker role on a private function, besides its own
    account for a Firestore-triggered one (Eventarc calls it as that account)."""
    extras: tuple[str, ...] = ()
    """Optional dependency sets of pyproject.toml it installs besides the core ones:
    ``hosting`` (torch, to validate plans) and ``executorch`` (its runtime, to validate
    ExecuTorch plans) for the one function that hosts; the others
    stay lean, so a cold start neither downloads nor imports torch."""


FUNCTIONS: tuple[FunctionSpec, ...] = (
    FunctionSpec(
        name="model-centric", target="model_centric", signature="http", public=True, timeout_s=60
    ),
    # 4 GiB: hosting holds the model and a plan (each up to limits.MAX_HOSTED_FILE_BYTES)
    # with their decoded copies; closing a cycle of a 200 MB model needs about 2.1 GB.
    FunctionSpec(
        name="admin",
        target="admin",
        signature="http",
        memory="4GiB",
        # hosting checks a dp budget against one cycle, and ExecuTorch plans in its runtime
        extras=("hosting", "privacy", "executorch"),
    ),
    FunctionSpec(
        name="tick",
        target="tick",
        signature="http",
        memory="4GiB",
        aggregates=True,
        extras=("privacy",),
        invokers=(SCHEDULER_ACCOUNT,),
    ),
    FunctionSpec(
        name="on-assignment-written",
        target="on_assignment_written",
        signature="cloudevent",
        trigger=FirestoreTrigger(
            event_type=FIRESTORE_WRITTEN,
            document="processes/{process}/cycles/{cycle}/assignments/{worker}",
        ),
        retry=True,
    ),
    FunctionSpec(
        name="on-worker-written",
        target="on_worker_written",
        signature="cloudevent",
        trigger=FirestoreTrigger(event_type=FIRESTORE_WRITTEN, document="workers/{worker}"),
        retry=True,
    ),
    FunctionSpec(
        name="on-cycle-written",
        target="on_cycle_written",
        signature="cloudevent",
        trigger=FirestoreTrigger(
            event_type=FIRESTORE_WRITTEN,
            document="processes/{process}/cycles/{cycle}",
        ),
        retry=True,
        memory="4GiB",
        aggregates=True,
        extras=("privacy",),
    ),
    FunctionSpec(
        name="on-group-written",
        target="on_group_written",
        signature="cloudevent",
        trigger=FirestoreTrigger(
            event_type=FIRESTORE_WRITTEN,
            document="processes/{process}/cycles/{cycle}/groups/{group}",
        ),
        memory="4GiB",
        retry=True,
        aggregates=True,
        extras=("privacy",),
    ),
)


@dataclass(frozen=True, kw_only=True)
class ServiceAccount:
    name: str
    """Account id: the email is ``{name}@{project}.iam.gserviceaccount.com``."""
    description: str
    project_roles: tuple[str, ...] = ()
    """Roles on the project (only those no narrower resource can hold)."""
    bucket_roles: tuple[str, ...] = ()
    """Roles on FireGrid's bucket only."""
    self_roles: tuple[str, ...] = ()
    """Roles on the account itself (signing URLs with its own key)."""


SERVICE_ACCOUNTS: tuple[ServiceAccount, ...] = (
    ServiceAccount(
        name=FUNCTIONS_ACCOUNT,
        description="FireGrid functions",
        project_roles=(
            "roles/datastore.user",  # Firestore reads and writes
            "roles/firebasecloudmessaging.admin",  # push notifications to devices
            "roles/eventarc.eventReceiver",  # receives its Firestore triggers' events
        ),
        bucket_roles=("roles/storage.objectAdmin",),
        self_roles=("roles/iam.serviceAccountTokenCreator",),  # v4 signed URLs (signBlob)
    ),
    # Its only right, invoking tick, is granted on the function (FunctionSpec.invokers).
    ServiceAccount(name=SCHEDULER_ACCOUNT, description="FireGrid scheduler"),
)


@dataclass(frozen=True, kw_only=True)
class Bucket:
    suffix: str
    """The default bucket is ``{project}{suffix}``."""
    scratch_suffix: str
    """Objects whose name ends so are deleted ``scratch_days`` after their creation."""
    scratch_days: int


BUCKET = Bucket(suffix="-firegrid", scratch_suffix=SCRATCH_SUFFIX, scratch_days=7)


@dataclass(frozen=True, kw_only=True)
class SchedulerJob:
    name: str
    target: str
    """Name of the (private, HTTP) function it calls."""
    schedule: str
    """Unix cron, in UTC."""
    service_account: str
    """Account id whose OIDC token it sends (an invoker of ``target``)."""


TICK_JOB = SchedulerJob(
    name="firegrid-tick", target="tick", schedule="* * * * *", service_account=SCHEDULER_ACCOUNT
)

FIRESTORE_RULES = "infra/firestore.rules"
FIRESTORE_INDEXES = "infra/firestore.indexes.json"
FIREBASE_CONFIG = "infra/firebase.json"
"""Points firebase-tools at the two files above (it deploys both)."""

APIS: tuple[str, ...] = (
    "cloudfunctions.googleapis.com",
    "run.googleapis.com",  # gen2 functions run on Cloud Run
    "cloudbuild.googleapis.com",  # builds each function's source
    "artifactregistry.googleapis.com",  # holds the built images
    "eventarc.googleapis.com",  # Firestore triggers
    "pubsub.googleapis.com",  # Eventarc's transport
    "firestore.googleapis.com",
    "firebaserules.googleapis.com",  # deploying infra/firestore.rules
    "storage.googleapis.com",
    "cloudscheduler.googleapis.com",
    "fcm.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",  # signBlob for v4 signed URLs
)


def invokers(spec: FunctionSpec) -> tuple[str, ...]:
    """Account ids that may invoke ``spec``: none for a public function (anyone may)."""
    if spec.public:
        return ()
    own = (spec.service_account,) if spec.trigger is not None else ()
    return own + spec.invokers


def trigger_pattern(target: str) -> str:
    """The document pattern of the Firestore-triggered function ``target``."""
    for spec in FUNCTIONS:
        if spec.target == target and spec.trigger is not None:
            return spec.trigger.document
    raise KeyError(f"no Firestore-triggered function {target!r}")


_MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}


def memory_bytes(memory: str) -> int:
    """``"2GiB"``, ``"512Mi"``, ``"1G"`` (gcloud's ``--memory`` forms) in bytes."""
    number = memory.rstrip("B").rstrip("KMGi")
    unit = memory.removeprefix(number).removesuffix("B")
    if not number.isdigit() or unit not in _MEMORY_UNITS:
        raise ValueError(f"memory {memory!r} is not like '2GiB' or '512Mi'")
    return int(number) * _MEMORY_UNITS[unit]


def aggregation_memory_bytes() -> int:
    """The memory of the smallest function that closes cycles (the trigger or the tick)."""
    return min(memory_bytes(spec.memory) for spec in FUNCTIONS if spec.aggregates)
