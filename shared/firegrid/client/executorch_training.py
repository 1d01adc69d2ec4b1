"""Training with ExecuTorch's runtime, as a phone does: no torch autograd on the device.

The plan (``firegrid.executorch_plans``) computes the loss and the gradients itself;
ExecuTorch's own SGD steps the runtime's parameters in place. torch tensors appear only
as the runtime's Python binding hands them over (the runtime's memory), never in a
graph. Same recipe, batches and diff convention as ``firegrid.client.training``:
``diff = params_at_download - params_after_training``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from firegrid.client.training import encode_diff, sgd_settings, steps_for
from firegrid.domain.variants import EXECUTORCH, recipe_problem
from firegrid.executorch_plans import TrainingProgram
from firegrid.tensors import decode_state


class UnsupportedRecipe(ValueError):
    """The process's client_config asks for what ExecuTorch's runtime does not offer."""


def _load(program: TrainingProgram, checkpoint: bytes) -> dict[str, npt.NDArray[Any]]:
    """Write the checkpoint into the runtime's parameters; the checkpoint as numpy."""
    import torch

    state = decode_state(checkpoint, "checkpoint")
    parameters = program.parameters()
    if set(state) != set(parameters):
        raise ValueError(
            f"the plan trains {sorted(parameters)}, the checkpoint has {sorted(state)}"
        )
    for name, tensor in parameters.items():
        tensor.copy_(torch.from_numpy(state[name]))
    return state


def _sgd(program: TrainingProgram, config: Mapping[str, Any]) -> Any:
    from executorch.extension.training import get_sgd_optimizer

    problem = recipe_problem(EXECUTORCH, config)
    if problem:
        raise UnsupportedRecipe(problem)
    lr, momentum, weight_decay = sgd_settings(config)
    # Positional: (parameters, lr, momentum, dampening, weight_decay, nesterov).
    return get_sgd_optimizer(program.parameters(), lr, momentum, 0.0, weight_decay, False)


def train(
    program: TrainingProgram,
    checkpoint: bytes,
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    config: Mapping[str, Any],
    *,
    seed: int = 0,
) -> tuple[bytes, int]:
    """Train on ``(x, y)`` with the recipe, in batches of the plan's size (the recipe's
    ``batch_size`` when the plan was built from it); the diff and the sample count."""
    import torch

    rng = np.random.default_rng(seed)
    before = _load(program, checkpoint)
    optimizer = _sgd(program, config)
    parameters = program.parameters()
    mu = float(config.get("fedprox_mu", 0.0))
    batch_size = program.signature.batch_size
    for batch in _batches(
        len(x), batch_size, steps_for(len(x), {**config, "batch_size": batch_size}), rng
    ):
        _, _, grads = program.forward_backward(x[batch], y[batch])
        if mu > 0:  # FedProx's proximal term mu/2 |p - p0|^2 adds mu (p - p0) to the gradient
            for name, grad in grads.items():
                grad.add_(parameters[name] - torch.from_numpy(before[name]), alpha=mu)
        optimizer.step(grads)
    return encode_diff(before, {k: parameters[k].numpy() for k in before}), len(x)


def _batches(
    count: int, batch_size: int, steps: int, rng: np.random.Generator
) -> Iterator[npt.NDArray[Any]]:
    """Indices of each step's batch, as ``training.train`` takes them (consecutive slices
    of a shuffle, reshuffled when one would run past the end); a shard smaller than the
    plan's static batch repeats its shuffle to fill it."""
    order = np.resize(rng.permutation(count), max(count, batch_size))
    for step in range(steps):
        start = (step * batch_size) % len(order)
        if start + batch_size > len(order):
            order = np.resize(rng.permutation(count), len(order))
            start = 0
        yield order[start : start + batch_size]


def _padded(rows: npt.NDArray[Any], size: int) -> npt.NDArray[Any]:
    """``rows`` filled to ``size`` by repeating them (the extra results are dropped)."""
    return np.resize(rows, (size, *rows.shape[1:]))


def accuracy(
    program: TrainingProgram, checkpoint: bytes, x: npt.NDArray[Any], y: npt.NDArray[Any]
) -> float:
    """Top-1 accuracy of a checkpoint on ``(x, y)``, batch by batch through the program."""
    _load(program, checkpoint)
    size = program.signature.batch_size
    correct = 0
    for start in range(0, len(x), size):
        xs, ys = x[start : start + size], y[start : start + size]
        _, logits, _ = program.forward_backward(_padded(xs, size), _padded(ys, size))
        correct += int(np.sum(logits[: len(ys)].argmax(axis=1) == ys))
    return correct / len(x)
