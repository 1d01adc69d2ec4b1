"""ExecuTorch training plans, built as hosting builds them (from the ``torch.export``
plan's module): the runtime's SGD step equals torch's, and hosting's checks.

ExecuTorch is part of the dev extra (pyproject.toml: ``executorch``), so these run in CI.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from firegrid import executorch_plans
from firegrid.client import executorch_training
from firegrid.client.device import Device, LocalData
from firegrid.client.models import DigitsCNN
from firegrid.domain import blobs
from firegrid.domain.errors import BadRequest
from firegrid.domain.variants import EXECUTORCH, TORCH, recipe_problem
from firegrid.executorch_plans import (
    TrainingProgram,
    build_training_program,
    executorch_variant,
    validate_training_program,
)
from firegrid.plans import build_plan, load_plan, state_of
from firegrid.services import devices, hosting
from firegrid.services.context import Context
from firegrid.tensors import decode_state, encode_state
from tests.common import State
from tests.edge import call
from tests.unit.test_services import host_body, join


class MLP(torch.nn.Module):
    def __init__(self, activation: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(64, 32)
        self.activation = activation or torch.nn.ReLU()
        self.out = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.activation(self.hidden(x)))


def _batch(n: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 64)).astype(np.float32), rng.integers(0, 10, n).astype(np.int64)


def _program(module: torch.nn.Module, batch_size: int = 16) -> bytes:
    """The training program of ``module``'s plan, as hosting builds it."""
    return build_training_program(
        load_plan(build_plan(module, torch.zeros(4, 64))),
        torch.zeros(1, 64),
        torch.zeros(1, dtype=torch.int64),
        batch_size=batch_size,
    )


def _torch_step(module: torch.nn.Module, x, y, **sgd) -> dict[str, np.ndarray]:
    optimizer = torch.optim.SGD(module.parameters(), **sgd)
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(module(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    optimizer.step()
    return state_of(module)


MODELS = {
    "digits_cnn": DigitsCNN,
    "mlp_relu": MLP,
    "mlp_tanh": lambda: MLP(torch.nn.Tanh()),
    "mlp_gelu": lambda: MLP(torch.nn.GELU()),
    "mlp_dropout": lambda: MLP(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Dropout(0.5))),
}


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_one_sgd_step_in_executorch_equals_torchs(make) -> None:
    torch.manual_seed(0)
    model = make()
    program = TrainingProgram(_program(model))
    checkpoint = encode_state(state_of(model))
    x, y = _batch()
    config = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3, "batch_size": 16, "max_updates": 1}

    diff, count = executorch_training.train(program, checkpoint, x, y, config)

    model.eval()  # as exported: dropout is the identity in both
    expected = _torch_step(model, x, y, lr=0.1, momentum=0.9, weight_decay=1e-3)
    before = decode_state(checkpoint, "checkpoint")
    assert count == 16
    for name, tensor in decode_state(diff, "diff").items():
        np.testing.assert_allclose(before[name] - tensor, expected[name], rtol=1e-5, atol=1e-6)


def test_steps_change_the_runtimes_parameters_and_fit_the_batch() -> None:
    torch.manual_seed(0)
    program = TrainingProgram(_program(DigitsCNN()))
    x, y = _batch(16)
    first, _, _ = program.forward_backward(x, y)
    optimizer = executorch_training._sgd(program, {"lr": 0.5})
    for _ in range(20):
        optimizer.step(program.forward_backward(x, y)[2])
    last, logits, _ = program.forward_backward(x, y)
    assert last < first / 4
    assert (logits.argmax(axis=1) == y).all()


