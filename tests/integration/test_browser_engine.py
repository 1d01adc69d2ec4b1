"""The browser SDK's engine, run in headless chromium, against torch: its loss and
gradients equal torch autograd's on the same layer spec and weights (float32 tolerance),
and a whole local training (SGD with momentum, weight decay, FedProx) gives the Python
SDK's diff."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

from firegrid.client.models import DigitsCNN
from firegrid.client.training import train
from firegrid.layer_plans import layers_variant
from firegrid.plans import build_plan, load_plan, state_of
from firegrid.tensors import decode_state, encode_state
from tests.common import b64
from tests.integration.web import sdk_page

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ATOL, RTOL = 1e-5, 1e-4
GRADIENTS = """async ({spec, checkpoint, x, y, n, loss}) => {
  const fg = window.firegrid;
  const model = new fg.LayerModel(spec, fg.decodeSafetensors(window.bytesOf(checkpoint)));
  const out = model.gradients(Float32Array.from(x), Float64Array.from(y), n, loss);
  const grads = Object.fromEntries([...out.grads].map(([k, v]) => [k, Array.from(v)]));
  return {loss: out.loss, grads};
}"""
TRAIN = """async ({spec, checkpoint, x, y, config}) => {
  const fg = window.firegrid;
  const data = {x: Float32Array.from(x), y: Float64Array.from(y)};
  const trained = fg.train(spec, window.bytesOf(checkpoint), data, config, {seed: 1});
  return {diff: fg.toBase64(trained.diff), numSamples: trained.numSamples};
}"""


@pytest.fixture(scope="module")
def page(browser: Any) -> Iterator[Any]:
    with sdk_page(browser) as opened:
        yield opened


class StridedCNN(torch.nn.Module):
    """A strided, padded convolution into a second one (whose input gradient the first
    needs), average pooling, a linear layer without bias."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.pool = torch.nn.AvgPool2d(2)
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(self.pool(features))


def _mlp() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )  # fmt: skip


MODELS: dict[str, tuple[Callable[[], torch.nn.Module], tuple[int, ...], int]] = {
    "digits_cnn": (DigitsCNN, (64,), 10),
    "mlp": (_mlp, (64,), 10),
    "strided_cnn": (StridedCNN, (2, 9, 9), 4),
}


def _hosted(name: str) -> tuple[torch.nn.Module, dict[str, Any], bytes]:
    """A seeded module, its layers spec as hosting builds it, and its checkpoint."""
    make, shape, _ = MODELS[name]
    torch.manual_seed(3)
    module = make()
    plan = build_plan(module, torch.zeros(2, *shape))
    spec = json.loads(layers_variant(plan, state_of(module), "training_plan"))
    return module, spec, encode_state(state_of(module))


def _torch_gradients(
    module: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, loss: str
) -> tuple[float, dict[str, np.ndarray]]:
    module.zero_grad()
    output = module(x)
    if loss == "mse":
        value = torch.nn.functional.mse_loss(output, target)
    else:
        value = torch.nn.functional.cross_entropy(output, target)
    value.backward()
    return float(value.detach()), {k: p.grad.numpy() for k, p in module.named_parameters()}


@pytest.mark.parametrize(
    ("name", "loss"),
    [
        ("digits_cnn", "cross_entropy"),
        ("mlp", "cross_entropy"),
        ("strided_cnn", "cross_entropy"),
        ("mlp", "mse"),
    ],
)
def test_the_engines_gradients_equal_torch_autograds(page: Any, name: str, loss: str) -> None:
    module, spec, checkpoint = _hosted(name)
    _, shape, classes = MODELS[name]
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(8, *shape, generator=generator)
    if loss == "mse":
        target = torch.randn(8, classes, generator=generator)
    else:
        target = torch.randint(0, classes, (8,), generator=generator)
    expected_loss, expected = _torch_gradients(module, x, target, loss)

    got = page.evaluate(
        GRADIENTS,
        {
            "spec": spec,
            "checkpoint": b64(checkpoint),
            "x": x.flatten().tolist(),
            "y": target.flatten().tolist(),
            "n": 8,
            "loss": loss,
        },
    )

    assert got["loss"] == pytest.approx(expected_loss, rel=RTOL)
    assert set(got["grads"]) == set(expected)
    for key, grad in expected.items():
        assert np.abs(grad).max() > 0, key  # a gradient that is all zeros would prove nothing
        np.testing.assert_allclose(
            np.array(got["grads"][key]).reshape(grad.shape), grad, atol=ATOL, rtol=RTOL
        )


def test_local_training_gives_the_python_sdks_diff(page: Any) -> None:
    """Whole-shard batches, so both see the same batches whatever their shuffling."""
    module, spec, checkpoint = _hosted("digits_cnn")
    generator = torch.Generator().manual_seed(11)
    x = torch.rand(16, 64, generator=generator).numpy()
    y = torch.randint(0, 10, (16,), generator=generator).numpy()
    config = {
        "batch_size": 16,
        "max_updates": 4,
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 0.01,
        "fedprox_mu": 0.1,
    }
    plan_module = load_plan(build_plan(module, torch.zeros(2, 64)))
    expected, expected_samples = train(plan_module, checkpoint, x, y, config)

    got = page.evaluate(
        TRAIN,
        {
            "spec": spec,
            "checkpoint": b64(checkpoint),
            "x": x.flatten().tolist(),
            "y": y.tolist(),
            "config": config,
        },
    )

    diff = decode_state(base64.b64decode(got["diff"]))
    assert got["numSamples"] == expected_samples == 16
    reference = decode_state(expected)
    assert set(diff) == set(reference)
    for key, value in reference.items():
        assert diff[key].dtype == np.float32 and diff[key].shape == value.shape
        assert np.abs(value).max() > 0, key
        np.testing.assert_allclose(diff[key], value, atol=ATOL, rtol=1e-3)
