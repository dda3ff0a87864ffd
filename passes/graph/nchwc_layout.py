"""Carry activations between CPU convolutions in the blocked ``NCHW{B}c`` layout.

Why
---
``pack_conv_weights`` vectorizes a conv over ``B`` output channels (``B`` = fp32 lanes of the
CPU). With NCHW activations every output vector is ``B`` floats one plane apart: the fused
epilogue gathers the residual and scatters the result a lane at a time, and the next conv
broadcasts its inputs from ``B``-strided cache lines. For a 1x1 conv with a few hundred input
channels that scatter/gather costs as much as a third of the multiply-adds (ResNet-50's
1x1 256->1024 at 14x14 with its residual: 3.29 ms x6 against ONNX Runtime's 2.11). ONNX
Runtime's CPU provider (MLAS ``NchwcConv``), oneDNN and TVM's old ``conv2d_NCHWc`` all keep
activations ``[N, C/B, H, W, B]`` between convs instead: a conv's output vector is one
contiguous store, its epilogue reads contiguous vectors, and the next conv's broadcasts come
from one cache line per pixel.

What it does
------------
Each eligible conv (``float32``, one group, NCHW/OIHW, a constant weight, output channels a
multiple of ``B``, static shapes but the batch) becomes a ``call_tir`` to
``conv2d_nchwc_packed``: weights packed ``[F/B, C, KH, KW, B]`` as ``pack_conv_weights`` packs
them, output ``[N, F/B, OH, OW, B]``, input read blocked when its producer is blocked (else
NCHW, as the first conv of a network reads its 3-channel image). A depthwise conv whose
input is blocked becomes ``depthwise_conv2d_nchwc`` (weights ``[C/B, KH, KW, B]``: every
multiply-add a vector of ``B`` channels). A 3x3 stride-1 conv on a blocked input that
``passes/winograd.py``'s cost model picks becomes its three Winograd kernels instead (input
transform, batched product, output transform; ``winograd=False`` keeps it direct). A 1x1
conv with a stride and no padding on a blocked input (ResNet's downsampling shortcut) becomes
a ``subsample_nchwc`` kernel and a stride-1 conv, whose flat plane gets the flat conv
schedules (ResNet-50: about 0.4-0.5 ms of 25 in the model). Blocked values then flow
through the ops that do not care about the channel order:

- elementwise unary ops, and broadcasting binary ops whose other operand is blocked too, a
  scalar, a per-channel constant (re-laid out with numpy) or any other 4-D tensor (which gets
  a ``layout_transform``);
- ``max_pool2d``, ``avg_pool2d`` and ``adaptive_avg_pool2d`` (TOPI computes them in
  ``NCHW{B}c``), and ``mean``/``max``/``sum`` over the plane with ``keepdims`` (a global
  pool: the same axes 2 and 3 of the blocked value);
- ``concat`` along the channels when every part has a multiple of ``B`` channels;
- ``nn.dropout`` (the identity at inference);
- ``image.resize2d`` (TOPI resizes ``NCHW{B}c`` as well), and the ``call_tir`` of a legalized
  ``maximum``/``minimum`` with a scalar (the ONNX importer's HardSwish and Clip), which
  becomes the Relax op again.

Every converted binding keeps its NCHW value as a ``layout_transform`` of the blocked one;
consumers that need NCHW (a reshape, a grouped conv, a matmul) read that, and dead-code
elimination drops those nobody reads. For direct convs the arithmetic is the same, in the
same order per output element (the convolution's reduction order does not change), so
outputs match the NCHW path; Winograd convs differ from it by float32 rounding.

Where it sits
-------------
In the graph stage after every pass that rewrites conv weights (``fold_conv_bn``, pruning,
quantization), right before ``pack_conv_weights`` (which packs the convs left in NCHW). A
no-op off CPU targets.
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax, te
from tvm.ir.expr import Constant

from tvmforge.passes.graph._mutator import cpu_lanes, mutator_pass
from tvmforge.passes.graph._shapes import dims, static_but_batch
from tvmforge.passes.graph.pack_conv_weights import (
    MAX_PAD_WASTE,
    conv2d_nchwc_packed,
    depthwise_conv2d_nchwc,
    pack_oihw,
)
from tvmforge.passes.graph.sink_transposes import BINARY, UNARY, _op
from tvmforge.passes.graph.winograd import (
    OUT_ELEMWISE_FUSABLE,
    winograd_input_nchwc,
    winograd_output_nchwc,
    winograd_product_nchwc,
    winograd_tile,
    winograd_weight,
)

log = logging.getLogger(__name__)

__all__ = ["nchwc_layout", "to_blocked"]

POOLS = {"relax.nn.max_pool2d", "relax.nn.avg_pool2d"}
# Reductions over the plane (ONNX's GlobalAveragePool imports as a mean over axes 2 and 3).
REDUCTIONS = {"relax.mean", "relax.max", "relax.sum"}


def _tensor_args(call: relax.Call) -> list[relax.Expr]:
    """The tensors a call reads: its args, with a tuple arg (``concat``'s parts, a
    ``call_tir``'s inputs) opened."""
    out: list[relax.Expr] = []
    for arg in call.args:
        out.extend(arg.fields if isinstance(arg, relax.Tuple) else [arg])
    return [a for a in out if isinstance(a.ty, relax.TensorType)]


def _legalized_bound(call: relax.Call):
    """``(relax.op.maximum | minimum, tensor, scalar)`` for a ``call_tir`` of a legalized
    ``maximum``/``minimum`` of a tensor and a scalar constant (how the ONNX importer's
    HardSwish/Clip reach us), else ``None``."""
    callee, args = call.args[0], call.args[1]
    if not isinstance(callee, tvm.ir.GlobalVar) or not isinstance(args, relax.Tuple):
        return None
    name = callee.name_hint.rstrip("0123456789_")
    make = {"maximum": relax.op.maximum, "minimum": relax.op.minimum}.get(name)
    if make is None or len(args.fields) != 2:
        return None
    tensor, scalar = args.fields
    if not isinstance(scalar, Constant) or scalar.value.numpy().size != 1:
        return None
    if dims(scalar) != () or dims(tensor) != dims(call):
        return None
    return make, tensor, scalar


def to_blocked(x: np.ndarray, block: int) -> np.ndarray:
    """A 4-D ``[N, C, H, W]`` array as ``[N, ceil(C/B), H, W, B]`` (channels past ``C``:
    zeros)."""
    n, c, h, w = x.shape
    if c % block:
        x = np.concatenate([x, np.zeros((n, block - c % block, h, w), x.dtype)], axis=1)
        c = x.shape[1]
    return np.ascontiguousarray(x.reshape(n, c // block, block, h, w).transpose(0, 1, 3, 4, 2))


# A strided 1x1 conv (ResNet's downsampling shortcut) on a blocked input runs as a subsample
# (its own small kernel) and a stride-1 1x1 conv: the conv's plane is then flat, so it gets
# the flat tile and the K-blocked schedules of ``schedule_cpu_default``.
SUBSAMPLE_STRIDED_1X1 = True


def subsample_nchwc(data, strides: tuple[int, int]):
    """``data[N, C/B, H, W, B]`` at every ``strides``-th row and column (what a 1x1 conv with
    these strides and no padding reads)."""
    n, cb, h, w, b = data.shape
    sh, sw = strides
    return te.compute(
        (n, cb, (h - 1) // sh + 1, (w - 1) // sw + 1, b),
        lambda i, c, y, x, v: data[i, c, y * sh, x * sw, v],
        name="subsample",
    )


def _ints(values) -> list[int]:
    return [int(v) for v in values]


@relax.expr_functor.mutator
class _Blocker(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, block: int, winograd: bool = True) -> None:
        super().__init__(mod)
        self.block = block
        self.winograd = winograd
        self.twin: dict[relax.Var, relax.Var] = {}  # NCHW var -> its blocked twin
        self.transformed: dict[relax.Var, relax.Var] = {}  # NCHW var -> layout_transform
        self.converted = 0

    # -- layouts -------------------------------------------------------------------------

    def _to_blocked_expr(self, x: relax.Expr) -> relax.Expr:
        b = self.block
        return relax.op.layout_transform(
            x, index_map=lambda n, c, h, w: (n, c // b, h, w, c % b)
        )

    def _to_nchw_expr(self, x: relax.Expr, channels: int) -> relax.Expr:
        b = self.block
        back = relax.op.layout_transform(
            x, index_map=lambda n, co, h, w, ci: (n, co * b + ci, h, w)
        )
        if dims(x)[1] * b == channels:
            return back
        # a twin padded with zero filters: the real channels are the first ``channels``
        return relax.op.strided_slice(self.builder_.emit(back), [1], [0], [channels])

    def _twin_of(self, x: relax.Expr, channels: int | None = None) -> relax.Var | None:
        """``x``'s blocked twin; with ``channels``, only if it holds exactly that many (no
        padded channels: what a conv or a concat reading it needs)."""
        if not isinstance(x, relax.Var) or x not in self.twin:
            return None
        twin = self.twin[x]
        if channels is not None and dims(twin)[1] * self.block != channels:
            return None
        return twin

    def _constant(self, expr: relax.Expr) -> np.ndarray | None:
        if isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            expr = expr if bound is None else bound
        if isinstance(expr, Constant) and hasattr(expr, "value"):
            return expr.value.numpy()
        return None

    def _blocked(self, x: relax.Expr, channels: int) -> relax.Expr | None:
        """``x`` as an operand of a blocked op whose output has ``channels`` channels; ``None``
        when it cannot be one (its channel axis does not broadcast)."""
        if isinstance(x, relax.Var) and x in self.twin:
            return self.twin[x]
        if not isinstance(x.ty, relax.TensorType):
            return x  # clip bounds and other non-tensor arguments
        shape = dims(x)
        if shape is None or len(shape) > 4:
            return None
        if all(d == 1 for d in shape):
            return x  # a scalar broadcasts the same in any layout
        full = (1,) * (4 - len(shape)) + tuple(shape)
        if full[1] not in (1, channels):
            return None
        value = self._constant(x)
        if value is None and channels % self.block:
            return None  # an NCHW tensor with a partial last block: not worth a padded copy
        if value is not None:
            value = value.reshape(full)
            if full[1] == 1:
                blocked = value.reshape(*full, 1)
            else:
                blocked = to_blocked(value, self.block)
            return relax.const(blocked, str(value.dtype))
        if full[1] == 1:
            return self.builder_.emit(relax.op.reshape(x, [*full, 1]))
        if len(shape) != 4:
            x = self.builder_.emit(relax.op.reshape(x, list(full)))
        elif isinstance(x, relax.Var) and x in self.transformed:
            return self.transformed[x]
        out = self.builder_.emit(self._to_blocked_expr(x))
        if isinstance(x, relax.Var):
            self.transformed[x] = out
        return out

    # -- ops -----------------------------------------------------------------------------

    def _conv(self, call: relax.Call) -> relax.Expr | None:
        attrs = call.attrs
        if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW"):
            return None
        data = call.args[0]
        groups = int(attrs.groups)
        dtypes = {str(data.ty.dtype), str(call.args[1].ty.dtype), str(call.ty.dtype)}
        if dtypes != {"float32"}:
            return None
        if static_but_batch(data) is None or static_but_batch(call) is None:
            return None
        weight = self._constant(call.args[1])
        if weight is None:
            return None
        f = weight.shape[0]
        padded = -(-f // self.block) * self.block
        if padded - f > MAX_PAD_WASTE * f or (groups != 1 and padded != f):
            return None
        channels = int(dims(data)[1])
        blocked_input = self._twin_of(data, channels) is not None
        if groups != 1:
            # Depthwise (one filter per channel) on a blocked input; other grouped convs and a
            # depthwise conv on an NCHW value stay NCHW.
            if not blocked_input or weight.shape[:2] != (groups, 1):
                return None
            f, _, kh, kw = weight.shape
            packed = np.ascontiguousarray(
                weight.reshape(f // self.block, self.block, kh, kw).transpose(0, 2, 3, 1)
            )
            return self.builder_.call_te(
                depthwise_conv2d_nchwc,
                self.twin[data],
                relax.const(packed, "float32"),
                tuple(_ints(attrs.strides)),
                tuple(_ints(attrs.padding)),
                tuple(_ints(attrs.dilation)),
                primfunc_name_hint="depthwise_conv2d_nchwc",
            )
        strides = tuple(_ints(attrs.strides))
        if blocked_input:
            data = self.twin[data]
            tile = winograd_tile(dims(data), weight.shape, attrs) if self.winograd else None
            if tile is not None:
                return self._winograd(data, weight, attrs, tile)
            if (
                SUBSAMPLE_STRIDED_1X1
                and weight.shape[2:] == (1, 1)
                and strides != (1, 1)
                and all(p == 0 for p in _ints(attrs.padding))
                and all(d == 1 for d in _ints(attrs.dilation))
            ):
                # a strided 1x1 conv is a 1x1 conv of the subsampled plane: flat, so it gets
                # the flat conv's schedules (see SUBSAMPLE_STRIDED_1X1)
                data = self.builder_.emit(
                    self.builder_.call_te(
                        subsample_nchwc, data, strides, primfunc_name_hint="subsample_nchwc"
                    )
                )
                strides = (1, 1)
        return self.builder_.call_te(
            conv2d_nchwc_packed,
            data,
            relax.const(pack_oihw(weight, self.block), "float32"),
            strides,
            tuple(_ints(attrs.padding)),
            tuple(_ints(attrs.dilation)),
            primfunc_name_hint="conv2d_nchwc_packed",
        )

    def _winograd(self, data: relax.Expr, weight: np.ndarray, attrs, m: int) -> relax.Expr:
        """The three kernels of ``F(m x m, 3 x 3)`` (``passes/winograd.py``) for a blocked
        input; the output transform takes the conv's place (its epilogue fuses into it)."""
        _n, _cb, h, w, _b = dims(data)
        padding = tuple(_ints(attrs.padding))
        top, left, bottom, right = padding
        out_h, out_w = h + top + bottom - 2, w + left + right - 2
        fusable = {"op_pattern": OUT_ELEMWISE_FUSABLE}
        points = self.builder_.emit(
            self.builder_.call_te(
                winograd_input_nchwc, data, padding, m,
                primfunc_name_hint="winograd_input", primfunc_attrs=fusable,
            )
        )
        product = self.builder_.emit(
            self.builder_.call_te(
                winograd_product_nchwc, points,
                relax.const(winograd_weight(weight, m, self.block), "float32"),
                primfunc_name_hint="winograd_product",
            )
        )
        return self.builder_.call_te(
            winograd_output_nchwc, product, out_h, out_w, m,
            primfunc_name_hint="winograd_output", primfunc_attrs=fusable,
        )

    def _rewrite(self, call: relax.Call) -> relax.Expr | None:
        """The blocked form of ``call`` (its args already visited), or ``None``."""
        op = _op(call)
        if op == "relax.nn.conv2d":
            return self._conv(call)
        shape = dims(call)
        if shape is None or len(shape) != 4 or not str(call.ty.dtype).startswith("float"):
            return None
        channels = shape[1]
        if not isinstance(channels, int):
            return None
        if channels % self.block and not any(
            self._twin_of(a) is not None for a in _tensor_args(call)
        ):
            return None  # a partial last block only where a padded conv output flows on
        layout = f"NCHW{self.block}c"
        if op in UNARY or op in BINARY:
            tensors = [a for a in call.args if isinstance(a.ty, relax.TensorType)]
            if not any(isinstance(a, relax.Var) and a in self.twin for a in tensors):
                return None
            args = [self._blocked(a, channels) for a in call.args]
            if any(a is None for a in args):
                return None
            return relax.Call(call.op, args, call.attrs)
        arg = call.args[0]
        if op in POOLS or op == "relax.nn.adaptive_avg_pool2d":
            if not (isinstance(arg, relax.Var) and arg in self.twin):
                return None
            at = call.attrs
            if str(at.layout) != "NCHW" or str(at.out_layout) != "NCHW":
                return None
            if op == "relax.nn.adaptive_avg_pool2d":
                size = None if at.output_size is None else _ints(at.output_size)
                return relax.op.nn.adaptive_avg_pool2d(
                    self.twin[arg], size, layout=layout, out_layout=layout
                )
            make = relax.op.nn.max_pool2d if op == "relax.nn.max_pool2d" else relax.op.nn.avg_pool2d
            return make(
                self.twin[arg], _ints(at.pool_size), _ints(at.strides), _ints(at.padding),
                _ints(at.dilation), bool(at.ceil_mode), bool(at.count_include_pad),
                layout=layout, out_layout=layout,
            )
        if op == "relax.image.resize2d":
            if not (isinstance(arg, relax.Var) and arg in self.twin):
                return None
            at = call.attrs
            if str(at.layout) != "NCHW":
                return None
            return relax.op.image.resize2d(
                self.twin[arg], call.args[1], roi=tuple(float(r) for r in at.roi),
                layout=layout, method=at.method,
                coordinate_transformation_mode=at.coordinate_transformation_mode,
                rounding_method=at.rounding_method, cubic_alpha=at.cubic_alpha,
                cubic_exclude=at.cubic_exclude, extrapolation_value=at.extrapolation_value,
                out_dtype=at.out_dtype if at.out_dtype is not None and str(at.out_dtype) else None,
            )
        if op == "relax.call_tir":
            bound = _legalized_bound(call)
            if bound is None or not (isinstance(bound[1], relax.Var) and bound[1] in self.twin):
                return None
            make, tensor, scalar = bound
            return make(self.twin[tensor], scalar)
        if op in REDUCTIONS:
            if not (isinstance(arg, relax.Var) and arg in self.twin):
                return None
            axes = call.attrs.axis
            if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
                return None
            if not call.attrs.keepdims:
                return None
            return relax.Call(call.op, [self.twin[arg]], call.attrs)
        if op == "relax.concat":
            if int(call.attrs.axis) not in (1, -3) or not isinstance(arg, relax.Tuple):
                return None
            fields = list(arg.fields)
            if not any(isinstance(f, relax.Var) and f in self.twin for f in fields):
                return None
            parts = []
            for f in fields:
                fshape = dims(f)
                if fshape is None or len(fshape) != 4 or fshape[1] % self.block:
                    return None  # a padded part would leave zeros inside the concat
                parts.append(self._blocked(f, fshape[1]))
            return relax.op.concat(parts, axis=1)
        return None

    def _dropout_twin(self, value: relax.Expr) -> relax.Var | None:
        """The twin of ``dropout(x)[0]`` (inference: ``x`` itself) when ``x`` has one."""
        if not isinstance(value, relax.TupleGetItem) or value.index != 0:
            return None
        if not isinstance(value.tuple_value, relax.Var):
            return None
        src = self.lookup_binding(value.tuple_value)
        if _op(src) != "relax.nn.dropout":
            return None
        return self._twin_of(src.args[0])

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = self.visit_expr(binding.value)
        twin = self._dropout_twin(value)
        if twin is None:
            blocked = self._rewrite(value) if isinstance(value, relax.Call) else None
            if blocked is None:
                super().visit_var_binding_(binding)
                return
            twin = self.builder_.emit(blocked)
            value = self.builder_.normalize(
                self._to_nchw_expr(twin, int(dims(binding.var)[1]))
            )
            self.converted += 1
        if isinstance(binding.var, relax.DataflowVar):
            nchw = self.builder_.emit(value)
            self.set_var_remap(binding.var, nchw)
        else:  # a block output keeps its var
            self.builder_.emit_normalized(relax.VarBinding(binding.var, value))
            nchw = binding.var
        self.twin[nchw] = twin


def nchwc_layout(block: int | None = None, winograd: bool = True) -> tvm.transform.Pass:
    """Convert eligible fp32 convs to ``NCHW{B}c`` and carry the blocked layout through the
    elementwise ops, pools and channel concats between them.

    Parameters
    ----------
    block:
        Channels per block (``B``). ``None``: the fp32 lanes of the current target, and
        nothing is rewritten when there is no current target or it is not a CPU.
    winograd:
        Run the 3x3 stride-1 convs that ``passes/winograd.py``'s cost model picks as
        Winograd convs. ``False`` keeps every conv direct (the same reduction order as the
        NCHW conv); as a caller's graph pass (``build_model(..., graph_passes=[
        nchwc_layout(winograd=False)])``) it takes the convs before the pipeline's own
        instance does.

    Returns
    -------
    tvm.transform.Pass
        A Relax module pass.
    """

    return mutator_pass(
        "NchwcLayout",
        lambda mod, size: _Blocker(mod, size, winograd),
        lambda: block if block is not None else cpu_lanes(),
        count="converted",
        logger=log,
        message="%d ops run in NCHW%dc",
    )