def test_a_shard_smaller_than_the_plans_batch_repeats_to_fill_it() -> None:
    torch.manual_seed(0)
    model = MLP()
    program = TrainingProgram(_program(model, batch_size=16))
    checkpoint = encode_state(state_of(model))
    x, y = _batch(5)
    diff, count = executorch_training.train(program, checkpoint, x, y, {"lr": 0.1}, seed=3)
    filled = np.resize(np.random.default_rng(3).permutation(5), 16)
    expected = _torch_step(model, x[filled], y[filled], lr=0.1)
    before = decode_state(checkpoint, "checkpoint")
    for name, tensor in decode_state(diff, "diff").items():
        np.testing.assert_allclose(before[name] - tensor, expected[name], rtol=1e-5, atol=1e-6)
    assert count == 5


def test_fedprox_pulls_towards_the_downloaded_model() -> None:
    torch.manual_seed(0)
    model = MLP()
    program = TrainingProgram(_program(model))
    checkpoint = encode_state(state_of(model))
    x, y = _batch()
    config = {"lr": 0.1, "batch_size": 16, "max_updates": 3}
    plain, _ = executorch_training.train(program, checkpoint, x, y, config)
    proximal, _ = executorch_training.train(program, checkpoint, x, y, config | {"fedprox_mu": 5.0})

    def norm(diff: bytes) -> float:
        return sum(float(np.sum(t**2)) for t in decode_state(diff, "diff").values())

    assert norm(proximal) < norm(plain)


def test_accuracy_runs_the_checkpoint_through_the_program() -> None:
    torch.manual_seed(0)
    model = MLP()
    program = TrainingProgram(_program(model, batch_size=4))
    x, y = _batch(10)
    with torch.no_grad():
        expected = float(np.mean(model.eval()(torch.from_numpy(x)).argmax(1).numpy() == y))
    assert executorch_training.accuracy(
        program, encode_state(state_of(model)), x, y
    ) == pytest.approx(expected)


def test_adam_is_refused_with_the_reason() -> None:
    program = TrainingProgram(_program(MLP()))
    with pytest.raises(
        executorch_training.UnsupportedRecipe, match=r"optimizer \[.sgd.\], not .adam."
    ):
        executorch_training._sgd(program, {"optimizer": "adam"})


def test_only_the_executorch_variant_refuses_adam() -> None:
    assert recipe_problem(TORCH, {"optimizer": "adam"}) is None
    assert recipe_problem(EXECUTORCH, {"optimizer": "sgd", "momentum": 0.9}) is None


def test_a_python_device_runs_the_torch_or_the_executorch_plan_only() -> None:
    data = LocalData(*_batch(4))
    assert Device("http://127.0.0.1:9", "m", data, runtime=EXECUTORCH).runtime == EXECUTORCH
    with pytest.raises(ValueError, match="'torch' or 'executorch', not 'layers'"):
        Device("http://127.0.0.1:9", "m", data, runtime="layers")


def test_hosting_accepts_a_program_that_matches_the_model() -> None:
    model = DigitsCNN()
    validate_training_program(_program(model), state_of(model), "training_plan")


def test_hosting_refuses_a_program_of_another_model() -> None:
    with pytest.raises(BadRequest, match="does not train the model's tensors"):
        validate_training_program(_program(MLP()), state_of(DigitsCNN()), "training_plan")


def test_hosting_refuses_other_shapes() -> None:
    model = MLP()
    state = state_of(model) | {"out.bias": np.zeros(11, np.float32)}
    with pytest.raises(BadRequest, match=r"'out.bias' has shape \[10\], the model has \[11\]"):
        validate_training_program(_program(model), state, "training_plan")


@pytest.mark.parametrize("data", [b"", b"not a program", b"\0\0\0\0ET12" + b"\0" * 64])
def test_hosting_refuses_bytes_that_are_no_program(data: bytes) -> None:
    with pytest.raises(BadRequest, match="is not an ExecuTorch training program"):
        validate_training_program(data, state_of(MLP()), "training_plan")


class BatchNormNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)
        self.norm = torch.nn.BatchNorm1d(10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(x))


def _variant(model: torch.nn.Module, **recipe: Any) -> bytes:
    """Hosting's ``executorch`` variant of ``model``'s plan."""
    plan = build_plan(model, torch.zeros(4, 64))
    return executorch_variant(plan, state_of(model), "training_plan", recipe)


