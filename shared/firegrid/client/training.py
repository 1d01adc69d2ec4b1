"""Training a downloaded plan on local data, PyGrid-style: the result is a diff.

``diff = params_at_download - params_after_training`` (the protocol's convention).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from firegrid.tensors import decode_state, encode_state

Arrays = dict[str, npt.NDArray[Any]]


def _loss(name: str) -> Any:
    import torch.nn.functional as F

    losses = {
        "cross_entropy": F.cross_entropy,
        "mse": F.mse_loss,
        "bce_with_logits": F.binary_cross_entropy_with_logits,
    }
    return losses[name]


def train(
    plan: bytes,
    checkpoint: bytes,
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    config: Mapping[str, Any],
    *,
    seed: int = 0,
) -> tuple[bytes, int]:
    """Train on ``(x, y)`` with the ``config`` recipe; the diff (safetensors) and sample count."""
    import torch

    from firegrid.plans import load_plan

    generator = torch.Generator().manual_seed(seed)
    module = load_plan(plan)
    before = decode_state(checkpoint, "checkpoint")
    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in before.items()}, strict=True)
    params = [p for p in module.parameters() if p.requires_grad]
    lr = float(config.get("lr", 0.01))
    if config.get("optimizer", "sgd") == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(
            params, lr=lr, weight_decay=float(config.get("weight_decay", 0))
        )
    else:
        optimizer = torch.optim.SGD(
            params,
            lr=lr,
            momentum=float(config.get("momentum", 0)),
            weight_decay=float(config.get("weight_decay", 0)),
        )
    loss_fn = _loss(str(config.get("loss", "cross_entropy")))
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    batch_size = int(config.get("batch_size", 32))
    steps = int(config.get("max_updates") or 0) or int(config.get("epochs", 1)) * -(
        -len(x) // batch_size
    )
    mu = float(config.get("fedprox_mu", 0.0))
    anchor = [p.detach().clone() for p in params]
    for _ in range(steps):
        batch = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=generator)
        optimizer.zero_grad()
        loss = loss_fn(module(inputs[batch]), targets[batch])
        if mu > 0:
            loss = loss + mu / 2 * sum(
                ((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True)
            )
        loss.backward()
        optimizer.step()
    after = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    diff = {k: (before[k] - after[k]).astype(before[k].dtype) for k in before}
    return encode_state(diff), len(x)


def accuracy(plan: bytes, checkpoint: bytes, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> float:
    """Top-1 accuracy of a checkpoint on ``(x, y)``."""
    import torch

    from firegrid.plans import load_plan

    module = load_plan(plan)
    state = decode_state(checkpoint, "checkpoint")
    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=True)
    with torch.no_grad():
        predicted = module(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float(np.mean(predicted == y))
