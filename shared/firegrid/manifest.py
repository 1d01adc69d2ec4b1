"""What FireGrid deploys: every function, its entry point and its trigger.

One table, read by the local emulator stack (to serve and route) and by the
deployment config (to deploy), so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

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


FUNCTIONS: tuple[FunctionSpec, ...] = (
    FunctionSpec(name="model-centric", target="model_centric", signature="http"),
    FunctionSpec(name="admin", target="admin", signature="http"),
    FunctionSpec(name="tick", target="tick", signature="http"),
    FunctionSpec(
        name="on-assignment-written",
        target="on_assignment_written",
        signature="cloudevent",
        trigger=FirestoreTrigger(
            event_type=FIRESTORE_WRITTEN,
            document="processes/{process}/cycles/{cycle}/assignments/{worker}",
        ),
    ),
    FunctionSpec(
        name="on-worker-written",
        target="on_worker_written",
        signature="cloudevent",
        trigger=FirestoreTrigger(event_type=FIRESTORE_WRITTEN, document="workers/{worker}"),
    ),
    FunctionSpec(
        name="on-cycle-written",
        target="on_cycle_written",
        signature="cloudevent",
        trigger=FirestoreTrigger(
            event_type=FIRESTORE_WRITTEN,
            document="processes/{process}/cycles/{cycle}",
        ),
    ),
)


def trigger_pattern(target: str) -> str:
    """The document pattern of the Firestore-triggered function ``target``."""
    for spec in FUNCTIONS:
        if spec.target == target and spec.trigger is not None:
            return spec.trigger.document
    raise KeyError(f"no Firestore-triggered function {target!r}")
