"""Channel dependency analysis for structured pruning (used by ``prune_channels``).

Removing output channel ``i`` of a conv2d is only correct if every tensor that channel flows
into shrinks with it: the per-channel constants of the BatchNorm after it, a depthwise conv's
filter ``i``, the matching input channel of every conv that reads it, the ``H*W`` consecutive
input features of a dense layer behind a flatten, the same channel of the other branch of a
residual add, and the right offset of a concat. This module walks a Relax function once, in
binding order, and records all of that.

The model
---------
A **layer** is a conv2d or a matmul with a constant weight. A *source* layer (conv2d with
``groups == 1``, matmul) creates a fresh **space** of channels, one per output channel. A
depthwise conv (``groups == C_in == C_out``) keeps its input's channels: channel ``i`` of the
input is channel ``i`` of the output.

Every tensor gets a :class:`Chan`: its channel axis and, for each position along that axis, the
space and the index inside the space that position comes from (``FIXED`` where nothing may be
removed, e.g. the channels of a model input). The rules:

- elementwise ops (relu, clip, the decomposed BatchNorm's ``(x - mean) / std * gamma + beta``)
  keep the layout; a constant operand that varies along the channel axis is a *const site*
  (it is sliced with the channels);
- a binary op of two tensors (residual ``add``; ``stack`` + ``sum`` as the importer writes
  ONNX ``Sum``; ``multiply`` in a squeeze-excite block) *joins* them: position ``p`` of both
  operands must be removed together, so their spaces are unified (same size, same index at
  every position), or the positions are pinned when they cannot be;
- ``concat`` along the channel axis concatenates the layouts (offsets into the consumer);
- a reshape that merges the channel axis with the axes after it (flatten before a dense
  layer) repeats each position ``s`` times (channel ``c`` is features ``c*s .. c*s+s-1``);
  reshapes that keep the channel axis whole move it; anything else pins;
- pools, spatial reductions, resize, dropout, transposes keep or move the layout;
- a layer's input layout tells which of its weight's input channels/rows to keep (a *consumer*);
- anything else (an op not modelled here, a reduction over channels, a layer whose weight is
  not a constant, a grouped conv, a tensor returned by the function) **pins** the positions it
  sees, with the reason logged at INFO.

Alongside, each position carries ``cval``: its value when the position is the same number
everywhere in the tensor (NaN otherwise). A source channel whose weights are all zero is 0;
the BatchNorm, bias and activation after it make it some other constant. A channel whose
``cval`` is finite at every consumer can be removed exactly: its contribution is a constant
that folds into the consumer's bias.

Why one module of ~750 lines: the analysis is one walk over the bindings with one union-find
of spaces, and each op's rule is a method that updates that shared state; split across files
the rules would only reach into each other's private state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import tvm
from tvm import relax

log = logging.getLogger(__name__)

__all__ = ["FIXED", "Chan", "ChannelGraph", "Layer", "static_shape"]

FIXED = -1

_UNARY: dict[str, Callable[[np.ndarray, relax.Call], np.ndarray] | None] = {
    "relax.nn.relu": lambda x, _c: np.maximum(x, 0.0),
    "relax.nn.relu6": lambda x, _c: np.clip(x, 0.0, 6.0),
    "relax.nn.leakyrelu": lambda x, c: np.where(x >= 0, x, x * float(c.attrs.alpha)),
    "relax.sigmoid": lambda x, _c: 1.0 / (1.0 + np.exp(-x)),
    "relax.tanh": lambda x, _c: np.tanh(x),
    "relax.nn.silu": lambda x, _c: x / (1.0 + np.exp(-x)),
    "relax.exp": lambda x, _c: np.exp(x),
    "relax.negative": lambda x, _c: -x,
    "relax.abs": lambda x, _c: np.abs(x),
    "relax.square": lambda x, _c: x * x,
    "relax.sqrt": lambda x, _c: np.sqrt(x),
    "relax.rsqrt": lambda x, _c: 1.0 / np.sqrt(x),
    "relax.floor": lambda x, _c: np.floor(x),
    "relax.ceil": lambda x, _c: np.ceil(x),
    "relax.round": lambda x, _c: np.round(x),
    "relax.astype": lambda x, _c: x,
    "relax.clip": lambda x, c: np.clip(x, _scalar(c.args[1]), _scalar(c.args[2])),
    # elementwise, value not modelled: the layout passes, the constant-ness does not
    "relax.nn.gelu": None,
    "relax.nn.gelu_tanh": None,
    "relax.erf": None,
    "relax.log": None,
}

_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "relax.add": np.add,
    "relax.subtract": np.subtract,
    "relax.multiply": np.multiply,
    "relax.divide": np.divide,
    "relax.power": np.power,
    "relax.maximum": np.maximum,
    "relax.minimum": np.minimum,
}

_REDUCE: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "relax.sum": lambda x, n: x * n,
    "relax.mean": lambda x, _n: x,
    "relax.max": lambda x, _n: x,
    "relax.min": lambda x, _n: x,
}
_STACK_REDUCE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relax.sum": lambda s: s.sum(axis=0),
    "relax.mean": lambda s: s.mean(axis=0),
    "relax.max": lambda s: s.max(axis=0),
    "relax.min": lambda s: s.min(axis=0),
}

_POOLS = (
    "relax.nn.max_pool2d",
    "relax.nn.avg_pool2d",
    "relax.nn.adaptive_avg_pool2d",
    "relax.nn.adaptive_max_pool2d",
)
_RESHAPES = ("relax.reshape", "relax.squeeze", "relax.expand_dims", "relax.flatten")


def _scalar(expr) -> float:
    return float(expr.value)


def static_shape(expr: relax.Expr) -> tuple[int, ...] | None:
    """The static shape of a tensor-typed expression, or None."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    values = getattr(ty.shape, "values", None)
    if values is None or not all(isinstance(v, tvm.tirx.IntImm) for v in values):
        return None
    return tuple(int(v) for v in values)


