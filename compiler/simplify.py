"""ONNX graph simplification before import: fixed input shapes, shape inference, constant folding.

Real models compute the targets of Reshape / Expand / Resize / Pad / Slice at run time from
``Shape → Gather → Concat`` chains; TVM's importer needs those as constants ("Reshape requires
the input new shape to be Shape"). With the input shapes fixed, every such chain is a constant,
and this pre-pass turns it into one:

1. the model's input dims are set to the resolved shapes and ONNX shape inference runs;
2. ``Shape`` / ``Size`` of a tensor with a static inferred shape become constants;
3. a node whose inputs are all constants is evaluated (``onnx.reference``) and replaced by its
   value; except quantization boundaries (``QuantizeLinear``/``DequantizeLinear``, which the
   int8 path must see), random ops, and nodes whose output would be very large;
4. an ``If`` whose condition is constant is replaced by the nodes of the branch it takes, and
   a ``Loop`` with a constant trip count whose condition passes through (a for-loop) is
   unrolled (up to ``MAX_UNROLL`` iterations; scan outputs stacked on axis 0);
5. nodes that no graph output depends on are dropped;

repeated until nothing changes. It runs on a copy: the user's model (and its sha256) is untouched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .frontend import TensorInfo

log = logging.getLogger(__name__)

# Never folded: the int8 path needs the Q/DQ boundaries, random ops are not constants.
_KEEP = frozenset(
    {
        "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "RandomNormal",
        "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
        "If", "Loop", "Scan", "SequenceConstruct", "SequenceAt", "SequenceInsert",
        "SequenceEmpty", "SplitToSequence", "ConcatFromSequence",
    }
)  # fmt: skip
MAX_FOLDED_ELEMENTS = 1 << 24  # 64 MB of float32: beyond that a folded tensor bloats the model


@dataclass
class SimplifyReport:
    """What the pre-pass did."""

    folded_nodes: int = 0
    inlined_ifs: int = 0
    unrolled_loops: int = 0
    removed_dead: int = 0
    rounds: int = 0
    notes: list[str] = field(default_factory=list)


def _fix_input_shapes(model: onnx.ModelProto, inputs: list[TensorInfo]) -> None:
    by_name = {i.name: i for i in inputs}
    for vi in model.graph.input:
        info = by_name.get(vi.name)
        if info is None:
            continue
        shape = vi.type.tensor_type.shape
        shape.ClearField("dim")
        for d in info.shape:
            shape.dim.add().dim_value = int(d)


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    shapes = {}
    g = model.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
    return shapes


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as err:  # inference is a help, not a requirement
        log.info("shape inference failed: %s", err)
        return model


def _shape_value(node: onnx.NodeProto, shape: tuple[int, ...]) -> np.ndarray:
    if node.op_type == "Size":
        return np.array(int(np.prod(shape)), dtype=np.int64)
    start, end = 0, len(shape)
    for a in node.attribute:
        if a.name == "start":
            start = a.i
        elif a.name == "end":
            end = a.i
    rank = len(shape)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return np.array(shape[start:end], dtype=np.int64)


def _evaluate(node: onnx.NodeProto, consts: dict[str, np.ndarray], opsets) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    inputs = [n for n in node.input if n]
    g = helper.make_graph(
        [node],
        "fold",
        [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(consts[n].dtype), None)
            for n in dict.fromkeys(inputs)
        ],
        [
            helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
            for o in node.output
            if o
        ],
    )
    m = helper.make_model(g, opset_imports=opsets, ir_version=9)
    feeds = {n: consts[n] for n in dict.fromkeys(inputs)}
    return ReferenceEvaluator(m).run(None, feeds)


def _inline_if(node: onnx.NodeProto, cond: bool, prefix: str) -> list[onnx.NodeProto]:
    """The taken branch's nodes, then ``Identity`` from each branch output to the If's output.

    Value names stay as they are: ONNX forbids a subgraph to reuse a name of its outer
    scopes, so the branch's names cannot clash with the graph's.
    """
    branch = next(
        a.g for a in node.attribute if a.name == ("then_branch" if cond else "else_branch")
    )
    nodes = []
    for t in branch.initializer:
        nodes.append(helper.make_node("Constant", [], [t.name], value=t))
    for n in branch.node:
        new = onnx.NodeProto()
        new.CopyFrom(n)
        new.name = f"{prefix}{n.name}" if n.name else ""
        nodes.append(new)
    for vo, target in zip(branch.output, node.output, strict=False):
        if target:
            nodes.append(
                helper.make_node("Identity", [vo.name], [target], name=f"{prefix}{target}")
            )
    return nodes


MAX_UNROLL = 256  # iterations; beyond that the graph grows too much to be worth it


def _passes_cond_through(body: onnx.GraphProto) -> bool:
    """True when the body's condition output is its condition input (a for-loop)."""
    cond_in, cond_out = body.input[1].name, body.output[0].name
    if cond_out == cond_in:
        return True
    producer = next((n for n in body.node if cond_out in n.output), None)
    return producer is not None and producer.op_type == "Identity" and producer.input[0] == cond_in