def test_hosting_builds_the_variant_for_the_recipes_loss_and_batch_size() -> None:
    torch.manual_seed(0)
    model = MLP()
    program = TrainingProgram(_variant(model, loss="mse", batch_size=5))
    x = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
    target = np.zeros((5, 10), np.float32)

    loss, logits, _ = program.forward_backward(x, target)

    assert program.signature.batch_size == 5
    assert program.signature.target_is_float
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x))
    assert loss == pytest.approx(float(torch.nn.functional.mse_loss(expected, torch.zeros(5, 10))))
    np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_batch_norm_buffers_are_refused_at_hosting() -> None:
    """Exported in eval mode, batch norm's running statistics are constants of the
    program, not trained: the model's buffers have no place in it."""
    with pytest.raises(BadRequest, match=r"no buffers.*norm\.num_batches_tracked"):
        _variant(BatchNormNet())


class AvgPoolNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.reshape(x.shape[0], 1, 8, 8)
        return self.fc(torch.nn.functional.avg_pool2d(self.conv(images), 2).flatten(1))


def test_a_kernel_the_runtime_lacks_is_refused_at_hosting() -> None:
    """ExecuTorch 1.4's portable kernels have no avg_pool2d backward."""
    with pytest.raises(BadRequest, match="does not run in ExecuTorch's runtime"):
        _variant(AvgPoolNet())


def test_what_export_or_lowering_cannot_do_is_refused_with_its_reason(monkeypatch) -> None:
    def fails(*args: Any, **kwargs: Any) -> bytes:
        raise RuntimeError("no kernel for aten.mystery")

    monkeypatch.setattr(executorch_plans, "build_training_program", fails)
    with pytest.raises(
        BadRequest, match=r"no kernel for aten\.mystery; host it without"
    ) as refused:
        _variant(MLP())

    assert refused.value.code == "unsupported_layer"


def test_a_deployment_without_executorch_says_so(monkeypatch) -> None:
    monkeypatch.setattr(executorch_plans.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BadRequest, match=r"needs firegrid\[executorch\]") as refused:
        _variant(MLP())

    assert refused.value.code == "unsupported_plan_format"


# -- hosting and get-plan -------------------------------------------------------------


def test_hosting_with_variants_executorch_serves_the_program_beside_the_others(
    ctx: Context, tiny: tuple[State, bytes]
) -> None:
    body = host_body(tiny) | {"variants": ["executorch", "layers"]}
    process_id = call(hosting.host_training, ctx, body)["process_id"]
    worker_id, key = join(ctx)
    query = {"worker_id": worker_id, "request_key": key, "plan_id": "training_plan"}

    served = call(devices.get_plan, ctx, query | {"receive_operations_as": "executorch"})

    assert served == ctx.blobs.get(blobs.plan_object(process_id, "training_plan", "executorch"))
    program = TrainingProgram(served)
    assert program.signature.batch_size == body["client_config"]["batch_size"]
    assert program.signature.parameters == {k: v.shape for k, v in tiny[0].items()}
    sizes = ctx.repo.get_process(process_id).variant_sizes
    assert sizes["executorch"] == {"training_plan": len(served)}
    assert set(sizes) == {"executorch", "layers"}


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"optimizer": "adam"}, "ExecuTorch's runtime trains with optimizer ['sgd'], not 'adam'"),
        ({"batch_size": 1025}, "batches of at most 1024 rows, not 1025"),
    ],
)
def test_a_recipe_executorch_cannot_train_is_refused_at_hosting(
    ctx: Context, tiny: tuple[State, bytes], recipe: dict[str, Any], message: str
) -> None:
    body = host_body(tiny) | {"variants": ["executorch"]}
    body["client_config"] |= recipe

    with pytest.raises(BadRequest) as refused:
        call(hosting.host_training, ctx, body)

    assert message in refused.value.message
    assert refused.value.code == "invalid_plan"
    assert not ctx.repo.processes