@dataclass
class Chan:
    """Where the positions along a tensor's channel axis come from.

    ``space[p]``/``index[p]``: the channel position ``p`` is (``FIXED``: cannot be removed);
    ``cval[p]``: its value where it is one number over the whole tensor, NaN otherwise.
    """

    axis: int
    space: np.ndarray
    index: np.ndarray
    cval: np.ndarray
    producer: int | None = None  # source layer whose affine (BatchNorm) chain this still is
    stacked: np.ndarray | None = None  # cvals of each stacked operand, [n, len]
    stack_axis: int | None = None

    def __len__(self) -> int:
        return len(self.space)

    @classmethod
    def fixed(cls, axis: int, length: int) -> Chan:
        return cls(axis, np.full(length, FIXED), np.arange(length), np.full(length, np.nan))

    def moved(self, axis: int, **changes) -> Chan:
        changes.setdefault("producer", None)
        changes.setdefault("stacked", None)
        changes.setdefault("stack_axis", None)
        return replace(self, axis=axis, **changes)


@dataclass
class Layer:
    """A conv2d / matmul with a constant weight: what pruning edits."""

    var: relax.Var
    kind: str  # "conv2d" (groups == 1), "depthwise", "matmul"
    weight: np.ndarray
    inp: Chan | None  # layout of the contracted input axis (None: nothing removable there)
    in_var: relax.Expr
    space: int | None  # the output space (source layers)
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    attrs: object = None
    scale: np.ndarray | None = None  # |per-channel factor| of the BatchNorm after it

    @property
    def out_channels(self) -> int:
        return self.weight.shape[1] if self.kind == "matmul" else self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        if self.kind == "matmul":
            return self.weight.shape[0]
        return self.weight.shape[0] if self.kind == "depthwise" else self.weight.shape[1]

    def flops(self, out_kept: int, in_kept: int) -> int:
        """2 * multiply-adds with ``out_kept`` outputs and ``in_kept`` contracted inputs."""
        if self.kind == "matmul":
            rows = math.prod(self.out_shape[:-1])
            return 2 * rows * in_kept * out_kept
        n, _, ho, wo = self.out_shape
        kernel = self.weight.shape[2] * self.weight.shape[3]
        if self.kind == "depthwise":
            return 2 * n * ho * wo * kernel * out_kept
        return 2 * n * ho * wo * kernel * in_kept * out_kept

    def params(self, out_kept: int, in_kept: int) -> int:
        """Scalars of the weight with ``out_kept`` outputs and ``in_kept`` contracted inputs."""
        if self.kind == "matmul":
            return in_kept * out_kept
        kernel = self.weight.shape[2] * self.weight.shape[3]
        if self.kind == "depthwise":
            return out_kept * kernel
        return out_kept * in_kept * kernel

    def output_norms(self, order: int) -> np.ndarray:
        """L1 (``order=1``) or L2 norm of each output channel's weights."""
        w = self.weight.T if self.kind == "matmul" else self.weight
        flat = np.abs(w.reshape(w.shape[0], -1).astype(np.float64))
        norms = flat.sum(axis=1) if order == 1 else np.sqrt((flat * flat).sum(axis=1))
        return norms * (self.scale if self.scale is not None else 1.0)


