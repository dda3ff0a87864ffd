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
4. an ``If`` whose condition is constant is replaced by the nodes of the branch it takes, a
   ``Loop`` with a constant trip count whose condition passes through (a for-loop) and a
   ``Scan`` whose sequence length is static are unrolled (up to ``MAX_UNROLL`` iterations;
   scan outputs stacked on their axis, in their direction);
5. nodes that no graph output depends on are dropped;

repeated until nothing changes. It runs on a copy: the user's model (and its sha256) is untouched.

A dynamic batch dimension (an input dim given as a name, see ``frontend.resolve_inputs``) stays
a ``dim_param``, so shape inference carries it as a symbol. Values that depend on it are never
folded: they are *probed* instead, evaluated with the symbol set to a few sizes (``PROBES``).
A value that comes out the same for every size is a constant after all (``Shape(x)[1:]``) and
is folded; one that differs stays computed at run time, except where a batch-free form exists:
a ``Reshape`` target becomes ``0`` (copy the input's dim) where it follows the input's dynamic
dim and ``-1`` for one remaining dynamic entry (``[batch, -1]`` → ``[0, -1]``), and an
``Expand`` target ``1`` where it repeats the input's dim.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tvmforge.frontend.unroll import (
    MAX_UNROLL,
    _const_node,
    _passes_cond_through,
    _unroll_loop,
    _unroll_scan,
)
from tvmforge.runtime.tensors import TensorInfo

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
    unrolled_scans: int = 0
    batch_free_targets: int = 0  # Reshape/Expand targets rewritten without the dynamic batch
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
            if isinstance(d, str):
                shape.dim.add().dim_param = d
            else:
                shape.dim.add().dim_value = int(d)
    if any(isinstance(d, str) for i in inputs for d in i.shape):
        # Exporters often declare outputs at the batch they traced with ([1, 1000]): with a
        # dynamic batch that is stale, and inference must not take it as given.
        for vi in model.graph.output:
            vi.type.tensor_type.ClearField("shape")


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    shapes = {}
    g = model.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
    return shapes


def _symbolic_shapes(model: onnx.ModelProto, symbols) -> dict[str, tuple[int | str, ...]]:
    """Inferred shapes made of static dims and the given symbols, with at least one symbol."""
    shapes = {}
    g = model.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims: list[int | str] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param in symbols:
                dims.append(d.dim_param)
            else:
                break
        else:
            if any(isinstance(d, str) for d in dims):
                shapes[vi.name] = tuple(dims)
    return shapes


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types = {t.name: t.data_type for t in g.initializer}
    for vi in [*g.input, *g.value_info, *g.output]:
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


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




# Probe sizes for dynamic dims: probe 0 sets every symbol to 1 (the usual special case), the
# others to distinct primes, so a value that is the same in every probe is batch-free.
PROBES = 4
MAX_PROBE_ELEMENTS = 1 << 16  # shape arithmetic is small; bigger values are data, not probed


def _probe_sizes(symbols: list[str]) -> list[dict[str, int]]:
    primes: list[int] = []
    n = 2
    while len(primes) < (PROBES - 1) * len(symbols):
        if all(n % p for p in primes):
            primes.append(n)
        n += 1
    sizes = [dict.fromkeys(symbols, 1)]
    for k in range(PROBES - 1):
        sizes.append({sym: primes[k + (PROBES - 1) * j] for j, sym in enumerate(symbols)})
    return sizes


