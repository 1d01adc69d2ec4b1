"""Training a downloaded plan on local data, PyGrid-style: the result is a diff.

``diff = params_at_download - params_after_training`` (the protocol's convention).
The module is the plan's ``torch.export`` program (``firegrid.plans.load_plan``);
the recipe is the process's ``client_config``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from firegrid.domain.variants import batch_size
from firegrid.plans import loss_function
from firegrid.tensors import decode_state, encode_state


def _load(module: Any, checkpoint: bytes) -> dict[str, npt.NDArray[Any]]:
    import torch

    state = decode_state(checkpoint, "checkpoint")
    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=True)
    return state


def sgd_settings(config: Mapping[str, Any]) -> tuple[float, float, float]:
    """The recipe's ``(lr, momentum, weight_decay)``, with their defaults: one reading for
    every runtime that trains it."""
    return (
        float(config.get("lr", 0.01)),
        float(config.get("momentum", 0.0)),
        float(config.get("weight_decay", 0.0)),
    )


def encode_diff(
    before: Mapping[str, npt.NDArray[Any]], after: Mapping[str, npt.NDArray[Any]]
) -> bytes:
    """``params_at_download - params_after_training`` in the checkpoint's dtypes."""
    return encode_state({k: (before[k] - after[k]).astype(before[k].dtype) for k in before})


def _optimizer(params: list[Any], config: Mapping[str, Any]) -> Any:
    import torch

    lr, momentum, decay = sgd_settings(config)
    if config.get("optimizer", "sgd") == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=decay)


def steps_for(num_samples: int, config: Mapping[str, Any]) -> int:
    """``max_updates`` if set, else ``epochs`` (default 1) passes over the data."""
    if config.get("max_updates"):
        return int(config["max_updates"])
    return int(config.get("epochs", 1)) * -(-num_samples // batch_size(config))


def train(
    module: Any,
    checkpoint: bytes,
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    config: Mapping[str, Any],
    *,
    seed: int = 0,
) -> tuple[bytes, int]:
    """Train on ``(x, y)`` with the recipe; the diff (safetensors bytes) and the sample count."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    before = _load(module, checkpoint)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = _optimizer(params, config)
    loss_fn = loss_function(str(config.get("loss", "cross_entropy")))
    mu = float(config.get("fedprox_mu", 0.0))
    anchor = [p.detach().clone() for p in params]
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    size = min(batch_size(config), len(x))
    order = torch.randperm(len(x), generator=generator)
    for step in range(steps_for(len(x), config)):
        start = (step * size) % len(x)
        if start + size > len(x):
            order = torch.randperm(len(x), generator=generator)
            start = 0
        batch = order[start : start + size]
        optimizer.zero_grad()
        loss = loss_fn(module(inputs[batch]), targets[batch])
        if mu > 0:  # FedProx's proximal term keeps local models near the global one
            loss = loss + mu / 2 * sum(
                ((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True)
            )
        loss.backward()
        optimizer.step()
    after = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    return encode_diff(before, after), len(x)


def accuracy(module: Any, checkpoint: bytes, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> float:
    """Top-1 accuracy of a checkpoint on ``(x, y)``."""
    import torch

    _load(module, checkpoint)
    with torch.no_grad():
        predicted = module(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float(np.mean(predicted == y))