@dataclass
class Refusal:
    where: str
    why: str


@dataclass
class ChannelGraph:
    """The channel dependencies of one Relax function (see the module docstring)."""

    func: relax.Function
    layers: list[Layer] = field(default_factory=list)
    layer_of: dict[relax.Var, int] = field(default_factory=dict)
    # binding var -> [(argument index, axis of the constant, layout of that axis)]
    const_sites: dict[relax.Var, list[tuple[int, int, Chan]]] = field(default_factory=dict)
    # reshape / broadcast_to binding var -> (output layout)
    shape_sites: dict[relax.Var, Chan] = field(default_factory=dict)
    chans: dict[relax.Var, object] = field(default_factory=dict)
    refusals: list[Refusal] = field(default_factory=list)
    _parent: list[int] = field(default_factory=list)
    _pinned: list[np.ndarray] = field(default_factory=list)
    _members: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        body = self.func.body
        for block in body.blocks:
            for binding in block.bindings:
                self._visit(binding)
        outputs = body.body
        leaves = list(outputs.fields) if isinstance(outputs, relax.Tuple) else [outputs]
        for leaf in leaves:
            chan = self._chan(leaf)
            for c in chan if isinstance(chan, list) else [chan]:
                self._pin(c, _name(leaf), "the tensor is a model output")

    # ---- spaces (union-find) ------------------------------------------------------------

    def _new_space(self, size: int, layer: int | None) -> int:
        self._parent.append(len(self._parent))
        self._pinned.append(np.zeros(size, bool))
        self._members.append([] if layer is None else [layer])
        return len(self._parent) - 1

    def find(self, space: int) -> int:
        while self._parent[space] != space:
            self._parent[space] = self._parent[self._parent[space]]
            space = self._parent[space]
        return space

    def _union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a != b:
            self._parent[b] = a
            self._pinned[a] |= self._pinned[b]
            self._members[a] += self._members[b]
        return a

    def roots(self) -> list[int]:
        return sorted({self.find(s) for s in range(len(self._parent))})

    def size(self, root: int) -> int:
        return len(self._pinned[root])

    def pinned(self, root: int) -> np.ndarray:
        return self._pinned[self.find(root)]

    def members(self, root: int) -> list[int]:
        return self._members[self.find(root)]

    def roots_of(self, chan: Chan) -> np.ndarray:
        """The current root space of every position (``FIXED`` stays)."""
        finder = np.vectorize(self.find, otypes=[np.int64])
        out = chan.space.copy()
        tracked = out != FIXED
        if tracked.any():
            out[tracked] = finder(out[tracked])
        return out

    def _pin(self, chan, where: str, why: str) -> None:
        if not isinstance(chan, Chan):
            return
        tracked = chan.space != FIXED
        if not tracked.any():
            return
        for space, index in zip(chan.space[tracked], chan.index[tracked], strict=True):
            self._pinned[self.find(int(space))][index] = True
        self.refusals.append(Refusal(where, why))
        log.info(
            "prune_channels: keeping the %d channel(s) at %s: %s", int(tracked.sum()), where, why
        )

    # ---- the walk -----------------------------------------------------------------------

    def _chan(self, expr):
        if isinstance(expr, relax.Var):
            return self.chans.get(expr)
        if isinstance(expr, relax.Tuple):
            return [self._chan(f) for f in expr.fields]
        if isinstance(expr, relax.TupleGetItem):
            inner = self._chan(expr.tuple_value)
            return inner[expr.index] if isinstance(inner, list) else None
        return None

    def _visit(self, binding) -> None:
        var = binding.var
        if isinstance(binding, relax.MatchCast):
            self._pin(self._chan(binding.value), _name(var), "match_cast is not modelled")
            return
        value = binding.value
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
            self.chans[var] = self._visit_call(var, value)
        elif isinstance(value, relax.Var | relax.Tuple | relax.TupleGetItem):
            self.chans[var] = self._chan(value)
        else:
            for arg in getattr(value, "args", []):
                self._pin(self._chan(arg), _name(var), f"{type(value).__name__} not modelled")

    def _refuse(self, var, call: relax.Call, why: str):
        for arg in call.args:
            chan = self._chan(arg)
            for c in chan if isinstance(chan, list) else [chan]:
                self._pin(c, f"{_name(var)} = {call.op.name}", why)
        return None

    def _visit_call(self, var, call: relax.Call):
        op = call.op.name
        if op == "relax.nn.conv2d":
            return self._conv2d(var, call)
        if op == "relax.matmul":
            return self._matmul(var, call)
        if op in _UNARY:
            return self._unary(var, call)
        if op in _BINARY:
            return self._binary(var, call)
        if op in _POOLS:
            return self._pool(var, call)
        if op in _REDUCE:
            return self._reduce(var, call)
        if op == "relax.concat":
            return self._concat(var, call)
        if op == "relax.stack":
            return self._stack(var, call)
        if op in _RESHAPES:
            return self._reshape(var, call)
        if op == "relax.broadcast_to":
            return self._broadcast_to(var, call)
        if op == "relax.permute_dims":
            return self._permute(var, call)
        if op == "relax.nn.dropout":
            chan = self._chan(call.args[0])
            return [chan.moved(chan.axis) if isinstance(chan, Chan) else None, None]
        if op == "relax.image.resize2d":
            chan = self._chan(call.args[0])
            if not isinstance(chan, Chan) or (call.attrs.layout == "NCHW" and chan.axis == 1):
                return chan.moved(1) if isinstance(chan, Chan) else None
            return self._refuse(var, call, "resize over the channel axis")
        if op == "relax.nn.pad":
            chan = self._chan(call.args[0])
            width = list(call.attrs.pad_width)
            if not isinstance(chan, Chan):
                return None
            if width[2 * chan.axis] == 0 and width[2 * chan.axis + 1] == 0:
                return chan.moved(chan.axis, cval=np.full(len(chan), np.nan))
            return self._refuse(var, call, "padding along the channel axis")
        if op == "relax.split":
            return self._split(var, call)
        return self._refuse(var, call, f"{op} is not modelled by the channel analysis")

    # conv2d / matmul ----------------------------------------------------------------------

    def _conv2d(self, var, call: relax.Call):
        x, w = call.args
        attrs = call.attrs
        in_shape, out_shape = static_shape(x), static_shape(var)
        layouts = (attrs.data_layout, attrs.kernel_layout, attrs.out_layout or "NCHW")
        if layouts != ("NCHW", "OIHW", "NCHW") or in_shape is None or out_shape is None:
            return self._refuse(var, call, f"conv2d layout {'/'.join(layouts)} or dynamic shape")
        if not isinstance(w, tvm.ir.GenericConst):
            return self._refuse(var, call, "the conv2d weight is not a constant")
        weight = w.value.numpy()
        groups, c_in, c_out = int(attrs.groups), in_shape[1], out_shape[1]
        chan = self._chan(x)
        if isinstance(chan, Chan) and chan.axis != 1:
            self._pin(chan, _name(var), "conv2d input channels are not on axis 1")
            chan = None
        chan = chan if isinstance(chan, Chan) else None
        zero = ~weight.reshape(c_out, -1).any(axis=1)
        if groups == 1:
            layer_id = len(self.layers)
            space = self._new_space(c_out, layer_id)
            self._add_layer(
                Layer(
                    var,
                    "conv2d",
                    weight,
                    chan,
                    x,
                    space,
                    in_shape,
                    out_shape,
                    attrs,
                    np.ones(c_out),
                )
            )
            cval = np.where(zero, 0.0, np.nan)
            return Chan(1, np.full(c_out, space), np.arange(c_out), cval, producer=layer_id)
        if groups == c_in == c_out and weight.shape[1] == 1:
            self._add_layer(
                Layer(var, "depthwise", weight, chan, x, None, in_shape, out_shape, attrs)
            )
            if chan is None:
                return Chan.fixed(1, c_out)
            unpadded = not any(int(p) for p in attrs.padding)
            cval = np.where(zero | (chan.cval == 0.0), 0.0, np.nan)
            if unpadded:
                sums = weight.reshape(c_out, -1).sum(axis=1)
                cval = np.where(np.isfinite(chan.cval), chan.cval * sums, cval)
            return chan.moved(1, cval=cval)
        return self._refuse(var, call, f"grouped conv2d (groups={groups}) is not pruned")

    def _matmul(self, var, call: relax.Call):
        x, w = call.args
        in_shape, out_shape = static_shape(x), static_shape(var)
        if (
            not isinstance(w, tvm.ir.GenericConst)
            or in_shape is None
            or out_shape is None
            or len(w.value.shape) != 2
        ):
            return self._refuse(var, call, "matmul whose weight is not a 2-D constant")
        weight = w.value.numpy()
        chan = self._chan(x)
        last = len(in_shape) - 1
        if isinstance(chan, Chan) and chan.axis != last:
            self._pin(chan, _name(var), "matmul contracts an axis that is not the channel axis")
            chan = None
        chan = chan if isinstance(chan, Chan) else None
        n_out = weight.shape[1]
        layer_id = len(self.layers)
        space = self._new_space(n_out, layer_id)
        self._add_layer(
            Layer(var, "matmul", weight, chan, x, space, in_shape, out_shape, None, np.ones(n_out))
        )
        cval = np.where(~weight.any(axis=0), 0.0, np.nan)
        return Chan(
            len(out_shape) - 1, np.full(n_out, space), np.arange(n_out), cval, producer=layer_id
        )

    def _add_layer(self, layer: Layer) -> None:
        self.layer_of[layer.var] = len(self.layers)
        self.layers.append(layer)

    # elementwise --------------------------------------------------------------------------

    def _unary(self, var, call: relax.Call):
        chan = self._chan(call.args[0])
        if not isinstance(chan, Chan):
            return None
        fn = _UNARY[call.op.name]
        with np.errstate(all="ignore"):
            cval = fn(chan.cval, call) if fn is not None else np.full(len(chan), np.nan)
        return chan.moved(chan.axis, cval=np.asarray(cval, np.float64))

    def _binary(self, var, call: relax.Call):
        out_shape = static_shape(var)
        if out_shape is None:
            return self._refuse(var, call, "dynamic shape")
        rank = len(out_shape)
        fn = _BINARY[call.op.name]
        operands = []  # (chan or None, shape, const array or None)
        for arg in call.args:
            shape = static_shape(arg)
            if shape is None:
                return self._refuse(var, call, "operand of unknown shape")
            const = arg.value.numpy() if isinstance(arg, tvm.ir.GenericConst) else None
            chan = self._chan(arg)
            operands.append((chan if isinstance(chan, Chan) else None, shape, const))
        tracked = [(i, c) for i, (c, _, _) in enumerate(operands) if c is not None]
        if not tracked:
            return None
        axes = {c.axis + rank - len(operands[i][1]) for i, c in tracked}
        if len(axes) != 1:
            return self._refuse(var, call, "operands with their channels on different axes")
        axis = axes.pop()
        length = out_shape[axis]
        chans, cvals, sites = [], [], []
        for i, (chan, shape, const) in enumerate(operands):
            k = axis - (rank - len(shape))
            size = shape[k] if k >= 0 else 1
            if chan is not None:
                if size != length:
                    return self._refuse(var, call, "the operation broadcasts the channel axis")
                chans.append(chan)
                cvals.append(chan.cval)
            elif const is not None:
                if size not in (1, length):
                    return self._refuse(var, call, "constant of another channel count")
                if size == length:
                    sites.append((i, k))
                cvals.append(_per_channel(const, k, length))
            elif size == 1:
                cvals.append(np.full(length, np.nan))
            else:
                # a full-size tensor whose channels we cannot follow
                return self._refuse(var, call, "the other operand's channels are not tracked")
        out = self._join(chans, f"{_name(var)} = {call.op.name}")
        with np.errstate(all="ignore"):
            cval = fn(cvals[0], cvals[1]) if len(cvals) == 2 else np.full(length, np.nan)
        producer = None
        if len(chans) == 1 and chans[0].producer is not None and out.axis == axis:
            first_is_tensor = operands[0][0] is not None
            factor = cvals[1] if first_is_tensor else cvals[0]
            if call.op.name in ("relax.add", "relax.subtract") and first_is_tensor:
                producer = chans[0].producer
            elif call.op.name == "relax.multiply" or (
                call.op.name == "relax.divide" and first_is_tensor
            ):
                producer = chans[0].producer
                if np.all(np.isfinite(factor)) and np.all(factor != 0):
                    layer = self.layers[producer]
                    k = np.abs(factor) if call.op.name == "relax.multiply" else 1 / np.abs(factor)
                    layer.scale = layer.scale * k
        if sites:  # constants varying along the channel axis are sliced like the output
            self.const_sites[var] = [(i, k, out) for i, k in sites]
        return Chan(axis, out.space, out.index, np.asarray(cval, np.float64), producer=producer)

    def _join(self, chans: Sequence[Chan], where: str) -> Chan:
        """Unify operands whose position ``p`` must be removed together."""
        base = chans[0]
        space, index = base.space.copy(), base.index.copy()
        for other in chans[1:]:
            space, index = self._join_two(space, index, other.space, other.index, where)
        return Chan(base.axis, space, index, base.cval)

    def _join_two(self, sa, ia, sb, ib, where):
        if np.array_equal(sa, sb) and np.array_equal(ia, ib):
            return sa, ia
        ra = self.roots_of(Chan(0, sa, ia, ia))
        rb = self.roots_of(Chan(0, sb, ib, ib))
        bad = np.zeros(len(sa), bool)
        bad |= (ra == FIXED) != (rb == FIXED)
        both = (ra != FIXED) & (rb != FIXED)
        for a, b in {(int(a), int(b)) for a, b in zip(ra[both], rb[both], strict=True)}:
            at = both & (ra == a) & (rb == b)
            if a == b:
                bad |= at & (ia != ib)
            elif self.size(a) == self.size(b) and np.array_equal(ia[at], ib[at]):
                self._union(a, b)
            else:
                bad |= at
        if bad.any():
            self._pin(
                Chan(0, sa[bad], ia[bad], ia[bad]), where, "joins channels whose layouts differ"
            )
            self._pin(
                Chan(0, sb[bad], ib[bad], ib[bad]), where, "joins channels whose layouts differ"
            )
        space = np.where(bad | (ra == FIXED), FIXED, sa)
        return space, ia

    # layout-moving ops --------------------------------------------------------------------

    def _pool(self, var, call: relax.Call):
        chan = self._chan(call.args[0])
        if not isinstance(chan, Chan):
            return None
        attrs = call.attrs
        if attrs.layout != "NCHW" or chan.axis != 1:
            return self._refuse(var, call, f"pool layout {attrs.layout}")
        cval = chan.cval
        padded = any(int(p) for p in getattr(attrs, "padding", ()))
        if call.op.name == "relax.nn.avg_pool2d" and attrs.count_include_pad and padded:
            cval = np.full(len(chan), np.nan)
        return chan.moved(1, cval=cval)

    def _reduce(self, var, call: relax.Call):
        chan = self._chan(call.args[0])
        if not isinstance(chan, Chan):
            return None
        in_shape = static_shape(call.args[0])
        if in_shape is None or call.attrs.axis is None:
            return self._refuse(var, call, "reduction over every axis")
        axes = sorted(int(a) % len(in_shape) for a in call.attrs.axis)
        if chan.axis in axes:
            return self._refuse(var, call, "reduction over the channel axis")
        keep = bool(call.attrs.keepdims)
        axis = chan.axis if keep else chan.axis - sum(a < chan.axis for a in axes)
        if chan.stacked is not None and axes == [chan.stack_axis]:
            cval = _STACK_REDUCE[call.op.name](chan.stacked)
        elif chan.stacked is None:
            count = math.prod(in_shape[a] for a in axes)
            cval = _REDUCE[call.op.name](chan.cval, count)
        else:
            cval = np.full(len(chan), np.nan)
        return chan.moved(axis, cval=cval)

    def _operands(self, var, call: relax.Call) -> list[tuple[Chan | None, tuple[int, ...]]]:
        fields = call.args[0].fields if isinstance(call.args[0], relax.Tuple) else None
        if fields is None:
            return []
        return [
            (c if isinstance(c := self._chan(f), Chan) else None, static_shape(f)) for f in fields
        ]

    def _concat(self, var, call: relax.Call):
        operands = self._operands(var, call)
        if not operands or any(s is None for _, s in operands):
            return self._refuse(var, call, "concat of unknown shapes")
        if all(c is None for c, _ in operands):
            return None
        rank = len(operands[0][1])
        axis = int(call.attrs.axis) % rank
        tracked_axes = {c.axis for c, _ in operands if c is not None}
        if tracked_axes == {axis}:
            parts = [c if c is not None else Chan.fixed(axis, s[axis]) for c, s in operands]
            return Chan(
                axis,
                np.concatenate([p.space for p in parts]),
                np.concatenate([p.index for p in parts]),
                np.concatenate([p.cval for p in parts]),
            )
        if (
            len(tracked_axes) == 1
            and axis not in tracked_axes
            and all(c is not None for c, _ in operands)
        ):
            out = self._join([c for c, _ in operands], f"{_name(var)} = concat")
            return out.moved(out.axis, cval=np.full(len(out), np.nan))
        return self._refuse(var, call, "concat mixing channel layouts")

    def _stack(self, var, call: relax.Call):
        operands = self._operands(var, call)
        if not operands or any(c is None for c, _ in operands):
            return self._refuse(var, call, "stack of untracked tensors")
        if len({c.axis for c, _ in operands}) != 1:
            return self._refuse(var, call, "stack of tensors with channels on different axes")
        rank = len(operands[0][1]) + 1
        stack_axis = int(call.attrs.axis) % rank
        out = self._join([c for c, _ in operands], f"{_name(var)} = stack")
        axis = out.axis + 1 if stack_axis <= out.axis else out.axis
        stacked = np.stack([c.cval for c, _ in operands])
        return out.moved(
            axis, cval=np.full(len(out), np.nan), stacked=stacked, stack_axis=stack_axis
        )

    def _reshape(self, var, call: relax.Call):
        chan = self._chan(call.args[0])
        if not isinstance(chan, Chan):
            return None
        in_shape, out_shape = static_shape(call.args[0]), static_shape(var)
        if in_shape is None or out_shape is None:
            return self._refuse(var, call, "reshape with a dynamic shape")
        placed = _place_channel_axis(in_shape, chan.axis, out_shape)
        if placed is None:
            return self._refuse(var, call, "reshape that splits or mixes the channel axis")
        axis, repeat = placed
        out = Chan(
            axis,
            np.repeat(chan.space, repeat),
            np.repeat(chan.index, repeat),
            np.repeat(chan.cval, repeat),
        )
        if call.op.name == "relax.reshape":
            self.shape_sites[var] = out
        return out

    def _broadcast_to(self, var, call: relax.Call):
        chan = self._chan(call.args[0])
        if not isinstance(chan, Chan):
            return None
        in_shape, out_shape = static_shape(call.args[0]), static_shape(var)
        if in_shape is None or out_shape is None:
            return self._refuse(var, call, "broadcast_to with a dynamic shape")
        axis = chan.axis + len(out_shape) - len(in_shape)
        if out_shape[axis] != in_shape[chan.axis]:
            return self._refuse(var, call, "broadcast along the channel axis")
        out = chan.moved(axis)
        self.shape_sites[var] = out
        return out

    def _permute(self, var, call: relax.Call):
        chan = self._chan(call.args[0])
        if not isinstance(chan, Chan):
            return None
        shape = static_shape(call.args[0])
        rank = len(shape) if shape is not None else None
        if call.attrs.axes is None:
            if rank is None:
                return self._refuse(var, call, "transpose of unknown rank")
            axes = list(range(rank))[::-1]
        else:
            axes = [int(a) for a in call.attrs.axes]
        return chan.moved(axes.index(chan.axis), cval=chan.cval)

    def _split(self, var, call: relax.Call):
        chan = self._chan(call.args[0])
        if not isinstance(chan, Chan):
            return None
        shape = static_shape(call.args[0])
        if shape is None or int(call.attrs.axis) % len(shape) == chan.axis:
            return self._refuse(var, call, "split along the channel axis")
        sections = call.attrs.indices_or_sections
        count = (
            int(sections)
            if not isinstance(sections, tvm.ir.Array | list | tuple)
            else len(sections) + 1
        )
        return [chan.moved(chan.axis, cval=chan.cval) for _ in range(count)]