@dataclass
class _Folding:
    """What one folding round knows: constants, probed values, inferred shapes."""

    opsets: list
    opset: int
    report: SimplifyReport
    sizes: list[dict[str, int]]  # one per probe: a size per dynamic symbol
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    probes: dict[str, list[np.ndarray]] = field(default_factory=dict)  # one value per probe
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    symshapes: dict[str, tuple[int | str, ...]] = field(default_factory=dict)
    elem_types: dict[str, int] = field(default_factory=dict)  # ONNX element type by value

    def set_shape(self, name: str, per_probe: list[tuple[int, ...]]) -> None:
        """Record ``name``'s shape from its shape in each probe: a dim that differs must be
        one symbol's size in every probe, else the shape stays unknown."""
        if len({len(s) for s in per_probe}) != 1:
            return
        dims: list[int | str] = []
        for column in zip(*per_probe, strict=True):
            if len(set(column)) == 1:
                dims.append(int(column[0]))
                continue
            sym = next(
                (
                    y
                    for y in self.sizes[0]
                    if all(s[y] == c for s, c in zip(self.sizes, column, strict=True))
                ),
                None,
            )
            if sym is None:
                return
            dims.append(sym)
        if all(isinstance(d, int) for d in dims):
            self.shapes[name] = tuple(dims)  # type: ignore[arg-type]
        else:
            self.symshapes[name] = tuple(dims)

    def probe_shapes(self, name: str) -> list[tuple[int, ...]] | None:
        """``name``'s shape in each probe, when inference knows it."""
        if name in self.shapes:
            return [self.shapes[name]] * len(self.sizes)
        sym = self.symshapes.get(name)
        if sym is None:
            return None
        return [tuple(sizes[d] if isinstance(d, str) else d for d in sym) for sizes in self.sizes]




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
        dropped = {t.name for t in g.initializer} - {t.name for t in live}
        del g.initializer[:]
        g.initializer.extend(live)
        # Old IR lists initializers among the inputs too: a dropped one must not turn into
        # a real input.
        kept = [vi for vi in g.input if vi.name not in dropped]
        del g.input[:]
        g.input.extend(kept)
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


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Put the nodes in an order where every input is made before it is used (ONNX asks for
    one; some exporters and hand-edited models do not keep it, and ONNX Runtime sorts), keeping
    the given order wherever it is valid. A cycle is left as it is (the importer reports it)."""
    import heapq

    nodes = list(graph.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    ready_names = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    seen: set[str] = set(ready_names)
    in_order = True
    for n in nodes:
        if any(i and i in producer and i not in seen for i in n.input):
            in_order = False
            break
        seen.update(n.output)
    if in_order:
        return
    deps = [{producer[i] for i in n.input if i in producer} - {k} for k, n in enumerate(nodes)]
    users: dict[int, list[int]] = {}
    for k, d in enumerate(deps):
        for p in d:
            users.setdefault(p, []).append(k)
    waiting = [len(d) for d in deps]
    heap = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(heap)
    order = []
    while heap:
        k = heapq.heappop(heap)
        order.append(k)
        for u in users.get(k, []):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(heap, u)
    if len(order) != len(nodes):
        return
    copies = [onnx.NodeProto.FromString(nodes[k].SerializeToString()) for k in order]
    del graph.node[:]
    graph.node.extend(copies)


def simplify(
    model: onnx.ModelProto, inputs: list[TensorInfo], *, max_rounds: int = 8
) -> tuple[onnx.ModelProto, SimplifyReport]:
    """Fold shape computations and constants for the given input shapes (see module doc)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.ir_version = max(model.ir_version, 4)
    _sort_topologically(model.graph)
    _fix_input_shapes(model, inputs)
    report = SimplifyReport()
    opsets = list(model.opset_import)
    opset = next((int(o.version) for o in opsets if o.domain in ("", "ai.onnx")), 1)
    graph_inputs = {i.name for i in inputs}
    symbols = sorted({d for i in inputs for d in i.shape if isinstance(d, str)})
    sizes = _probe_sizes(symbols) if symbols else []
    for _ in range(max_rounds):
        report.rounds += 1
        model = _infer(model)
        g = model.graph
        ctx = _Folding(opsets, opset, report, sizes)
        ctx.shapes = _static_shapes(model)
        ctx.symshapes = _symbolic_shapes(model, symbols) if symbols else {}
        ctx.elem_types = _elem_types(model)
        ctx.consts = {
            t.name: numpy_helper.to_array(t) for t in g.initializer if t.name not in graph_inputs
        }
        new_nodes: list[onnx.NodeProto] = []
        new_inits: list[onnx.TensorProto] = []
        changed = False
        for index, node in enumerate(g.node):
            replacement = _fold_node(node, ctx, index)
            if replacement is None:
                new_nodes.append(node)
                _forward_shapes(node, ctx)
                continue
            changed = True
            if isinstance(replacement, list):  # inlined If, unrolled loop, rewritten node
                new_nodes.extend(replacement)
                continue
            for name, value in replacement.items():
                ctx.consts[name] = value
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


