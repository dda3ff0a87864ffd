"""Unrolling ``Loop`` and ``Scan`` whose trip count is known after folding (at most
``MAX_UNROLL`` iterations) into their bodies' nodes, renamed per iteration, so the importer
sees plain ops (part of the ONNX pre-pass, ``simplify``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

if TYPE_CHECKING:
    from tvmforge.frontend.simplify import _Folding

log = logging.getLogger(__name__)


MAX_UNROLL = 256  # iterations; beyond that the graph grows too much to be worth it


def _passes_cond_through(body: onnx.GraphProto) -> bool:
    """True when the body's condition output is its condition input (a for-loop)."""
    cond_in, cond_out = body.input[1].name, body.output[0].name
    if cond_out == cond_in:
        return True
    producer = next((n for n in body.node if cond_out in n.output), None)
    return producer is not None and producer.op_type == "Identity" and producer.input[0] == cond_in


def _retag_graph(graph: onnx.GraphProto, rename: dict[str, str], tag: str) -> None:
    """Rename, in place, a nested subgraph's own values (``tag`` + name) and its reads of the
    values ``rename`` maps: one unrolled iteration's copy must not clash with another's."""
    inner = dict(rename)
    for vi in graph.input:
        inner[vi.name] = tag + vi.name
    for t in graph.initializer:
        inner[t.name] = tag + t.name
    for n in graph.node:
        inner.update({o: tag + o for o in n.output if o})
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        vi.name = inner.get(vi.name, vi.name)
    for t in graph.initializer:
        t.name = inner[t.name]
    for n in graph.node:
        _retag_node(n, inner, tag)


def _retag_node(node: onnx.NodeProto, rename: dict[str, str], tag: str) -> None:
    names = [rename.get(x, x) if x else "" for x in node.input]
    del node.input[:]
    node.input.extend(names)
    names = [rename.get(x, x) if x else "" for x in node.output]
    del node.output[:]
    node.output.extend(names)
    node.name = f"{tag}{node.name}" if node.name else ""
    for a in node.attribute:
        for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            _retag_graph(sub, rename, tag)


