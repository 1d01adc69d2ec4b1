"""Training plans: a model's forward pass as a ``torch.export`` program (.pt2).

The plan is exported with a dynamic batch dimension so a device can train with
any batch size; the device loads it with ``torch.export.load(...).module()``,
loads the checkpoint into it and trains it with the recipe in client_config.
torch is imported here, lazily by callers: never on the device HTTP path.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy.typing as npt

from firegrid.domain.errors import BadRequest

if TYPE_CHECKING:
    import torch

# torch.export's deserializer keeps global state: one load at a time per process.
_LOAD_LOCK = threading.Lock()


def load_program(data: bytes) -> torch.export.ExportedProgram:
    import torch

    with _LOAD_LOCK:
        return torch.export.load(io.BytesIO(data))


def build_plan(module: torch.nn.Module, sample_input: torch.Tensor) -> bytes:
    """Export ``module``'s forward pass with a dynamic batch dimension, as .pt2 bytes."""
    import torch
    from torch.export import Dim

    module.eval()
    program = torch.export.export(
        module, (sample_input,), dynamic_shapes=({0: Dim("batch", min=1, max=1 << 20)},)
    )
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def loss_function(name: str) -> Any:
    """The torch function of ``client_config.loss`` (``domain.config.LOSSES``)."""
    import torch.nn.functional as F

    return {
        "cross_entropy": F.cross_entropy,
        "mse": F.mse_loss,
        "bce_with_logits": F.binary_cross_entropy_with_logits,
    }[name]


def state_of(module: torch.nn.Module) -> dict[str, npt.NDArray[Any]]:
    """The module's state_dict as numpy arrays (what a checkpoint holds)."""
    return {name: t.detach().cpu().numpy().copy() for name, t in module.state_dict().items()}


def load_plan(data: bytes) -> torch.nn.Module:
    """The trainable module of a plan (for trusted plan bytes only)."""
    return load_program(data).module()


def validate_plan(data: bytes, model: Mapping[str, npt.NDArray[Any]], name: str) -> None:
    """Check a plan loads, has a dynamic batch dimension and matches the model's tensors."""
    import torch

    try:
        program = load_program(data)
    except Exception as exc:  # torch raises many types for a bad archive
        raise BadRequest(
            f"plan '{name}' is not a torch.export program: {exc}", "invalid_plan"
        ) from exc
    state = program.state_dict
    mismatched = sorted(set(state) ^ set(model))
    if mismatched:
        raise BadRequest(
            f"plan '{name}' does not match the model's tensors: {mismatched[:5]}", "invalid_plan"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(model[key].shape):
            raise BadRequest(
                f"plan '{name}': tensor '{key}' has shape {list(tensor.shape)}, "
                f"the model has {list(model[key].shape)}",
                "invalid_plan",
            )
    inputs = [
        spec.arg.name
        for spec in program.graph_signature.input_specs
        if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT
    ]
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for arg_name in inputs:
        value = placeholders[arg_name].meta.get("val")
        shape = getattr(value, "shape", ())
        if not shape or isinstance(shape[0], int):
            raise BadRequest(
                f"plan '{name}': input '{arg_name}' needs a dynamic batch dimension "
                "(export with dynamic_shapes, see firegrid.plans.build_plan)",
                "invalid_plan",
            )