def _fold_node(node: onnx.NodeProto, ctx: _Folding, index: int):
    """``None`` (keep), ``{name: value}`` (fold to constants) or a node list (replacement)."""
    op = node.op_type
    consts = ctx.consts
    if node.domain not in ("", "ai.onnx"):
        return None
    if op == "If":
        cond = consts.get(node.input[0])
        if cond is None or cond.size != 1:
            return None
        ctx.report.inlined_ifs += 1
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
        ctx.report.unrolled_loops += 1
        return _unroll_loop(node, int(trip), f"{node.name or f'loop{index}'}/", ctx.opset)
    if op == "Scan":
        nodes = _unroll_scan(node, ctx, f"{node.name or f'scan{index}'}/")
        if nodes is not None:
            ctx.report.unrolled_scans += 1
        return nodes
    if op in ("Shape", "Size"):
        if node.input[0] in consts:  # a weight's or a frozen input's shape
            ctx.report.folded_nodes += 1
            return {node.output[0]: _shape_value(node, list(consts[node.input[0]].shape))}
        if node.input[0] in ctx.shapes:
            ctx.report.folded_nodes += 1
            return {node.output[0]: _shape_value(node, ctx.shapes[node.input[0]])}
        shapes = ctx.probe_shapes(node.input[0])
        if shapes is None:
            return None
        return _probed(node, [[_shape_value(node, s)] for s in shapes], ctx)
    if op in _KEEP or any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    ):
        return None
    if op == "Constant":
        try:
            values = _evaluate(node, consts, ctx.opsets)
        except Exception:
            return None
        ctx.report.folded_nodes += 1
        return {node.output[0]: values[0]}
    inputs = [i for i in node.input if i]
    if not inputs:
        return None
    outputs = [o for o in node.output if o]
    if all(i in consts for i in inputs):
        for o in outputs:
            if o in ctx.shapes and int(np.prod(ctx.shapes[o])) > MAX_FOLDED_ELEMENTS:
                return None
        try:
            values = _evaluate(node, consts, ctx.opsets)
        except Exception as err:
            log.info("could not fold %s (%s): %s", node.name or op, op, err)
            return None
        ctx.report.folded_nodes += 1
        return {o: np.asarray(v) for o, v in zip(outputs, values, strict=False)}
    if (
        op in ("Reshape", "Expand")
        and len(node.input) > 1
        and node.input[1] in ctx.probes
        and node.input[0] not in ctx.probes  # else shape arithmetic: probed below
    ):
        return _batch_free_target(node, ctx)
    if all(i in consts or i in ctx.probes for i in inputs):
        results = []
        for k in range(len(ctx.sizes)):
            feeds = {i: consts[i] if i in consts else ctx.probes[i][k] for i in inputs}
            try:
                results.append([np.asarray(v) for v in _evaluate(node, feeds, ctx.opsets)])
            except Exception as err:
                log.info("could not probe %s (%s): %s", node.name or op, op, err)
                return None
        return _probed(node, results, ctx)
    return None


def _probed(node: onnx.NodeProto, results: list[list[np.ndarray]], ctx: _Folding):
    """A node evaluated once per probe: folded when every probe agrees (the value does not
    depend on the dynamic dims), else kept, its values remembered for the nodes after it."""
    outputs = [o for o in node.output if o]
    if any(v.size > MAX_PROBE_ELEMENTS for r in results for v in r):
        return None
    first = results[0]
    same = all(
        len(r) == len(first)
        and all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(r, first, strict=True))
        for r in results
    )
    if same:
        ctx.report.folded_nodes += 1
        return dict(zip(outputs, first, strict=False))
    for j, o in enumerate(outputs):
        ctx.probes[o] = [r[j] for r in results]
    return None


