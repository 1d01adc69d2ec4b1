"""The ``layers`` plan variant: a FireGrid layer spec a browser executes (docs/devices.md).

Hosting builds it from the hosted ``torch.export`` program, so it describes what the
model's forward really computes (functional calls and reshapes included, not just the
declared submodules), and checks that it agrees with the model: its parameters are
the checkpoint's tensors (same names, shapes, float32) and its forward, run here with
torch's own functional ops, equals the program's on a probe input. The JavaScript
engine (``firegrid/web/firegrid-device.js``) is tested to match torch autograd on
the same specs (tests/integration/test_browser_engine.py).

A spec is a chain: each layer takes the previous one's output. Supported: Linear,
Conv2d (groups 1, dilation 1), ReLU, MaxPool2d (dilation 1), AvgPool2d (no padding,
floor), any reshape that keeps the batch dimension (flatten, view), Dropout as exported
(eval: the identity, as the torch plan trains it). torch is imported here, lazily by
hosting: never on the device HTTP path.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from firegrid.domain.errors import BadRequest
from firegrid.domain.variants import LAYERS

if TYPE_CHECKING:
    import torch
    from torch.fx import Node

FORMAT = "firegrid-layers"
VERSION = 1
PROBE_BATCH = 4
TOLERANCE = 1e-4
"""Absolute and relative, in float32: the probe's outputs must agree this closely."""
SUPPORTED = "Linear, Conv2d, ReLU, MaxPool2d, AvgPool2d, Flatten/reshape, Dropout"
Layer = dict[str, Any]


class _Refused(Exception):
    """The graph holds something the format cannot express (the message says what)."""


def layers_variant(plan: bytes, model: Mapping[str, npt.NDArray[Any]], name: str) -> bytes:
    """The ``layers`` variant of plan ``name`` (JSON bytes), checked against the model."""
    from firegrid.plans import load_program

    program = load_program(plan)
    try:
        spec = build_spec(program)
    except _Refused as refused:
        raise BadRequest(
            f"plan '{name}' cannot be served as '{LAYERS}': {refused} (the format supports "
            f"{SUPPORTED}); host it without variants ['{LAYERS}']",
            "unsupported_layer",
        ) from None
    _check_parameters(spec, model, name)
    _check_forward(spec, program, model, name)
    return json.dumps(spec, separators=(",", ":")).encode()


def build_spec(program: torch.export.ExportedProgram) -> dict[str, Any]:
    """The layer spec of an exported forward pass (``_Refused`` if it is not expressible)."""
    signature = program.graph_signature
    parameters = signature.inputs_to_parameters
    user_inputs = signature.user_inputs
    if len(user_inputs) != 1 or len(signature.user_outputs) != 1:
        raise _Refused("the forward must take one tensor and return one")
    current: Node | None = None
    layers: list[Layer] = []
    for node in program.graph.nodes:
        if node.op == "placeholder":
            if node.name == user_inputs[0]:
                current = node
        elif node.op == "call_function" and node.target not in _shape_only():
            layer = _layer(node, current, parameters)
            if layer is not None:
                layers.append(layer)
            current = node
        elif node.op == "output" and node.args[0][0] is not current:
            raise _Refused("the forward's output is not its last layer's")
    input_node = next(n for n in program.graph.nodes if n.name == user_inputs[0])
    used = [layer[key] for layer in layers for key in ("weight", "bias") if layer.get(key)]
    state = program.state_dict
    return {
        "format": FORMAT,
        "version": VERSION,
        "input_shape": _sample_shape(input_node, "the input"),
        "output_shape": _sample_shape(current, "the output"),
        "layers": layers,
        "parameters": {
            key: {
                "dtype": str(state[key].dtype).removeprefix("torch."),
                "shape": list(state[key].shape),
            }
            for key in used
        },
    }


