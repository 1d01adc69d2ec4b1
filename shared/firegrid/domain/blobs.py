"""Cloud Storage object names (one layout, used by every service).

Worker ids are credentials, so object names carry their pseudonym, never the id.
"""

from __future__ import annotations

from firegrid.domain import plan_formats
from firegrid.domain.keys import pseudonym

SCRATCH_SUFFIX = ".scratch"
"""Ends the name of every object that is garbage a few days after it is written (device
uploads, hosting uploads, fan-out partials), so a bucket lifecycle rule can delete the
ones a crash left behind (``manifest.BUCKET``). Diffs do not carry it: they live as long
as their cycle, which may last a year."""


def process_prefix(process_id: str) -> str:
    return f"processes/{process_id}/"


def checkpoint_object(process_id: str, number: int, attempt: str | None = None) -> str:
    """Checkpoint 1 is the hosted model; an aggregated one is named by the aggregation
    attempt that wrote it, so an overtaken aggregator never overwrites a published one."""
    suffix = f"-{attempt}" if attempt else ""
    return f"processes/{process_id}/checkpoints/{number}{suffix}.safetensors"


def optimizer_state_object(process_id: str, number: int, attempt: str) -> str:
    """The server optimizer's state after the closing that wrote checkpoint ``number``,
    named by the same attempt: only the published checkpoint's state is ever read."""
    return f"processes/{process_id}/optimizer/{number}-{attempt}.safetensors"


def plan_object(process_id: str, plan_key: str) -> str:
    """A hosted plan's variant (``plan_formats.plan_key``), named for its format."""
    return f"processes/{process_id}/plans/{_plan_file(plan_key)}"


def _plan_file(plan_key: str) -> str:
    return f"{plan_key}.{plan_formats.EXTENSIONS[plan_formats.split_key(plan_key)[1]]}"


def diff_object(process_id: str, seq: int, worker_id: str, epoch: int, attempt: str) -> str:
    """One object per report attempt: a losing twin deletes only its own bytes."""
    ref = pseudonym(worker_id)
    return f"processes/{process_id}/diffs/{seq}/{ref}-{epoch}-{attempt}.safetensors"


def upload_object(process_id: str, seq: int, worker_id: str, epoch: int) -> str:
    """Where a device PUTs a diff too large to send inline (then reports ``uploaded``)."""
    ref = pseudonym(worker_id)
    return f"processes/{process_id}/uploads/{seq}/{ref}-{epoch}.safetensors{SCRATCH_SUFFIX}"


def hosting_upload_prefix(process_id: str) -> str:
    """Where the operator PUTs a model and its plans too large to host inline; removed
    by ``host-training`` whether it hosts them or not."""
    return f"processes/{process_id}/hosting-uploads/"


def hosting_model_upload(process_id: str) -> str:
    return f"{hosting_upload_prefix(process_id)}model.safetensors{SCRATCH_SUFFIX}"


def hosting_plan_upload(process_id: str, plan_key: str) -> str:
    return f"{hosting_upload_prefix(process_id)}plans/{_plan_file(plan_key)}{SCRATCH_SUFFIX}"


def partial_object(process_id: str, seq: int, group: int, attempt: str) -> str:
    """A fanned-out closing's group partial, named by the attempt that wrote it."""
    return f"processes/{process_id}/partials/{seq}/{group}-{attempt}.safetensors{SCRATCH_SUFFIX}"