def _unroll_loop(node: onnx.NodeProto, trip_count: int, prefix: str) -> list[onnx.NodeProto]:
    """A for-loop (constant trip count, condition passed through) as straight-line nodes.

    Body inputs are (iteration, cond, carried...); outputs (cond, carried..., scan...). Each
    iteration's values get the prefix ``{prefix}{i}/``; scan outputs are stacked on a new axis 0.
    """
    body = next(a.g for a in node.attribute if a.name == "body")
    n_carried = len(node.input) - 2
    carried = list(node.input[2:])
    local = {t.name for t in body.initializer} | {o for n in body.node for o in n.output if o}
    scans: list[list[str]] = [[] for _ in range(len(body.output) - 1 - n_carried)]
    nodes: list[onnx.NodeProto] = []
    for i in range(trip_count):
        tag = f"{prefix}{i}/"
        rename = {name: tag + name for name in local}
        it_name, cond_name = tag + body.input[0].name, tag + body.input[1].name
        rename[body.input[0].name] = it_name
        rename[body.input[1].name] = cond_name
        nodes.append(
            helper.make_node(
                "Constant", [], [it_name], value=numpy_helper.from_array(np.array(i, np.int64))
            )
        )
        nodes.append(
            helper.make_node(
                "Constant", [], [cond_name], value=numpy_helper.from_array(np.array(True))
            )
        )
        for vi, outer in zip(body.input[2:], carried, strict=True):
            rename[vi.name] = tag + vi.name
            nodes.append(helper.make_node("Identity", [outer], [tag + vi.name]))
        for t in body.initializer:
            nodes.append(
                helper.make_node(
                    "Constant",
                    [],
                    [rename[t.name]],
                    value=numpy_helper.from_array(numpy_helper.to_array(t), rename[t.name]),
                )
            )
        for n in body.node:
            new = onnx.NodeProto()
            new.CopyFrom(n)
            new.name = f"{tag}{n.name}" if n.name else ""
            del new.input[:]
            new.input.extend(rename.get(x, x) if x else "" for x in n.input)
            del new.output[:]
            new.output.extend(rename.get(x, x) if x else "" for x in n.output)
            nodes.append(new)
        carried = [rename.get(o.name, o.name) for o in body.output[1 : 1 + n_carried]]
        for k, o in enumerate(body.output[1 + n_carried :]):
            scans[k].append(rename.get(o.name, o.name))
    for outer, value in zip(node.output[:n_carried], carried, strict=False):
        if outer:
            nodes.append(helper.make_node("Identity", [value], [outer]))
    axis0 = numpy_helper.from_array(np.array([0], np.int64))
    for k, outer in enumerate(node.output[n_carried:]):
        if not outer:
            continue
        parts = []
        for j, name in enumerate(scans[k]):
            axes = f"{prefix}scan{k}_{j}/axes"
            nodes.append(helper.make_node("Constant", [], [axes], value=axis0))
            nodes.append(helper.make_node("Unsqueeze", [name, axes], [f"{prefix}scan{k}_{j}"]))
            parts.append(f"{prefix}scan{k}_{j}")
        nodes.append(helper.make_node("Concat", parts, [outer], axis=0))
    return nodes