def _where(node: Node) -> str:
    """The layer a graph node comes from, as the operator's module names it."""
    stack = node.meta.get("nn_module_stack") or {}
    path, kind = list(stack.values())[-1] if stack else ("", "the model")
    kind_name = getattr(kind, "__name__", str(kind)).rsplit(".", 1)[-1]
    return f"layer '{path}' ({kind_name})" if path else f"the forward of {kind_name}"


def _sample_shape(node: Node | None, what: str) -> list[int]:
    """The shape of one sample (without the dynamic batch dimension), which must be fixed."""
    value = node.meta.get("val") if node is not None else None
    shape = list(getattr(value, "shape", ()))[1:]
    if not all(isinstance(size, int) for size in shape):
        raise _Refused(f"{what} has a dynamic size besides the batch: {shape}")
    return [int(size) for size in shape]


def _layer(node: Node, current: Node | None, parameters: Mapping[str, str]) -> Layer | None:
    """The layer of one graph call in the chain (None: it computes nothing, as eval dropout)."""
    from torch.fx.operator_schemas import normalize_function

    build = _builders().get(node.target)
    if build is None:
        raise _Refused(f"{_where(node)} uses {node.target}")
    op = cast("Callable[..., Any]", node.target)  # a builder's key: an aten operator
    normalized = normalize_function(
        op, tuple(node.args), dict(node.kwargs), normalize_to_only_use_kwargs=True
    )
    assert normalized is not None
    args = dict(normalized.kwargs)
    if args.pop("input", args.pop("self", None)) is not current:
        raise _Refused(f"{_where(node)} does not take the previous layer's output (not a chain)")
    try:
        layer = build(node, args)
    except _Refused as refused:
        raise _Refused(f"{_where(node)}: {refused}") from None
    if layer is None:
        return None
    for key in ("weight", "bias"):
        tensor = layer.get(key)
        if tensor is not None and getattr(tensor, "name", None) not in parameters:
            raise _Refused(f"{_where(node)} computes its {key} (it must be a parameter)")
        if key in layer:
            layer[key] = parameters[tensor.name] if tensor is not None else None
    return layer | {"source": _where(node)}


def _pair(value: Any) -> list[int]:
    values = [int(v) for v in value]
    return values * 2 if len(values) == 1 else values


def _linear(node: Node, args: dict[str, Any]) -> Layer:
    return {"op": "linear", "weight": args["weight"], "bias": args.get("bias")}


def _conv2d(node: Node, args: dict[str, Any]) -> Layer:
    if args.get("groups", 1) != 1 or _pair(args.get("dilation", [1])) != [1, 1]:
        raise _Refused("only groups=1 and dilation=1 are supported")
    return {
        "op": "conv2d",
        "weight": args["weight"],
        "bias": args.get("bias"),
        "stride": _pair(args.get("stride", [1])),
        "padding": _pair(args.get("padding", [0])),
    }


def _pool(node: Node, args: dict[str, Any], op: str) -> Layer:
    kernel = _pair(args["kernel_size"])
    if args.get("ceil_mode") or _pair(args.get("dilation", [1])) != [1, 1]:
        raise _Refused("ceil_mode and dilation are not supported")
    padding = _pair(args.get("padding", [0]))
    if op == "avg_pool2d" and (padding != [0, 0] or args.get("divisor_override")):
        raise _Refused("padding and divisor_override are not supported")
    stride = _pair(args.get("stride") or kernel)
    return {"op": op, "kernel_size": kernel, "stride": stride, "padding": padding}


def _reshape(node: Node, args: dict[str, Any]) -> Layer:
    return {"op": "reshape", "shape": _sample_shape(node, "the reshape")}


def _dropout(node: Node, args: dict[str, Any]) -> Layer | None:
    """Exported in eval mode, dropout is the identity (the torch plan trains it so too)."""
    if args.get("train"):
        raise _Refused("dropout in training mode is not supported")
    return None