def _per_channel(const: np.ndarray, axis: int, length: int) -> np.ndarray:
    """The constant's value per channel where it is uniform over the other axes, else NaN."""
    if axis < 0:
        flat = const.reshape(-1).astype(np.float64)
        value = flat[0] if flat.size and np.all(flat == flat[0]) else np.nan
        return np.full(length, value)
    moved = np.moveaxis(const, axis, 0).reshape(const.shape[axis], -1).astype(np.float64)
    uniform = np.all(moved == moved[:, :1], axis=1) if moved.shape[1] else np.ones(len(moved))
    values = np.where(uniform, moved[:, 0] if moved.shape[1] else np.nan, np.nan)
    return np.broadcast_to(values, (length,)).copy()


def _place_channel_axis(in_shape, axis: int, out_shape) -> tuple[int, int] | None:
    """Where a reshape puts channel axis ``axis``: (output axis, positions per channel)."""
    pre, channels, post = (
        math.prod(in_shape[:axis]),
        in_shape[axis],
        math.prod(in_shape[axis + 1 :]),
    )
    for a in range(len(out_shape)):
        if math.prod(out_shape[:a]) != pre:
            continue
        size, rest = out_shape[a], math.prod(out_shape[a + 1 :])
        if size % channels == 0 and size // channels * rest == post and size > 0:
            return a, size // channels
    return None


def _name(expr) -> str:
    return expr.name if isinstance(expr, relax.Var) else type(expr).__name__
