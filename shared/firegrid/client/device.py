"""A device's whole loop over the protocol: the reference client for FireGrid.

It does what a phone app does: authenticate, ask for a cycle (honouring the
server's ``timeout``, stopping on a rejection without one), download the model
and plan, evaluate the downloaded model on local test data, train, report the
diff with its sample count, and post its metrics.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from firegrid.client.protocol import Assignment, DeviceClient, ServerError
from firegrid.domain.variants import EXECUTORCH, TORCH


class Outcome(StrEnum):
    REPORTED = "reported"
    REJECTED = "rejected"
    COMPLETED = "completed"
    """Training is over (rejected without a timeout)."""
    DROPPED = "dropped"
    """The device went away after joining (simulated drop-out)."""
    LATE = "late"
    """The cycle closed (or was reset) before this device's download or report."""
    ERROR = "error"
    """The exchange failed (network or server error); the device tries again later."""


@dataclass(frozen=True, kw_only=True)
class CycleResult:
    outcome: Outcome
    cycle_id: int | None = None
    timeout: int | None = None
    reason: str | None = None
    accuracy: float | None = None
    """Accuracy of the downloaded model on the device's local test data."""
    num_samples: int = 0
    seconds: float = 0.0


@dataclass
class LocalData:
    x_train: npt.NDArray[Any]
    y_train: npt.NDArray[Any]
    x_test: npt.NDArray[Any] = field(default_factory=lambda: np.empty((0,), np.float32))
    y_test: npt.NDArray[Any] = field(default_factory=lambda: np.empty((0,), np.int64))


class Device:
    """One device taking part in one process."""

    def __init__(
        self,
        base_url: str,
        model: str,
        data: LocalData,
        *,
        version: str | None = None,
        auth_token: str | None = None,
        seed: int = 0,
        sleep: Callable[[float], None] = time.sleep,
        runtime: str = TORCH,
    ) -> None:
        """``runtime``: ``torch`` trains the ``torch.export`` plan with torch's autograd;
        ``executorch`` trains the ExecuTorch plan in ExecuTorch's runtime, as a phone."""
        if runtime not in (TORCH, EXECUTORCH):
            raise ValueError(f"runtime must be '{TORCH}' or '{EXECUTORCH}', not {runtime!r}")
        self.client = DeviceClient(base_url)
        self.model = model
        self.version = version
        self.data = data
        self.auth_token = auth_token
        self.seed = seed
        self.sleep = sleep
        self.runtime = runtime
        self.worker_id: str | None = None
        self._plans: dict[str, Any] = {}

    def authenticate(self) -> str:
        self.worker_id = self.client.authenticate(self.model, self.version, self.auth_token)
        return self.worker_id

    def register_token(self, fcm_token: str, **profile: Any) -> None:
        """Join the pool, so the server can invite this device by push."""
        self.client.register_token(
            self.worker_id or self.authenticate(), fcm_token, self.model, **profile
        )

    def set_available(self, available: bool) -> None:
        self.client.worker_status(self.worker_id or self.authenticate(), available)

    def request(self, **extra: Any) -> Assignment | CycleResult:
        """Ask for a place; an Assignment, or the rejection as a CycleResult."""
        worker_id = self.worker_id or self.authenticate()
        reply = self.client.cycle_request(worker_id, self.model, self.version, **extra)
        if isinstance(reply, Assignment):
            return reply
        if "timeout" not in reply:
            return CycleResult(outcome=Outcome.COMPLETED, reason=reply.get("reason"))
        return CycleResult(
            outcome=Outcome.REJECTED, timeout=int(reply["timeout"]), reason=reply.get("reason")
        )

    def train_and_report(
        self, assignment: Assignment, *, drop: bool = False, delay_s: float = 0.0
    ) -> CycleResult:
        """Download, evaluate, train, report, post metrics (or drop out after downloading)."""
        try:
            return self._train_and_report(assignment, drop=drop, delay_s=delay_s)
        except ServerError as error:
            if error.status != 409:
                raise
            return CycleResult(
                outcome=Outcome.LATE, cycle_id=assignment.cycle_id, reason=error.code
            )

    def _train_and_report(
        self, assignment: Assignment, *, drop: bool, delay_s: float
    ) -> CycleResult:
        started = time.monotonic()
        plan = self.client.get_plan(assignment, variant=self.runtime)
        checkpoint = self.client.get_model(assignment)
        plan_module, trainer = self._plan(plan)
        local_accuracy = None
        if len(self.data.y_test):
            local_accuracy = trainer.accuracy(
                plan_module, checkpoint, self.data.x_test, self.data.y_test
            )
        if drop:
            return CycleResult(outcome=Outcome.DROPPED, cycle_id=assignment.cycle_id)
        seed = self.seed * 100_003 + assignment.cycle_id
        diff, num_samples = trainer.train(
            plan_module, checkpoint, self.data.x_train, self.data.y_train,
            assignment.client_config, seed=seed,
        )  # fmt: skip
        if delay_s:
            self.sleep(delay_s)
        try:
            self.client.report(assignment, diff, num_samples)
        except ServerError as error:
            if error.status == 409:
                return CycleResult(
                    outcome=Outcome.LATE, cycle_id=assignment.cycle_id, reason=error.code
                )
            raise
        if local_accuracy is not None:
            self.client.post_metrics(
                assignment.worker_id,
                [
                    {
                        "cycle_id": assignment.cycle_id,
                        "accuracy": local_accuracy,
                        "num_samples": len(self.data.y_test),
                        "train_time_s": round(time.monotonic() - started, 4),
                    }
                ],
            )
        return CycleResult(
            outcome=Outcome.REPORTED,
            cycle_id=assignment.cycle_id,
            accuracy=local_accuracy,
            num_samples=num_samples,
            seconds=time.monotonic() - started,
        )

    def run_cycle(self, **extra: Any) -> CycleResult:
        reply = self.request(**extra)
        return reply if isinstance(reply, CycleResult) else self.train_and_report(reply)

    def run(self, max_cycles: int | None = None) -> list[CycleResult]:
        """Take part until training is over (or ``max_cycles`` reports), waiting as told."""
        results: list[CycleResult] = []
        while (
            max_cycles is None or sum(r.outcome is Outcome.REPORTED for r in results) < max_cycles
        ):
            result = self.run_cycle()
            results.append(result)
            if result.outcome is Outcome.COMPLETED:
                break
            if result.outcome is Outcome.REJECTED and result.timeout:
                self.sleep(result.timeout)
        return results

    def _plan(self, plan: bytes) -> tuple[Any, ModuleType]:
        """The plan loaded for this device's runtime (once per distinct plan), and the
        module that trains it (``train`` and ``accuracy``, the same for both)."""
        if self.runtime == EXECUTORCH:
            from firegrid.client import executorch_training as trainer
            from firegrid.executorch_plans import TrainingProgram as load
        else:
            from firegrid.client import training as trainer  # type: ignore[no-redef]
            from firegrid.plans import load_plan as load  # type: ignore[assignment]

        key = hashlib.sha256(plan).hexdigest()
        if key not in self._plans:
            self._plans = {key: load(plan)}
        return self._plans[key], trainer