@functools.cache
def _shape_only() -> frozenset[Any]:
    """Calls that only compute sizes for a reshape: not layers, not in the chain."""
    import torch

    return frozenset({torch.ops.aten.sym_size.int})


@functools.cache
def _builders() -> Mapping[Any, Callable[[Node, dict[str, Any]], Layer | None]]:
    import torch

    aten = torch.ops.aten
    return {
        aten.linear.default: _linear,
        aten.conv2d.default: _conv2d,
        aten.relu.default: lambda node, args: {"op": "relu"},
        aten.relu_.default: lambda node, args: {"op": "relu"},
        aten.max_pool2d.default: lambda node, args: _pool(node, args, "max_pool2d"),
        aten.avg_pool2d.default: lambda node, args: _pool(node, args, "avg_pool2d"),
        aten.flatten.using_ints: _reshape,
        aten.reshape.default: _reshape,
        aten.view.default: _reshape,
        aten.dropout.default: _dropout,
    }


def run_spec(spec: Mapping[str, Any], state: Mapping[str, torch.Tensor], x: torch.Tensor) -> Any:
    """The spec's forward pass with torch's functional ops (what the JS engine computes)."""
    import torch.nn.functional as F

    for layer in spec["layers"]:
        op = layer["op"]
        if op == "linear":
            x = F.linear(x, state[layer["weight"]], _bias(state, layer))
        elif op == "conv2d":
            weight, bias = state[layer["weight"]], _bias(state, layer)
            x = F.conv2d(x, weight, bias, layer["stride"], layer["padding"])
        elif op == "relu":
            x = F.relu(x)
        elif op == "max_pool2d":
            x = F.max_pool2d(x, layer["kernel_size"], layer["stride"], layer["padding"])
        elif op == "avg_pool2d":
            x = F.avg_pool2d(x, layer["kernel_size"], layer["stride"])
        elif op == "reshape":
            x = x.reshape(x.shape[0], *layer["shape"])
    return x


def _bias(state: Mapping[str, Any], layer: Layer) -> Any:
    return state[layer["bias"]] if layer.get("bias") else None


def _check_parameters(spec: Mapping[str, Any], model: Mapping[str, Any], name: str) -> None:
    """Every tensor the spec uses is the checkpoint's, float32, same shape; and every tensor
    of the checkpoint is used (a browser's diff must cover them all)."""
    used = spec["parameters"]
    missing = sorted(set(model) - set(used))
    if missing:
        raise BadRequest(
            f"plan '{name}' as '{LAYERS}' does not use the model's tensors {missing[:5]}",
            "unsupported_layer",
        )
    for key, described in used.items():
        tensor = model.get(key)
        if tensor is None or tensor.dtype != np.float32 or list(tensor.shape) != described["shape"]:
            found = "absent" if tensor is None else f"{tensor.dtype} {list(tensor.shape)}"
            raise BadRequest(
                f"plan '{name}' as '{LAYERS}': tensor '{key}' must be float32 "
                f"{described['shape']} in the model, which has it {found}",
                "invalid_plan",
            )


def _check_forward(
    spec: Mapping[str, Any],
    program: torch.export.ExportedProgram,
    model: Mapping[str, npt.NDArray[Any]],
    name: str,
) -> None:
    """On a seeded probe, the spec's forward equals the program's with the model's weights."""
    import torch

    state = {key: torch.from_numpy(np.array(value)) for key, value in model.items()}
    module = program.module()
    module.load_state_dict(state, strict=True)
    probe = torch.randn(
        PROBE_BATCH, *spec["input_shape"], generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        expected, got = module(probe), run_spec(spec, state, probe)
    if got.shape != expected.shape or not torch.allclose(
        got, expected, atol=TOLERANCE, rtol=TOLERANCE
    ):
        raise BadRequest(
            f"plan '{name}' as '{LAYERS}' does not compute what the plan computes on a probe input",
            "invalid_plan",
        )