def _const_node(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def _body_iteration(
    body: onnx.GraphProto, tag: str, feeds: list[str | np.ndarray], nodes: list[onnx.NodeProto]
) -> list[str]:
    """Append one copy of ``body`` to ``nodes``, its values prefixed with ``tag``; ``feeds``
    bind its inputs in order (an outer value's name, or a constant). Returns the names of
    its outputs."""
    local = {vi.name for vi in body.input} | {t.name for t in body.initializer}
    local |= {o for n in body.node for o in n.output if o}
    rename = {name: tag + name for name in local}
    for vi, feed in zip(body.input, feeds, strict=True):
        if isinstance(feed, str):
            nodes.append(helper.make_node("Identity", [feed], [rename[vi.name]]))
        else:
            nodes.append(_const_node(rename[vi.name], feed))
    for t in body.initializer:
        nodes.append(_const_node(rename[t.name], numpy_helper.to_array(t)))
    for n in body.node:
        new = onnx.NodeProto()
        new.CopyFrom(n)
        _retag_node(new, rename, tag)
        nodes.append(new)
    return [rename.get(o.name, o.name) for o in body.output]


def _stack(parts: list[str], out: str, axis: int, prefix: str, opset: int) -> list[onnx.NodeProto]:
    """Nodes that stack ``parts`` along a new ``axis`` into ``out`` (Unsqueeze + Concat)."""
    nodes, names = [], []
    for j, name in enumerate(parts):
        unsq = f"{prefix}{j}"
        if opset >= 13:
            axes = f"{prefix}{j}/axes"
            nodes.append(_const_node(axes, np.array([axis], np.int64)))
            nodes.append(helper.make_node("Unsqueeze", [name, axes], [unsq]))
        else:
            nodes.append(helper.make_node("Unsqueeze", [name], [unsq], axes=[axis]))
        names.append(unsq)
    nodes.append(helper.make_node("Concat", names, [out], axis=axis))
    return nodes


def _unroll_loop(
    node: onnx.NodeProto, trip_count: int, prefix: str, opset: int
) -> list[onnx.NodeProto]:
    """A for-loop (constant trip count, condition passed through) as straight-line nodes.

    Body inputs are (iteration, cond, carried...); outputs (cond, carried..., scan...). Each
    iteration's values get the prefix ``{prefix}{i}/``; scan outputs are stacked on a new axis 0.
    """
    body = next(a.g for a in node.attribute if a.name == "body")
    n_carried = len(node.input) - 2
    carried: list[str] = list(node.input[2:])
    scans: list[list[str]] = [[] for _ in range(len(body.output) - 1 - n_carried)]
    nodes: list[onnx.NodeProto] = []
    for i in range(trip_count):
        feeds = [np.array(i, np.int64), np.array(True), *carried]
        outs = _body_iteration(body, f"{prefix}{i}/", feeds, nodes)
        carried = outs[1 : 1 + n_carried]
        for k, name in enumerate(outs[1 + n_carried :]):
            scans[k].append(name)
    for outer, value in zip(node.output[:n_carried], carried, strict=False):
        if outer:
            nodes.append(helper.make_node("Identity", [value], [outer]))
    for k, outer in enumerate(node.output[n_carried:]):
        if outer:
            nodes.extend(_stack(scans[k], outer, 0, f"{prefix}scan{k}_", opset))
    return nodes


def _ints(node: onnx.NodeProto, name: str, default: list[int]) -> list[int]:
    for a in node.attribute:
        if a.name == name:
            return list(a.ints)
    return default


def _scan_iterations(
    body: onnx.GraphProto,
    states: list[str],
    scan_inputs: list[str],
    length: int,
    axes: tuple[list[int], list[int], list[int], list[int]],
    prefix: str,
    opset: int,
    nodes: list[onnx.NodeProto],
) -> tuple[list[str], list[str]]:
    """``length`` copies of a Scan body; returns (final states, stacked scan outputs).

    ``axes``: scan input axes, input directions, output axes, output directions (ONNX Scan-9).
    Iteration ``t`` reads slice ``t`` (``length - 1 - t`` for a reverse input) of each scan
    input; a reverse scan output puts iteration ``t``'s value at ``length - 1 - t``.
    """
    in_axes, in_dirs, out_axes, out_dirs = axes
    n_out = len(body.output) - len(states)
    per_iteration: list[list[str]] = [[] for _ in range(n_out)]
    for t in range(length):
        tag = f"{prefix}{t}/"
        slices = []
        for j, (name, axis, reverse) in enumerate(zip(scan_inputs, in_axes, in_dirs, strict=True)):
            index, out = f"{tag}scan_in{j}/index", f"{tag}scan_in{j}"
            nodes.append(_const_node(index, np.array(length - 1 - t if reverse else t, np.int64)))
            nodes.append(helper.make_node("Gather", [name, index], [out], axis=axis))
            slices.append(out)
        outs = _body_iteration(body, tag, [*states, *slices], nodes)
        states = outs[: len(states)]
        for k, name in enumerate(outs[len(states) :]):
            per_iteration[k].append(name)
    stacked = []
    for k, parts in enumerate(per_iteration):
        out = f"{prefix}out{k}"
        order = parts[::-1] if out_dirs[k] else parts
        nodes.extend(_stack(order, out, out_axes[k], f"{out}/", opset))
        stacked.append(out)
    return states, stacked


def _unroll_scan(node: onnx.NodeProto, ctx: _Folding, prefix: str) -> list[onnx.NodeProto] | None:
    """A Scan whose sequence length is static as straight-line nodes; ``None`` when it is not
    (or the unrolled graph would be too long)."""
    body = next(a.g for a in node.attribute if a.name == "body")
    n_scan = next(a.i for a in node.attribute if a.name == "num_scan_inputs")
    opset8 = ctx.opset < 9
    first = 1 if opset8 else 0  # Scan-8's optional sequence_lens input
    n_state = len(node.input) - first - n_scan
    states = list(node.input[first : first + n_state])
    scan_inputs = list(node.input[first + n_state :])
    n_out = len(body.output) - n_state
    if n_scan < 1 or n_state < 0 or n_out < 0:
        return None
    if opset8:
        # Batched: axis 0 of every state and scan input is the batch, axis 1 the sequence.
        axes = ([0] * n_scan, _ints(node, "directions", [0] * n_scan), [0] * n_out, [0] * n_out)
        in_axes = [1] * n_scan
    else:
        in_axes = _ints(node, "scan_input_axes", [0] * n_scan)
        axes = (
            in_axes,
            _ints(node, "scan_input_directions", [0] * n_scan),
            _ints(node, "scan_output_axes", [0] * n_out),
            _ints(node, "scan_output_directions", [0] * n_out),
        )
    lengths, batches = set(), set()
    for name, axis in zip(scan_inputs, in_axes, strict=True):
        shape = ctx.shapes.get(name) or ctx.symshapes.get(name)
        if shape is None or not -len(shape) <= axis < len(shape):
            return None
        lengths.add(shape[axis])
        batches.add(shape[0])
    if len(lengths) != 1 or not isinstance(length := lengths.pop(), int) or length < 1:
        return None
    nodes: list[onnx.NodeProto] = []
    if not opset8:
        if length > MAX_UNROLL:
            return None
        finals, outs = _scan_iterations(
            body, states, scan_inputs, length, axes, prefix, ctx.opset, nodes
        )
    else:
        batch = batches.pop() if len(batches) == 1 else None
        if not isinstance(batch, int) or batch * length > MAX_UNROLL:
            return None
        if node.input[0]:
            seq_lens = ctx.consts.get(node.input[0])
            if seq_lens is None or np.any(seq_lens != length):
                return None  # ragged sequences
        per_batch: list[list[str]] = [[] for _ in range(n_state + n_out)]
        for b in range(batch):
            tag = f"{prefix}b{b}/"
            index = f"{tag}index"
            nodes.append(_const_node(index, np.array(b, np.int64)))
            row = []
            for j, name in enumerate(states + scan_inputs):
                nodes.append(helper.make_node("Gather", [name, index], [f"{tag}in{j}"], axis=0))
                row.append(f"{tag}in{j}")
            fin, out = _scan_iterations(
                body, row[:n_state], row[n_state:], length, axes, tag, ctx.opset, nodes
            )
            for k, name in enumerate(fin + out):
                per_batch[k].append(name)
        finals, outs = [], []
        for k, parts in enumerate(per_batch):
            name = f"{prefix}batched{k}"
            nodes.extend(_stack(parts, name, 0, f"{name}/", ctx.opset))
            (finals if k < n_state else outs).append(name)
    for outer, value in zip(node.output, finals + outs, strict=False):
        if outer:
            nodes.append(helper.make_node("Identity", [value], [outer]))
    return nodes