def _batch_free_target(node: onnx.NodeProto, ctx: _Folding) -> list[onnx.NodeProto] | None:
    """A Reshape/Expand whose target depends on the dynamic dims, rewritten with a constant
    target that means the same for every size (module doc); ``None`` when there is none."""
    values = [np.asarray(v).reshape(-1).tolist() for v in ctx.probes[node.input[1]]]
    if len({len(v) for v in values}) != 1:
        return None
    data = ctx.probe_shapes(node.input[0])
    target: list[int] = []
    if node.op_type == "Reshape":
        allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
        loose = 0
        for i, column in enumerate(zip(*values, strict=True)):
            if len(set(column)) == 1:
                target.append(column[0])
            elif (
                not allowzero
                and data is not None
                and all(i < len(s) and c == s[i] for c, s in zip(column, data, strict=True))
            ):
                target.append(0)  # copies the input's dim
            else:
                target.append(-1)
                loose += 1
        if loose > 1 or (loose and target.count(-1) > 1):
            return None
    else:  # Expand: broadcasting a target 1 keeps the input's dim
        if data is None:
            return None
        for i, column in enumerate(zip(*values, strict=True)):
            j = i - len(values[0]) + len(data[0])
            if len(set(column)) == 1:
                target.append(column[0])
            elif j >= 0 and all(c == s[j] for c, s in zip(column, data, strict=True)):
                target.append(1)
            else:
                return None
    name = f"{node.output[0]}/batch_free_{node.op_type.lower()}_target"
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.input[1] = name
    ctx.report.batch_free_targets += 1
    if data is not None and node.output[0] not in ctx.shapes:
        # Known now, not only after the next round's inference: the nodes after it need it.
        try:
            ctx.set_shape(
                node.output[0],
                [_target_shape(node.op_type, v, s) for v, s in zip(values, data, strict=True)],
            )
        except ValueError:
            pass
        if node.input[0] in ctx.elem_types:
            ctx.elem_types[node.output[0]] = ctx.elem_types[node.input[0]]
    return [_const_node(name, np.array(target, np.int64)), new]


def _target_shape(op: str, target: list[int], data: tuple[int, ...]) -> tuple[int, ...]:
    """The output shape of Reshape (without allowzero) / Expand for a concrete input shape."""
    if op == "Expand":
        return tuple(np.broadcast_shapes(tuple(data), tuple(target)))
    dims = [data[i] if t == 0 else t for i, t in enumerate(target)]
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1]))
        dims[dims.index(-1)] = int(np.prod(data)) // known if known else 0
    return tuple(int(d) for d in dims)


def _forward_shapes(node: onnx.NodeProto, ctx: _Folding) -> None:
    """Infer a kept node's output shapes from its inputs' (static or symbolic) shapes.

    ONNX shape inference runs once per round on the whole graph and knows no shape after a
    Reshape whose target is computed (it loses track of shape values through some chains);
    once the round has folded that target (or made it batch-free), this carries the shapes on
    through the nodes after it, so one round reaches the next Reshape instead of one round
    per Reshape (ShuffleNet has 33 in a row).
    """
    outputs = [o for o in node.output if o]
    if all(o in ctx.shapes or o in ctx.symshapes for o in outputs):
        return
    if node.domain not in ("", "ai.onnx") or any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    ):
        return
    types, data = {}, {}
    for i in (i for i in node.input if i):
        if i in ctx.consts:
            value = ctx.consts[i]
            types[i] = helper.make_tensor_type_proto(
                helper.np_dtype_to_tensor_dtype(value.dtype), value.shape
            )
            if value.size <= 1024:
                data[i] = numpy_helper.from_array(value, i)
            continue
        shape = ctx.shapes.get(i) or ctx.symshapes.get(i)
        if shape is None or i not in ctx.elem_types:
            return
        types[i] = helper.make_tensor_type_proto(ctx.elem_types[i], shape)
    try:
        schema = onnx.defs.get_schema(node.op_type, ctx.opset, node.domain)
        inferred = onnx.shape_inference.infer_node_outputs(
            schema, node, types, data, opset_imports=ctx.opsets
        )
    except Exception as err:  # inference is a help, not a requirement
        log.debug("no shape for %s (%s): %s", node.name, node.op_type, err)
        return
    for name, tp in inferred.items():
        tt = tp.tensor_type
        if not tt.HasField("shape"):
            continue
        dims: list[int | str] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and ctx.sizes and d.dim_param in ctx.sizes[0]:
                dims.append(d.dim_param)
            else:
                break
        else:
            if all(isinstance(d, int) for d in dims):
                ctx.shapes.setdefault(name, tuple(dims))  # type: ignore[arg-type]
            else:
                ctx.symshapes.setdefault(name, tuple(dims))
            ctx.elem_types[name] = tt.elem_type


