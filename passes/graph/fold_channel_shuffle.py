"""Channel shuffles read in place by the depthwise conv after them (ShuffleNet's units).

A ShuffleNet unit permutes the channels between its grouped 1x1 conv and its depthwise 3x3
conv: ``reshape [N, G, C/G, H, W]``, ``permute_dims [0, 2, 1, 3, 4]``, ``reshape [N, C, H,
W]`` (channel ``j`` of the result is channel ``(j % G) * C/G + j // G`` of the input). TVM
runs that as its own injective kernel: a copy of the whole activation through memory, which
FuseOps cannot fold into the conv after it (an injective producer of a conv's input stays a
kernel of its own). A depthwise conv reads each input channel as one plane, so the
permutation costs it nothing: this pass rewrites ``conv2d(shuffle(x), W)`` (depthwise:
``groups == C``, one input channel per group) into one ``call_te`` that reads channel
``(j % G) * C/G + j // G`` of ``x`` where the conv reads channel ``j``. The shuffle's
bindings are removed when nothing else reads them.

The kernel is TOPI's ``group_conv2d_nchw`` on the permuted view, so the CPU schedule that
takes a depthwise conv takes it unchanged (the view is inlined into the conv's padding), and
it carries the op pattern of a conv (out-elementwise-fusable): the bias and activation after
it fuse into it as before. NCHW, float32, static shapes but the batch; CPU (``llvm``) targets
only (GPU schedules are left with the graph they know). Measured on ShuffleNet (2 threads,
whole model, interleaved with ONNX Runtime): see ``README.md``.
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax, te, topi

from tvmforge.passes.graph._mutator import cpu_lanes, mutator_pass
from tvmforge.passes.graph._shapes import static_but_batch

log = logging.getLogger(__name__)

__all__ = ["depthwise_conv2d_shuffled", "fold_channel_shuffle", "shuffle_groups"]

# Op pattern of a conv (TVM's kOutEWiseFusable): the epilogue fuses into the kernel.
_OUT_ELEMWISE_FUSABLE = 4


def depthwise_conv2d_shuffled(
    data: te.Tensor, weight: te.Tensor, groups: int, strides, padding, dilation
) -> te.Tensor:
    """Depthwise ``group_conv2d_nchw`` of the channel shuffle of ``data`` (``groups``
    shuffle groups): channel ``j`` of the conv's input is channel
    ``(j % groups) * (C / groups) + j // groups`` of ``data``."""
    channels = int(data.shape[1])
    per_group = channels // groups
    shuffled = te.compute(
        data.shape,
        lambda n, j, y, x: data[n, (j % groups) * per_group + j // groups, y, x],
        name="channel_shuffle",
    )
    return topi.nn.group_conv2d_nchw(shuffled, weight, strides, padding, dilation, channels)


def _op_name(expr: relax.Expr) -> str | None:
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def shuffle_groups(shape_in, shape_mid, axes, shape_out) -> int | None:
    """``G`` when ``reshape(shape_mid)``, ``permute_dims(axes)``, ``reshape(shape_out)`` of a
    ``shape_in`` tensor is a channel shuffle in ``G`` groups, else ``None``."""
    if len(shape_in) != 4 or len(shape_mid) != 5 or list(axes) != [0, 2, 1, 3, 4]:
        return None
    n, c, h, w = shape_in
    _n, g, k, mh, mw = shape_mid
    if shape_mid[0] != n or (mh, mw) != (h, w) or tuple(shape_out) != tuple(shape_in):
        return None
    if not (isinstance(g, int) and isinstance(k, int)) or g * k != c or g < 2 or k < 2:
        return None
    return g


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.rewritten = 0

    def _bound(self, expr: relax.Expr) -> relax.Expr | None:
        if isinstance(expr, relax.Var):
            return self.lookup_binding(expr)
        return None

    def _shuffle_of(self, expr: relax.Expr) -> tuple[relax.Expr, int] | None:
        """``(x, G)`` when ``expr`` is the channel shuffle of ``x`` in ``G`` groups."""
        out = self._bound(expr)
        if _op_name(out) != "relax.reshape":
            return None
        perm = self._bound(out.args[0])
        if _op_name(perm) != "relax.permute_dims" or perm.attrs.axes is None:
            return None
        mid = self._bound(perm.args[0])
        if _op_name(mid) != "relax.reshape":
            return None
        x = mid.args[0]
        shapes = [static_but_batch(e) for e in (x, mid, out)]
        if any(s is None for s in shapes):
            return None
        groups = shuffle_groups(shapes[0], shapes[1], [int(a) for a in perm.attrs.axes], shapes[2])
        return None if groups is None else (x, groups)

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if _op_name(call) != "relax.nn.conv2d":
            return call
        attrs = call.attrs
        if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW"):
            return call
        data, weight = call.args
        shape, wshape = static_but_batch(data), static_but_batch(weight)
        if shape is None or wshape is None or static_but_batch(call) is None:
            return call
        if int(attrs.groups) != shape[1] or wshape[:2] != (shape[1], 1):
            return call  # not depthwise
        dtypes = {str(data.ty.dtype), str(weight.ty.dtype), str(call.ty.dtype)}
        if dtypes != {"float32"}:
            return call
        found = self._shuffle_of(data)
        if found is None:
            return call
        x, groups = found
        self.rewritten += 1
        return self.builder_.call_te(
            depthwise_conv2d_shuffled,
            x,
            weight,
            groups,
            tuple(int(v) for v in attrs.strides),
            tuple(int(v) for v in attrs.padding),
            tuple(int(v) for v in attrs.dilation),
            primfunc_name_hint="depthwise_conv2d_shuffled",
            primfunc_attrs={"op_pattern": _OUT_ELEMWISE_FUSABLE},
        )


def fold_channel_shuffle() -> tvm.transform.Pass:
    """Rewrite ``depthwise conv2d(channel_shuffle(x))`` into one kernel reading ``x``
    permuted (CPU targets; a no-op elsewhere).

    Returns
    -------
    tvm.transform.Pass
        A Relax module pass (it adds one PrimFunc per rewritten shape).
    """

    return mutator_pass(
        "FoldChannelShuffle",
        lambda mod, _lanes: _Rewriter(mod),
        cpu_lanes,
        count="rewritten",
        logger=log,
        message="folded %d channel shuffles into depthwise convs (vectors of %d)",
    )
