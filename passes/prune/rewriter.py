"""The rewrite of a Relax function with fewer channels: weights sliced along the removed channels
of every layer of a group, and constants the same."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import tvm
from tvm import relax

from tvmforge.passes.prune.channel_groups import ChannelGraph, static_shape
from tvmforge.passes.prune.selection import _Plan

log = logging.getLogger(__name__)


# ---- rewriting -----------------------------------------------------------------------------


class _Rewriter:
    """Replays ``main`` binding by binding with the pruned constants."""

    def __init__(
        self,
        graph: ChannelGraph,
        plan: _Plan | None,
        weights: Mapping[relax.Var, np.ndarray] | None = None,
        biases: Mapping[relax.Var, np.ndarray] | None = None,
    ):
        self.graph, self.plan = graph, plan
        self.weights, self.biases = weights or {}, biases or {}
        self.vmap: dict[relax.Var, relax.Var] = {}

    def sub(self, expr):
        if isinstance(expr, relax.Var):
            return self.vmap.get(expr, expr)
        if isinstance(expr, relax.Tuple):
            return relax.Tuple([self.sub(f) for f in expr.fields])
        if isinstance(expr, relax.TupleGetItem):
            return relax.TupleGetItem(self.sub(expr.tuple_value), expr.index)
        return expr

    def _call(self, var, call: relax.Call) -> relax.Call:
        args = [self.sub(a) for a in call.args]
        if var in self.weights:
            weight = self.weights[var]
            layer = self.graph.layers[self.graph.layer_of[var]]
            if layer.kind == "depthwise":
                a = call.attrs
                return relax.op.nn.conv2d(
                    args[0],
                    relax.const(weight),
                    a.strides,
                    a.padding,
                    a.dilation,
                    weight.shape[0],
                    a.data_layout,
                    a.kernel_layout,
                    a.out_layout,
                    a.out_dtype,
                )
            args[1] = relax.const(weight)
        if self.plan is not None:
            for i, axis, chan in self.graph.const_sites.get(var, []):
                keep = self.plan.kept_positions(chan)
                if not keep.all():
                    data = call.args[i].value.numpy()
                    args[i] = relax.const(np.take(data, np.flatnonzero(keep), axis=axis))
            chan = self.graph.shape_sites.get(var)
            if chan is not None:
                shape = list(static_shape(var))
                shape[chan.axis] = int(self.plan.kept_positions(chan).sum())
                args[1] = relax.ShapeExpr(shape)
        return relax.Call(call.op, args, call.attrs, call.ty_args)

    def run(self, func: relax.Function, expose: Sequence[relax.Var] = ()) -> relax.Function:
        bb = relax.BlockBuilder()
        exposed = set(expose)
        with bb.function("main", list(func.params), attrs=dict(func.attrs or {})):
            for block in func.body.blocks:
                dataflow = isinstance(block, relax.DataflowBlock)
                if dataflow:
                    with bb.dataflow():
                        self._block(bb, block, dataflow, exposed)
                else:
                    self._block(bb, block, dataflow, exposed)
            body = (
                relax.Tuple([self.sub(v) for v in expose]) if expose else self.sub(func.body.body)
            )
            bb.emit_func_output(body)
        return bb.get()["main"]

    def _block(self, bb: relax.BlockBuilder, block, dataflow: bool, exposed) -> None:
        for binding in block.bindings:
            var, value = binding.var, binding.value
            is_output = dataflow and (not isinstance(var, relax.DataflowVar) or var in exposed)
            if isinstance(binding, relax.MatchCast):
                new = bb.match_cast(self.sub(value), binding.ty)
                self.vmap[var] = new
                continue
            if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
                expr = self._call(var, value)
            elif isinstance(value, relax.Call):
                expr = relax.Call(
                    self.sub(value.op),
                    [self.sub(a) for a in value.args],
                    value.attrs,
                    value.ty_args,
                )
            else:
                expr = self.sub(value)
            bias = self.biases.get(var)
            if bias is not None:
                expr = relax.op.add(
                    bb.emit(expr, name_hint=var.name + "_pruned"), relax.const(bias)
                )
            emit = bb.emit_output if is_output else bb.emit
            self.vmap[var] = emit(expr, name_hint=var.name)


def _constants(func: relax.Function, skip_layer_weights: bool = False) -> tuple[int, int]:
    """(scalars, bytes) held in the function's constants; ``skip_layer_weights``: leaving out
    the constant weights of conv2d and matmul calls."""
    seen: dict[tvm.ir.GenericConst, tuple[int, int]] = {}

    def visit(expr) -> None:
        if isinstance(expr, tvm.ir.GenericConst):
            shape = tuple(int(d) for d in expr.value.shape)
            seen[expr] = (math.prod(shape), math.prod(shape) * expr.value.dtype.bits // 8)
        elif isinstance(expr, relax.Tuple):
            for f in expr.fields:
                visit(f)
        elif isinstance(expr, relax.Call):
            args = list(expr.args)
            if (
                skip_layer_weights
                and isinstance(expr.op, tvm.ir.Op)
                and expr.op.name in ("relax.nn.conv2d", "relax.matmul")
            ):
                args = args[:1]
            for a in args:
                visit(a)

    for block in func.body.blocks:
        for binding in block.bindings:
            visit(binding.value)
    return sum(n for n, _ in seen.values()), sum(b for _, b in seen.values())


def _ordinals(func: relax.Function) -> dict[relax.Var, int]:
    """The place of each conv2d / matmul binding among them, in binding order."""
    found: dict[relax.Var, int] = {}
    for block in func.body.blocks:
        for binding in block.bindings:
            call = binding.value
            if (
                isinstance(call, relax.Call)
                and isinstance(call.op, tvm.ir.Op)
                and call.op.name in ("relax.nn.conv2d", "relax.matmul")
            ):
                found[binding.var] = len(found)
    return found


def model_flops(func: relax.Function) -> int:
    """FLOPs (2 x multiply-adds) of the conv2d and matmul calls of ``func``, from shapes."""
    total = 0
    for block in func.body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
                continue
            out = static_shape(binding.var)
            if out is None:
                continue
            if call.op.name == "relax.nn.conv2d":
                w = static_shape(call.args[1])
                if w is not None:
                    total += 2 * math.prod(out) * math.prod(w[1:])
            elif call.op.name == "relax.matmul":
                x = static_shape(call.args[0])
                if x is not None:
                    total += 2 * math.prod(out) * x[-1]
    return total