def _drop_dead(model: onnx.ModelProto) -> int:
    g = model.graph
    needed = {o.name for o in g.output}
    keep = []
    for node in reversed(g.node):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(i for i in node.input if i)
            for a in node.attribute:  # subgraphs read outer-scope values
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    needed.update(_outer_reads(sub))
    removed = len(g.node) - len(keep)
    if removed:
        del g.node[:]
        g.node.extend(reversed(keep))
        live = [t for t in g.initializer if t.name in needed]
        del g.initializer[:]
        g.initializer.extend(live)
    return removed


def _outer_reads(graph: onnx.GraphProto) -> set[str]:
    reads = set()
    for n in graph.node:
        reads.update(i for i in n.input if i)
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                reads |= _outer_reads(sub)
    reads.update(o.name for o in graph.output)
    return reads


def simplify(
    model: onnx.ModelProto, inputs: list[TensorInfo], *, max_rounds: int = 8
) -> tuple[onnx.ModelProto, SimplifyReport]:
    """Fold shape computations and constants for the given input shapes (see module doc)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.ir_version = max(model.ir_version, 4)
    _fix_input_shapes(model, inputs)
    report = SimplifyReport()
    opsets = list(model.opset_import)
    graph_inputs = {i.name for i in inputs}
    for _ in range(max_rounds):
        report.rounds += 1
        model = _infer(model)
        g = model.graph
        shapes = _static_shapes(model)
        consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in g.initializer if t.name not in graph_inputs
        }
        new_nodes: list[onnx.NodeProto] = []
        new_inits: list[onnx.TensorProto] = []
        changed = False
        for index, node in enumerate(g.node):
            replacement = _fold_node(node, consts, shapes, opsets, report, index)
            if replacement is None:
                new_nodes.append(node)
                continue
            changed = True
            if isinstance(replacement, list):  # inlined If branch
                new_nodes.extend(replacement)
                continue
            for name, value in replacement.items():
                consts[name] = value
                new_inits.append(numpy_helper.from_array(np.asarray(value), name))
        if new_inits:
            g.initializer.extend(new_inits)
        if changed:
            del g.node[:]
            g.node.extend(new_nodes)
        removed = _drop_dead(model)
        report.removed_dead += removed
        if not changed and not removed:
            break
    # Value infos from an earlier round may describe tensors that no longer exist; the
    # importer only needs inputs and outputs.
    del model.graph.value_info[:]
    return model, report


def _fold_node(node, consts, shapes, opsets, report, index):
    """``None`` (keep), ``{name: value}`` (fold to constants) or a node list (inlined If)."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return None
    if op == "If":
        cond = consts.get(node.input[0])
        if cond is None or cond.size != 1:
            return None
        report.inlined_ifs += 1
        return _inline_if(node, bool(cond.reshape(())), f"{node.name or f'if{index}'}/")
    if op == "Loop":
        trip = consts.get(node.input[0]) if node.input and node.input[0] else None
        cond = consts.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        body = next(a.g for a in node.attribute if a.name == "body")
        if (
            trip is None
            or int(trip) > MAX_UNROLL
            or (node.input[1] and (cond is None or not bool(cond)))
            or not _passes_cond_through(body)
        ):
            return None
        report.unrolled_loops += 1
        return _unroll_loop(node, int(trip), f"{node.name or f'loop{index}'}/")
    if op in ("Shape", "Size") and node.input[0] in shapes:
        report.folded_nodes += 1
        return {node.output[0]: _shape_value(node, shapes[node.input[0]])}
    if op in _KEEP or any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    ):
        return None
    if op == "Constant":
        try:
            values = _evaluate(node, consts, opsets)
        except Exception:
            return None
        report.folded_nodes += 1
        return {node.output[0]: values[0]}
    if not all((not i) or i in consts for i in node.input) or not node.input:
        return None
    for o in node.output:
        if o and o in shapes and int(np.prod(shapes[o])) > MAX_FOLDED_ELEMENTS:
            return None
    try:
        values = _evaluate(node, consts, opsets)
    except Exception as err:
        log.info("could not fold %s (%s): %s", node.name or op, op, err)
        return None
    report.folded_nodes += 1
    return {o: np.asarray(v) for o, v in zip(node.output, values, strict=False) if o}
