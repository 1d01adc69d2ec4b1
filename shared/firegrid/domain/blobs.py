"""Cloud Storage object names (one layout, used by every service)."""

from __future__ import annotations


def process_prefix(process_id: str) -> str:
    return f"processes/{process_id}/"


def checkpoint_object(process_id: str, number: int) -> str:
    return f"processes/{process_id}/checkpoints/{number}.safetensors"


def plan_object(process_id: str, plan_name: str) -> str:
    return f"processes/{process_id}/plans/{plan_name}.pt2"


def diff_object(process_id: str, seq: int, worker_id: str, epoch: int, digest: str) -> str:
    """Content-addressed, so a retried report never overwrites another one's bytes."""
    return f"processes/{process_id}/diffs/{seq}/{worker_id}-{epoch}-{digest[:16]}.safetensors"


def upload_object(process_id: str, seq: int, worker_id: str, epoch: int) -> str:
    """Where a device PUTs a diff too large to send inline (then reports ``uploaded``)."""
    return f"processes/{process_id}/uploads/{seq}/{worker_id}-{epoch}.safetensors"
