"""The ``executorch`` plan variant: forward, loss and backward as one ``.pte`` program.

Phones embed ExecuTorch's runtime, which runs programs but has no autograd: the plan
must carry the backward pass itself. Hosting builds it (``executorch_variant``) from
the hosted ``torch.export`` program's module with the process's loss and batch size:
``build_training_program`` wraps the module with the loss, captures the joint
forward-backward graph (``torch.export`` then ``_export_forward_backward``) and lowers
it to ExecuTorch; then the program is checked in ExecuTorch's runtime against the
model (``validate_training_program``). The program's ``forward(x, y)`` returns
``[loss, logits, *gradients, *parameters]``; the parameters are the runtime's own
memory, so writing a checkpoint into them and stepping ExecuTorch's SGD on them trains
in place (``TrainingProgram``).

Supported: what ExecuTorch 1.4's portable kernels can run forward and backward
(Linear, Conv2d, ReLU/Tanh/GELU, MaxPool2d, reshapes, Dropout as exported: the
identity). Refused at hosting: models with buffers (batch norm), kernels the runtime
lacks (avg_pool2d's backward). torch and executorch are imported lazily: by hosting
(function ``admin``) and by the ExecuTorch device; never on the device HTTP path.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from firegrid.domain import variants
from firegrid.domain.errors import BadRequest
from firegrid.domain.variants import EXECUTORCH

if TYPE_CHECKING:
    import torch

METHOD = "forward"
_PREFIX = "model."
"""The wrapper holds the hosted module as ``model``: the runtime names its parameters
``model.<state_dict key>``."""
_FLOAT = 6
"""ExecuTorch's ScalarType code for float32 (method metadata)."""
_CLASS_LOSSES = ("cross_entropy",)
"""Losses whose target is a class index per row (int64), not a tensor like the output."""


def _max_pool2d_backward(
    grad_output: torch.Tensor, self: torch.Tensor, *args: Any, indices: torch.Tensor | None = None
) -> torch.Tensor:
    """Max pooling's gradient as one scatter-add: each output's gradient goes to the
    input position its index names (indices are flat within each H x W plane)."""
    indices = args[-1] if indices is None else indices
    import torch

    planes = torch.zeros_like(self).flatten(-2)
    return planes.scatter_add(-1, indices.flatten(-2), grad_output.flatten(-2)).view_as(self)


def _pool_backward_decompositions() -> dict[Any, Any]:
    """ExecuTorch 1.4's ``max_pool2d_with_indices_backward`` kernel returns wrong
    gradients (tests/unit/test_executorch_plans.py): lower it to a scatter-add instead
    (torch's own decomposition of it fixes the batch size, so a dynamic batch fails)."""
    import torch

    return {torch.ops.aten.max_pool2d_with_indices_backward.default: _max_pool2d_backward}


def executorch_variant(
    plan: bytes, model: Mapping[str, npt.NDArray[Any]], name: str, recipe: Mapping[str, Any]
) -> bytes:
    """The ``executorch`` variant of plan ``name`` (.pte bytes) for the recipe
    (``client_config``: its loss and batch size), checked in ExecuTorch's runtime."""
    from firegrid.plans import load_program

    if importlib.util.find_spec("executorch") is None:  # a deployment built without the extra
        raise BadRequest(
            f"this deployment cannot build the '{EXECUTORCH}' variant "
            "(function admin needs firegrid[executorch])",
            "unsupported_plan_format",
        )
    program = load_program(plan)
    module = program.module()
    loss = str(recipe.get("loss", "cross_entropy"))
    try:
        sample_input, sample_target = _samples(module, _input_shape(program), loss)
        data = build_training_program(
            module, sample_input, sample_target, loss=loss, batch_size=variants.batch_size(recipe)
        )
    except Exception as exc:  # export and lowering raise many types for what they cannot do
        raise BadRequest(
            f"plan '{name}' cannot be served as '{EXECUTORCH}': {str(exc)[:300]}; host it "
            f"without variants ['{EXECUTORCH}']",
            "unsupported_layer",
        ) from exc
    validate_training_program(data, model, name)
    return data


def _input_shape(program: torch.export.ExportedProgram) -> tuple[int, ...]:
    """One example's shape (the plan's input without its dynamic batch dimension)."""
    (user_input,) = program.graph_signature.user_inputs
    node = next(n for n in program.graph.nodes if n.name == user_input)
    return tuple(int(size) for size in node.meta["val"].shape[1:])


def _samples(module: Any, input_shape: tuple[int, ...], loss: str) -> tuple[Any, Any]:
    """One row of input and the loss's target for it (a class index, or the output's
    shape), from which the training program is traced."""
    import torch

    sample_input = torch.zeros(1, *input_shape)
    if loss in _CLASS_LOSSES:
        return sample_input, torch.zeros(1, dtype=torch.int64)
    with torch.no_grad():
        return sample_input, torch.zeros_like(module(sample_input))


