"""What ``tvmforge inspect`` reports about an ONNX model: ops, support, shapes and FLOPs.

FLOPs are estimated from ONNX shape inference with the input shapes fixed: a multiply-add
counts as 2 (Conv: ``2 * |out| * Cin/groups * prod(kernel)``; MatMul/Gemm: ``2 * |out| * K``;
pooling: ``|out| * prod(kernel)``; other ops one per output element). Ops whose output shape
inference cannot fix are counted as unknown, never guessed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from tvmforge.frontend.importer import OnnxModel, TensorInfo, unsupported_nodes

_ELEMENTWISE_FREE = frozenset(
    {
        "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Shape", "Constant",
        "ConstantOfShape", "Transpose", "Concat", "Split", "Slice", "Gather", "Cast", "Expand",
    }
)  # fmt: skip


@dataclass
class ModelReport:
    """Everything ``inspect`` prints about a model."""

    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    opset: int
    op_counts: dict[str, int]
    flops: float
    flops_by_op: dict[str, float]
    unknown_flops_nodes: int
    unsupported: list[tuple[str, str]] = field(default_factory=list)
    parameters: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": [i.to_json() for i in self.inputs],
            "outputs": [o.to_json() for o in self.outputs],
            "opset": self.opset,
            "ops": self.op_counts,
            "parameters": self.parameters,
            "flops": self.flops,
            "flops_by_op": self.flops_by_op,
            "nodes_without_flops_estimate": self.unknown_flops_nodes,
            "unsupported": [{"node": n, "op": op} for n, op in self.unsupported],
        }


def _fixed_model(model: OnnxModel, inputs: list[TensorInfo]) -> onnx.ModelProto:
    proto = onnx.ModelProto.FromString(model.proto.SerializeToString())
    # IR < 4 lists initializers among the inputs; shape inference ignores those that are not.
    proto.ir_version = max(proto.ir_version, 4)
    by_name = {i.name: i for i in inputs}
    for vi in proto.graph.input:
        info = by_name.get(vi.name)
        if info is None:
            continue
        dims = vi.type.tensor_type.shape.dim
        for d, size in zip(dims, info.shape, strict=False):
            if isinstance(size, int):
                d.ClearField("dim_param")
                d.dim_value = size
    try:
        return onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:
        return proto


def _shapes(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    g = proto.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(
            d.HasField("dim_value") and d.dim_value > 0 for d in dims
        ):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    for t in g.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
    return shapes


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def node_flops(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> float | None:
    """Estimated FLOPs of one node, or ``None`` when its shapes are unknown."""
    op = node.op_type
    if op in _ELEMENTWISE_FREE:
        return 0.0
    out = shapes.get(node.output[0]) if node.output else None
    if out is None:
        return None
    n_out = float(np.prod(out)) if out else 1.0
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = shapes.get(node.input[3 if op == "QLinearConv" else 1])
        if w is None:
            return None
        return 2.0 * n_out * float(np.prod(w[1:]))
    if op == "ConvTranspose":
        x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
        if x is None or w is None:
            return None
        return 2.0 * float(np.prod(x)) * float(np.prod(w[1:]))
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "Gemm"):
        a = shapes.get(node.input[0])
        if a is None:
            return None
        k = a[-2] if (op == "Gemm" and _attr(node, "transA", 0)) else a[-1]
        return 2.0 * n_out * float(k)
    if op in ("MaxPool", "AveragePool", "LpPool"):
        return n_out * float(np.prod(_attr(node, "kernel_shape", [1])))
    if op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax"):
        x = shapes.get(node.input[0])
        return float(np.prod(x)) if x is not None else None
    return n_out


def report(model: OnnxModel, inputs: list[TensorInfo] | None = None) -> ModelReport:
    """Inspect a model; ``inputs`` with fixed shapes make the FLOPs estimate complete."""
    inputs = inputs if inputs is not None else model.inputs
    fixed = _fixed_model(model, inputs)
    shapes = _shapes(fixed)
    counts = Counter(n.op_type for n in model.proto.graph.node)
    flops_by_op: Counter[str] = Counter()
    unknown = 0
    for node in fixed.graph.node:
        f = node_flops(node, shapes)
        if f is None:
            unknown += 1
        else:
            flops_by_op[node.op_type] += f
    params = sum(int(np.prod(t.dims)) for t in model.proto.graph.initializer)
    params += sum(  # weights stored in Constant nodes (common in exported Paddle models)
        int(np.prod(a.t.dims))
        for n in model.proto.graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value" and len(a.t.dims) > 1
    )
    return ModelReport(
        inputs=inputs,
        outputs=model.outputs,
        opset=model.opset,
        op_counts=dict(counts.most_common()),
        flops=float(sum(flops_by_op.values())),
        flops_by_op={k: v for k, v in flops_by_op.most_common() if v > 0},
        unknown_flops_nodes=unknown,
        unsupported=unsupported_nodes(model),
        parameters=params,
    )