def build_training_program(
    module: torch.nn.Module,
    sample_input: torch.Tensor,
    sample_target: torch.Tensor,
    *,
    loss: str = "cross_entropy",
    batch_size: int,
) -> bytes:
    """The ``.pte`` bytes of ``module`` (a plan's: ``torch.export.load(...).module()``,
    exported in eval mode, so dropout is the identity) trained with ``loss`` on batches of
    ``batch_size`` rows. The batch is static: ExecuTorch 1.4 lowers some bounded dynamic
    batches wrongly (a bound of 16 for the digits CNN fails to plan its views)."""
    import torch
    from executorch.exir import to_edge
    from torch.export.experimental import _export_forward_backward

    from firegrid.plans import loss_function

    loss_fn = loss_function(loss)

    class WithLoss(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.model(x)
            return loss_fn(logits, y), logits.detach()

    inputs = tuple(
        sample[:1].expand(batch_size, *sample.shape[1:]).contiguous()
        for sample in (sample_input, sample_target)
    )
    exported = torch.export.export(WithLoss(module), inputs, strict=False)
    joint = _export_forward_backward(exported).run_decompositions(_pool_backward_decompositions())
    return bytes(to_edge(joint).to_executorch().buffer)


@dataclass(frozen=True)
class Signature:
    """What a training program declares, read from its metadata without running it."""

    batch_size: int
    input_shape: tuple[int, ...]
    """One example's features (the input without its batch dimension)."""
    target_shape: tuple[int, ...]
    target_is_float: bool
    parameters: dict[str, tuple[int, ...]]
    """The trained tensors by state_dict name, in the program's order."""


class TrainingProgram:
    """A training program loaded in ExecuTorch's runtime (the one phones embed).

    The runtime reads the program from the bytes it was given: they are kept alive
    here, since it does not copy them.
    """

    def __init__(self, data: bytes) -> None:
        from executorch.extension.pybindings.portable_lib import (
            _load_for_executorch_from_buffer,
        )

        self._data = data
        self._module = _load_for_executorch_from_buffer(data)
        self.signature = self._signature()
        self._parameters: dict[str, torch.Tensor] | None = None

    def _index(self, kind: str) -> int:
        return int(self._module.run_method(f"__et_training_{kind}_index_{METHOD}", ())[0])

    def _signature(self) -> Signature:
        meta = self._module.method_meta(METHOD)
        if meta.num_inputs() != 2:
            raise ValueError(f"'{METHOD}' takes {meta.num_inputs()} inputs, not (x, y)")
        x, y = meta.input_tensor_meta(0), meta.input_tensor_meta(1)
        names = self._module.run_method(f"__et_training_fqn_{METHOD}", ())
        start = self._index("parameters")
        shapes = [
            tuple(meta.output_tensor_meta(i).sizes()) for i in range(start, start + len(names))
        ]
        for index, name in enumerate(names):
            if meta.output_tensor_meta(start + index).dtype() != _FLOAT:
                raise ValueError(f"parameter '{name}' is not float32")
        return Signature(
            batch_size=int(x.sizes()[0]),
            input_shape=tuple(x.sizes()[1:]),
            target_shape=tuple(y.sizes()[1:]),
            target_is_float=y.dtype() == _FLOAT,
            parameters={
                str(name).removeprefix(_PREFIX): shape
                for name, shape in zip(names, shapes, strict=True)
            },
        )

    def forward_backward(
        self, x: npt.NDArray[Any], y: npt.NDArray[Any]
    ) -> tuple[float, npt.NDArray[Any], dict[str, torch.Tensor]]:
        """Loss, logits and the gradients by parameter name, for one batch."""
        import torch

        outputs = self._module.run_method(
            METHOD, (torch.from_numpy(x), torch.from_numpy(y)), clone_outputs=False
        )
        grads_at, params_at = self._index("gradients"), self._index("parameters")
        names = list(self.signature.parameters)
        if self._parameters is None:  # the runtime's own tensors: written in place
            self._parameters = dict(zip(names, outputs[params_at:], strict=True))
        grads = dict(zip(names, (g.clone() for g in outputs[grads_at:params_at]), strict=True))
        return float(outputs[0]), outputs[1].numpy().copy(), grads

    def parameters(self) -> dict[str, torch.Tensor]:
        """The runtime's parameter tensors (known after the first ``forward_backward``)."""
        if self._parameters is None:
            self.forward_backward(*self.dummy_batch())
        assert self._parameters is not None
        return self._parameters

    def dummy_batch(self) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        """A batch of zeros (class 0 for class targets)."""
        signature = self.signature
        target_dtype = np.float32 if signature.target_is_float else np.int64
        return (
            np.zeros((signature.batch_size, *signature.input_shape), np.float32),
            np.zeros((signature.batch_size, *signature.target_shape), target_dtype),
        )


def validate_training_program(
    data: bytes, model: Mapping[str, npt.NDArray[Any]], name: str
) -> None:
    """Check a plan loads in ExecuTorch's runtime, trains exactly the model's tensors
    with their shapes, and runs one step (a kernel the runtime lacks fails here)."""
    try:
        program = TrainingProgram(data)
    except Exception as exc:  # the runtime raises RuntimeError / ValueError for bad programs
        raise BadRequest(
            f"plan '{name}' is not an ExecuTorch training program: {exc}", "invalid_plan"
        ) from exc
    trained = program.signature.parameters
    mismatched = sorted(set(trained) ^ set(model))
    if mismatched:
        raise BadRequest(
            f"plan '{name}' does not train the model's tensors (ExecuTorch plans train "
            f"parameters only, no buffers): {mismatched[:5]}",
            "invalid_plan",
        )
    for key, shape in trained.items():
        if shape != tuple(model[key].shape):
            raise BadRequest(
                f"plan '{name}': tensor '{key}' has shape {list(shape)}, "
                f"the model has {list(model[key].shape)}",
                "invalid_plan",
            )
    try:
        program.forward_backward(*program.dummy_batch())
    except Exception as exc:
        raise BadRequest(
            f"plan '{name}' does not run in ExecuTorch's runtime: {exc}", "invalid_plan"
        ) from exc
