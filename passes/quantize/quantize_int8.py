"""Post-training int8 quantization: conv2d and dense layers become int8 kernels.

What it matches
---------------
A *site* is a ``relax.nn.conv2d`` (NCHW data, OIHW weight; groups 1, grouped or depthwise) or a
``relax.matmul`` whose weight (second operand) is a constant: the constant is what makes it a
layer. A conv whose weight is computed (a graph input, another tensor) is left alone, and so are
layers named in ``skip_layers``. Each site swallows the single-use chain after it, in this order,
into one kernel's epilogue:

    site → [add per-channel constant (bias)] → [add another tensor (residual)] → [ReLU | Clip]

A conv site then swallows the float elementwise glue after that chain (``_post_chain``):
constant (per-channel or scalar) Mul / Add / Sub / Div, composed into one per-channel affine
stage, HardSwish (``x * clip(x + 3, 0, 6) / 6`` as the importer writes it), ReLU, sigmoid; the
kernel's epilogue computes them on real values and quantizes for the next layer (per channel
when only depthwise convs read the tensor), so PP-LCNet's conv → affine → hardswish → affine
→ depthwise chains stay uint8 between kernels.

A 1x1 conv followed by ``conv_transpose_direct``'s depth-to-space (a k x k, stride-k
ConvTranspose: PP-OCR det's head) takes the depth-to-space into its chain too: the post
stages after it are per output channel of the rearranged tensor, so the kernel gets them
repeated over the k*k sub-pixel channels, and the (uint8, NHWC) result is rearranged as bytes.
A float conv output that a spatial mean reads (an SE block's squeeze: RSE-FPN in PP-OCR det's
neck) is written NHWC: the mean reduces it over axes 1, 2, and the NCHW view the other users
take is a transpose that fuses into their kernels as reads (no strided gathers of an NCHW
tensor into an NHWC quantize).

(``Sum`` of two tensors, which the ONNX importer writes ``sum(stack(broadcast_to(a),
broadcast_to(b)))``, is first rewritten to ``add(a, b)``.)

A ``relax.matmul`` of two computed tensors (attention's ``q @ k^T`` and ``p @ v``; batch
dimensions equal, or a 2-D second operand) is a site too: both operands are quantized per
tensor (uint8, each at its own calibrated range) and ``int8_kernels.qmatmul`` accumulates
``sum_k (a - z_a)(b - z_b)`` in int32, scaled by ``s_a s_b`` (nothing is fused into it).

The maths
---------
Weights: per output channel, symmetric int8: ``s_w[o] = max|W[o]| / 127``,
``w_q = clip(round(W / s_w), -127, 127)``. Activations: per tensor, from a calibrated range
``[lo, hi]`` (``lo <= 0 <= hi`` after widening): ``uint8`` asymmetric, ``s = (hi - lo) / 255``,
``zp = round(-lo / s)``; or ``int8`` symmetric, ``s = max(|lo|, |hi|) / 127``, stored as
``uint8`` with ``zp = 128`` (``q_u8 = q_s8 + 128``: the same arithmetic, and what VNNI's
u8 x s8 products want). ``round`` is half-to-even throughout, ``quantize(x) =
saturate(round(x / s) + zp)``, ``dequantize(q) = s * (q - zp)``.

A kernel accumulates ``x_q · w_q`` exactly in int32 and requantizes once, in its epilogue::

    bias_q[o] = round(b[o] / (s_x s_w[o])) - zp_x · Σ_k w_q[o, k]
    y_q[o]    = saturate(round(act(float(acc[o] + bias_q[o]) · s_x s_w[o] / s_y
                                   [+ (r_q - zp_r) · s_r / s_y])) + zp_y)

(``act`` bounds the value by ReLU's ``0`` or Clip's ``[a/s_y, b/s_y]``.) Convolution padding
inserts ``zp_x``, a real zero, so the zero-point term is exact at the borders too.

Depthwise convs take their input per channel (``s_x[c]``, ``zp_x[c]``, from per-channel
min/max over the calibration data): each output channel reads one input channel, so
``s_x[c] s_w[c]`` is still one scale per output channel, and the padding inserts each
channel's own zero point. Per tensor, a channel whose range is far below the widest keeps few
of its 256 levels (PP-OCRv4 rec's first depthwise conv: 10 % own error per tensor, 1 % per
channel). The layer producing such an input then outputs float, unless another layer takes
it quantized (``depthwise_channels=False``: per tensor throughout). A site whose
tail feeds another site, a fused residual, a max-pool or a ReLU produces ``uint8`` (NHWC for
convs); max-pool and ReLU run on the quantized values directly (both are monotonic; same scale
and zero point). Everything else gets the dequantized float tensor, back in its original layout
(a VNNI conv with a float output writes it NCHW itself, with no transpose after it).

Kernels (``int8_kernels``): NHWC ``uint8`` activations, weights packed ``[OC/16, KH, KW,
IC/4, 16, 4]``; on a target with AVX-512 VNNI the kernel is marked ``tvmforge.int8_kernel =
"vnni"`` (opaque to fusion) and, in the schedule stage, gets a tuning record if one matches or
else its hand schedule tensorized with ``vpdpbusd`` (``schedule_int8``); on an AArch64 target
with the dot product (``+dotprod``: Cortex-A76, Neoverse-N1) likewise with ``sdot`` (the
kernel reads ``x_q - 128`` as int8 and the bias carries ``+128 · Σ_k w_q[o, k]``: the same
integers); depthwise convs get their own hand schedule (``"depthwise"``); elsewhere, and for
grouped convs, the plain int32 kernel is left to the default schedules.

Calibration
-----------
Activation ranges come from ``calibrator(probe)``: ``probe`` is the module whose ``main`` returns
the tensors to observe (a tuple, in the order of :attr:`QuantizeInt8.observed`), and the
calibrator returns one ``(lo, hi)`` per tensor (``tvmforge.driver.calibration`` runs it over data with
the minmax, percentile or entropy method). ``ranges`` (by tensor) can be given instead.

Where it sits
-------------
After ``DecomposeOpsForInference`` and constant folding (BatchNorm folded into the conv, weights
are constants), after ``prune_channels``, before ``pack_conv_weights`` (it wants OIHW conv
weights; the convs it leaves float get packed there) and ``LegalizeOps``; it needs the target
(``tvm.target.Target.current()``) to choose VNNI. In tvmforge it is the last of the caller's
``graph`` passes (``build_model(quantize="int8")`` puts it there). ``Sum`` canonicalization
is a no-op after ``stack_sum_to_add``. The pass keeps what it did in ``.report``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import tvm
from tvm import relax

from tvmforge.passes.schedule import int8_kernels as K
from tvmforge.passes.schedule.intrinsics import int8_family

log = logging.getLogger(__name__)

__all__ = [
    "ChannelQParams",
    "QParams",
    "QuantReport",
    "QuantizeInt8",
    "activation_params",
    "channel_params",
    "dequantize_np",
    "emit_dequantize",
    "emit_quantize",
    "quantize_int8",
    "quantize_np",
    "weight_params",
]

Range = tuple[float, float]
Calibrator = Callable[[tvm.IRModule], Sequence[Range]]
ACTIVATIONS = ("uint8", "int8")


# --------------------------------------------------------------------------------------------
# Quantization parameters and their arithmetic


@dataclass(frozen=True)
class QParams:
    """Per-tensor parameters of a ``uint8``-stored tensor: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int

    def to_json(self) -> dict:
        return {"scale": self.scale, "zero_point": self.zero_point}


def activation_params(lo: float, hi: float, activation: str = "uint8") -> QParams:
    """Scale and zero point for a tensor whose values lie in ``[lo, hi]``.

    ``uint8``: asymmetric over ``[min(lo, 0), max(hi, 0)]``. ``int8``: symmetric over
    ``±max(|lo|, |hi|)`` with 127 levels a side, stored as ``uint8`` with zero point 128.
    A degenerate range (all zeros) gets scale 1.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {activation!r}")
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"range [{lo}, {hi}] is not finite")
    if activation == "int8":
        scale = float(np.float32(max(-lo, hi) / 127.0)) or 1.0
        return QParams(scale, 128)
    scale = float(np.float32((hi - lo) / 255.0)) or 1.0
    zp = int(np.clip(np.round(-lo / scale), 0, 255))
    return QParams(scale, zp)


@dataclass(frozen=True)
class ChannelQParams:
    """Per-channel parameters of a ``uint8``-stored tensor (a depthwise conv's input):
    ``real[.., c, ..] = scale[c] * (q[.., c, ..] - zero_point[c])``."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]

    def to_json(self) -> dict:
        return {"scale": list(self.scale), "zero_point": list(self.zero_point)}

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array(self.scale, np.float32), np.array(self.zero_point, np.int64)


def channel_params(lo: np.ndarray, hi: np.ndarray) -> ChannelQParams:
    """``uint8`` asymmetric parameters per channel, each as :func:`activation_params`."""
    ps = [activation_params(a, b, "uint8") for a, b in zip(np.ravel(lo), np.ravel(hi),
                                                            strict=True)]
    return ChannelQParams(tuple(p.scale for p in ps), tuple(p.zero_point for p in ps))


def weight_params(w: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric int8 weights: ``(scale[w.shape[axis]], q)`` with
    ``q = clip(round(w / scale), -127, 127)``; an all-zero channel gets scale 1."""
    w = np.asarray(w, np.float32)
    others = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w), axis=others) if others else np.abs(w)
    scale = np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return scale, q


def quantize_np(x: np.ndarray, p: QParams) -> np.ndarray:
    """``saturate_u8(round_half_even(x / scale) + zero_point)``, in float32 like the kernels."""
    t = np.round(np.asarray(x, np.float32) / np.float32(p.scale)) + np.float32(p.zero_point)
    return np.clip(t, 0, 255).astype(np.uint8)


def dequantize_np(q: np.ndarray, p: QParams) -> np.ndarray:
    """``scale * (q - zero_point)`` in float32."""
    return (np.asarray(q).astype(np.float32) - np.float32(p.zero_point)) * np.float32(p.scale)


def _param_consts(x: relax.Expr, p: QParams | ChannelQParams, axis: int):
    """``scale`` and ``zero_point`` as float32 constants that broadcast against ``x`` (vectors
    along ``axis`` for per-channel parameters)."""
    if isinstance(p, QParams):
        return (relax.const(p.scale, "float32"),
                relax.const(float(p.zero_point), "float32"))
    ndim = int(x.ty.ndim)
    shape = [1] * ndim
    shape[axis % ndim] = -1
    scale, zp = p.arrays()
    return (relax.const(scale.reshape(shape)),
            relax.const(zp.astype(np.float32).reshape(shape)))


def emit_quantize(x: relax.Expr, p: QParams | ChannelQParams, axis: int = 1) -> relax.Expr:
    """The Relax expression of :func:`quantize_np` (a float32 tensor → uint8); per-channel
    parameters apply along ``axis``."""
    scale, zp = _param_consts(x, p, axis)
    t = relax.op.round(relax.op.divide(x, scale))
    t = relax.op.add(t, zp)
    return relax.op.astype(relax.op.clip(t, 0.0, 255.0), "uint8")


def emit_dequantize(q: relax.Expr, p: QParams | ChannelQParams, axis: int = 1) -> relax.Expr:
    """The Relax expression of :func:`dequantize_np` (uint8 → float32)."""
    scale, zp = _param_consts(q, p, axis)
    t = relax.op.subtract(relax.op.astype(q, "float32"), zp)
    return relax.op.multiply(t, scale)


# --------------------------------------------------------------------------------------------
# Report


@dataclass
class LayerInfo:
    name: str
    op: str
    kernel: str  # "vnni", "sdot", "int32" or "float" (skipped)
    output: str  # "uint8" or "float32"
    fused: list[str] = field(default_factory=list)
    reason: str = ""


@dataclass
class QuantReport:
    """What ``quantize_int8`` did, layer by layer."""

    activation: str
    vnni: bool = False
    layers: list[LayerInfo] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # "where: why" for sites left alone
    observed_tensors: int = 0
    channel_tensors: int = 0  # depthwise inputs quantized per channel
    qdq_tensors: int = 0  # tensors whose parameters came from the model's own Q/DQ pairs
    errors: dict[str, float] = field(default_factory=dict)  # per-layer error (sensitivity)
    sdot: bool = False  # ARM dot-product kernels (``sdot``)

    @property
    def quantized(self) -> list[LayerInfo]:
        return [layer for layer in self.layers if layer.kernel != "float"]

    def summary(self) -> str:
        vnni = sum(layer.kernel == "vnni" for layer in self.layers)
        skipped = len(self.layers) - len(self.quantized)
        qdq = f", {self.qdq_tensors} from Q/DQ" if self.qdq_tensors else ""
        dot = f"{vnni} with VNNI"
        if self.sdot:
            dot = f"{sum(layer.kernel == 'sdot' for layer in self.layers)} with sdot"
        return (f"{len(self.quantized)} layer(s) int8 ({dot}), {skipped} left float; "
                f"{self.observed_tensors} activation range(s) calibrated{qdq}")

    def to_json(self) -> dict:
        extra = {"sdot": True} if self.sdot else {}
        return {"activation": self.activation, "vnni": self.vnni, **extra,
                "layers": [asdict(layer) for layer in self.layers], "refused": self.refused,
                "observed_tensors": self.observed_tensors,
                "channel_tensors": self.channel_tensors, "qdq_tensors": self.qdq_tensors,
                "errors": self.errors,
                "summary": self.summary()}


# --------------------------------------------------------------------------------------------
# Graph analysis


def _op(value: relax.Expr, name: str) -> bool:
    return isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and \
        value.op.name == name


def _const(expr: relax.Expr) -> np.ndarray | None:
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


def _shape(expr: relax.Expr) -> tuple[int, ...] | None:
    sinfo = expr.ty
    if not isinstance(sinfo, relax.TensorType) or sinfo.shape is None:
        return None
    try:
        return tuple(int(d) for d in sinfo.shape.values)
    except (TypeError, AttributeError):
        return None


def _dtype(expr: relax.Expr) -> str | None:
    sinfo = expr.ty
    return str(sinfo.dtype.dtype) if isinstance(sinfo, relax.TensorType) else None


def _canonicalize(func: relax.Function) -> relax.Function:
    """``broadcast_to`` to the same shape → its input; ``sum(stack([a, b, ...]), axis=0)`` of
    same-shaped tensors → ``add(add(a, b), ...)`` (ONNX ``Sum``)."""
    alias: dict[relax.Var, relax.Expr] = {}
    stacks: dict[relax.Var, list[relax.Expr]] = {}

    def sub(expr):
        if isinstance(expr, relax.Var):
            return alias.get(expr, expr)
        if isinstance(expr, relax.Tuple):
            return relax.Tuple([sub(f) for f in expr.fields])
        return expr

    bb = relax.BlockBuilder()
    with bb.function("main", list(func.params), attrs=dict(func.attrs or {})):
        for block in func.body.blocks:
            dataflow = isinstance(block, relax.DataflowBlock)
            ctx = bb.dataflow() if dataflow else _null()
            with ctx:
                for binding in block.bindings:
                    var, value = binding.var, binding.value
                    out = dataflow and not isinstance(var, relax.DataflowVar)
                    emit = bb.emit_output if out else bb.emit
                    if isinstance(binding, relax.MatchCast):
                        alias[var] = bb.match_cast(sub(value), binding.ty)
                        continue
                    if (_op(value, "relax.broadcast_to") and not out
                            and _shape(value.args[0]) == _shape(var)):
                        alias[var] = sub(value.args[0])
                        continue
                    if _op(value, "relax.stack") and isinstance(value.args[0], relax.Tuple):
                        stacks[var] = [sub(f) for f in value.args[0].fields]
                    if (_op(value, "relax.sum") and isinstance(value.args[0], relax.Var)
                            and value.args[0] in stacks and not value.attrs.keepdims
                            and [int(a) for a in value.attrs.axis] == [0]
                            and int(value.args[0].ty.ndim) > 1):
                        parts = stacks[value.args[0]]
                        if all(_shape(p) == _shape(var) for p in parts) and len(parts) >= 2:
                            acc = parts[0]
                            for i, p in enumerate(parts[1:]):
                                expr = relax.op.add(acc, p)
                                last = i == len(parts) - 2
                                acc = (emit(expr, name_hint=var.name) if last
                                       else bb.emit(expr))
                            alias[var] = acc
                            continue
                    if isinstance(value, relax.Call):
                        value = relax.Call(value.op, [sub(a) for a in value.args], value.attrs,
                                           value.ty_args)
                    else:
                        value = sub(value)
                    alias[var] = emit(value, name_hint=var.name)
        bb.emit_func_output(sub(func.body.body))
    return relax.analysis.remove_all_unused(bb.get()["main"])


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *_):
        return False


@dataclass
class _Site:
    var: relax.Var  # the conv2d / matmul binding
    kind: str  # "conv2d", "dense" (constant weight) or "matmul" (two activations)
    name: str
    x: relax.Expr
    weight: np.ndarray | None  # OIHW for conv2d; [K, N] for dense; None for matmul
    call: relax.Call
    bias: np.ndarray | None = None  # [OC]
    residual: relax.Expr | None = None
    act: tuple[float | None, float | None] | None = None
    members: list[relax.Var] = field(default_factory=list)
    fused: list[str] = field(default_factory=list)
    y: relax.Expr | None = None  # matmul: the second activation
    # fused float stages after bias / residual / act (real values): ("affine", A[OC], B[OC]),
    # ("hswish",), ("relu",), ("sigmoid",); see ``_post_chain``
    post: list[tuple] = field(default_factory=list)
    # ``k`` when a depth-to-space (reshape / permute / reshape, as ``conv_transpose_direct``
    # writes a k x k stride-k conv-transpose) follows the conv; ``post`` is then per output
    # channel of the depth-to-space result (conv channel ``c * k * k + i`` is channel ``c``)
    d2s: int = 0

    @property
    def tail(self) -> relax.Var:
        return self.members[-1]


class _Graph:
    """Bindings, users, and the sites with their fused chains."""

    def __init__(self, func: relax.Function):
        self.func = func
        self.defn: dict[relax.Var, relax.Expr] = {}
        self.order: list[relax.Var] = []
        self.users: dict[relax.Var, list[relax.Var | None]] = {}
        for block in func.body.blocks:
            for binding in block.bindings:
                self.defn[binding.var] = binding.value
                self.order.append(binding.var)
                for v in _vars_in(binding.value):
                    self.users.setdefault(v, []).append(binding.var)
        for v in _vars_in(func.body.body):
            self.users.setdefault(v, []).append(None)  # None: the function's result

    def single_user(self, var: relax.Var) -> relax.Var | None:
        users = self.users.get(var, [])
        if len(users) != 1 or users[0] is None or not isinstance(var, relax.DataflowVar):
            return None
        return users[0]


def _vars_in(expr) -> list[relax.Var]:
    found: list[relax.Var] = []

    def visit(e):
        if isinstance(e, relax.Var):
            found.append(e)
        elif isinstance(e, relax.Tuple):
            for f in e.fields:
                visit(f)
        elif isinstance(e, relax.TupleGetItem):
            visit(e.tuple_value)
        elif isinstance(e, relax.Call):
            for a in e.args:
                visit(a)

    visit(expr)
    return found


def _site_of(var: relax.Var, value: relax.Expr) -> tuple[str, str] | tuple[None, str]:
    """``(kind, "")`` when the binding is a quantizable layer, else ``(None, reason)``."""
    if _op(value, "relax.nn.conv2d"):
        a = value.attrs
        if _const(value.args[1]) is None:
            return None, "the weight is not a constant"
        if (a.data_layout, a.kernel_layout, a.out_layout) != ("NCHW", "OIHW", "NCHW"):
            return None, f"layout {a.data_layout}/{a.kernel_layout} (want NCHW/OIHW)"
        if _dtype(value.args[0]) != "float32" or _shape(var) is None:
            return None, "not a static-shape float32 conv"
        return "conv2d", ""
    if _op(value, "relax.matmul"):
        w = _const(value.args[1])
        if w is None:
            a, b = (_shape(e) for e in value.args[:2])
            if (_dtype(value.args[0]) != "float32" or _dtype(value.args[1]) != "float32"
                    or a is None or b is None or _shape(var) is None):
                return None, "not a float32 matmul of two tensors with static shapes"
            if len(a) < 2 or len(b) < 2 or a[-1] != b[-2] or (len(b) > 2 and a[:-2] != b[:-2]):
                return None, f"matmul {list(a)} x {list(b)}: batch dimensions differ"
            if a[-1] >= 33025:
                return None, f"reduction of {a[-1]} may overflow the int32 accumulator"
            return "matmul", ""
        if w.ndim != 2 or _dtype(value.args[0]) != "float32" or _shape(value.args[0]) is None:
            return None, "not a float32 [.., K] x [K, N] matmul with static shapes"
        return "dense", ""
    return None, ""


def _channel_vector(c: np.ndarray, out_shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """A constant that varies only along ``axis`` of ``out_shape`` as a vector, else None."""
    if c.ndim > len(out_shape):
        return None
    full = (1,) * (len(out_shape) - c.ndim) + c.shape
    for i, d in enumerate(full):
        if d != 1 and i != axis % len(out_shape):
            return None
    try:
        vec = np.broadcast_to(c.reshape(full), [
            out_shape[i] if i == axis % len(out_shape) else 1 for i in range(len(out_shape))])
    except ValueError:
        return None
    return vec.reshape(-1).astype(np.float32)


def _activation_bounds(value: relax.Expr) -> tuple[float | None, float | None] | None:
    if _op(value, "relax.nn.relu"):
        return (0.0, None)
    if _op(value, "relax.clip"):
        def num(e):
            v = getattr(e, "value", None)
            return float(v.value if hasattr(v, "value") else v)
        try:
            return (num(value.args[1]), num(value.args[2]))
        except (TypeError, ValueError):
            return None
    return None


@dataclass(frozen=True)
class _Pair:
    """``d = dequantize(q)``, ``q = quantize(x)`` with the same per-tensor scale and zero point
    (a QDQ model's fake quantization of ``x``)."""

    x: relax.Expr
    q: relax.Var
    d: relax.Var
    params: QParams
    dtype: str


def _qdq_pairs(graph: _Graph) -> dict[relax.Var, _Pair]:
    """QDQ pairs by their ``quantize`` and ``dequantize`` variables."""
    pairs: dict[relax.Var, _Pair] = {}
    for var in graph.order:
        value = graph.defn[var]
        if not _op(value, "relax.dequantize") or not isinstance(value.args[0], relax.Var):
            continue
        qvar = value.args[0]
        qval = graph.defn.get(qvar)
        if qval is None or not _op(qval, "relax.quantize"):
            continue
        consts = [_const(e) for e in (*value.args[1:3], *qval.args[1:3])]
        if any(c is None or c.size != 1 for c in consts):
            continue
        ds, dz, qs, qz = (c.reshape(()).item() for c in consts)
        dtype = _dtype(qvar)
        if (ds, dz) != (qs, qz) or dtype not in ("uint8", "int8") or ds <= 0:
            continue
        zp = int(dz) + (128 if dtype == "int8" else 0)
        pair = _Pair(qval.args[0], qvar, var, QParams(float(ds), zp), dtype)
        pairs[qvar] = pairs[var] = pair
    return pairs


def _find_sites(graph: _Graph, names: Callable[[str, np.ndarray, int], str],
                skip: set[str], report: QuantReport) -> list[_Site]:
    sites: list[_Site] = []
    claimed: set[relax.Var] = set()
    index = 0  # layers seen, skipped ones included: names do not shift when one is skipped
    for var in graph.order:
        value = graph.defn[var]
        kind, reason = _site_of(var, value)
        if kind is None:
            if reason:
                report.refused.append(f"{var.name}: {reason}")
                log.info("quantize_int8: %s left float: %s", var.name, reason)
            continue
        raw = _const(value.args[1])
        weight = raw.astype(np.float32) if raw is not None else None
        name = names(kind, raw, index)
        index += 1
        site = _Site(var, kind, name, value.args[0], weight, value, members=[var])
        if name in skip:
            report.layers.append(LayerInfo(name, kind, "float", "float32",
                                           reason="in skip_layers"))
            continue
        if kind == "matmul":  # both operands quantized per tensor; nothing fused
            site.y = value.args[1]
            sites.append(site)
            continue
        channel_axis = 1 if kind == "conv2d" else -1
        cur = var
        while True:
            user = graph.single_user(cur)
            if user is None:
                break
            nxt = graph.defn[user]
            out_shape = _shape(user)
            if _op(nxt, "relax.add") and site.residual is None and site.act is None:
                a, b = nxt.args
                other = b if a.same_as(cur) else a
                c = _const(other)
                if c is not None:
                    vec = _channel_vector(c, out_shape, channel_axis) if out_shape else None
                    if vec is None or site.bias is not None:
                        break
                    site.bias = vec
                    site.fused.append("bias")
                elif (not a.same_as(b) and _shape(other) == out_shape == _shape(cur)
                      and _dtype(other) == "float32" and user not in claimed):
                    site.residual = other
                    site.fused.append("add")
                    claimed.add(user)
                else:
                    break
            elif site.act is None and _activation_bounds(nxt) is not None:
                site.act = _activation_bounds(nxt)
                site.fused.append("relu" if _op(nxt, "relax.nn.relu") else "clip")
            else:
                break
            site.members.append(user)
            cur = user
        if kind == "conv2d":
            _post_chain(graph, site, cur, claimed)
        sites.append(site)
    return sites


def _scalar(expr: relax.Expr) -> float | None:
    c = _const(expr)
    if c is None or c.size != 1:
        return None
    return float(c.reshape(()))


def _callee_name(value: relax.Expr) -> str | None:
    """The PrimFunc name of a ``call_tir`` (e.g. legalized ``maximum``), else None."""
    if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) \
            and value.op.name == "relax.call_tir" and isinstance(value.args[0], tvm.ir.GlobalVar):
        return value.args[0].name_hint
    return None


def _bound_op(value: relax.Expr, which: str) -> tuple[relax.Expr, float] | None:
    """``maximum``/``minimum`` (``which``) of a tensor and a scalar constant, as a Relax op or
    a legalized ``call_tir``: ``(tensor, constant)``."""
    if _op(value, f"relax.{which}"):
        args = list(value.args)
    else:
        name = _callee_name(value)
        if name is None or not name.rstrip("0123456789_").endswith(which) \
                or not isinstance(value.args[1], relax.Tuple):
            return None
        args = list(value.args[1].fields)
    if len(args) != 2:
        return None
    for t, k in ((args[0], args[1]), (args[1], args[0])):
        v = _scalar(k)
        if v is not None and _const(t) is None:
            return t, v
    return None


def _hswish(graph: _Graph, v: relax.Var) -> list[relax.Var] | None:
    """The bindings of ``hardswish(v) = v * clip(v + 3, 0, 6) / 6`` (as the ONNX importer
    writes it: add, maximum, minimum, multiply, divide), when ``v`` has no other user."""
    users = graph.users.get(v, [])
    if len(users) != 2 or None in users or not isinstance(v, relax.DataflowVar):
        return None
    a = next((u for u in users if _op(graph.defn[u], "relax.add")), None)
    if a is None or _scalar(next((x for x in graph.defn[a].args if not x.same_as(v)), v)) != 3.0:
        return None
    chain = [a]
    b = graph.single_user(a)
    if b is None:
        return None
    bv = graph.defn[b]
    if _op(bv, "relax.clip"):
        if _activation_bounds(bv) != (0.0, 6.0) or not bv.args[0].same_as(a):
            return None
        chain.append(b)
        c = b
    else:
        got = _bound_op(bv, "maximum")
        if got is None or not got[0].same_as(a) or got[1] != 0.0:
            return None
        c = graph.single_user(b)
        got = _bound_op(graph.defn[c], "minimum") if c is not None else None
        if got is None or not got[0].same_as(b) or got[1] != 6.0:
            return None
        chain += [b, c]
    def sixth(var, value):  # x / 6 or x * (1/6)
        if _op(value, "relax.divide") and value.args[0].same_as(var):
            return _scalar(value.args[1]) == 6.0
        return _op(value, "relax.multiply") and any(
            abs((_scalar(x) or 0.0) - 1 / 6) < 1e-7 for x in value.args if not x.same_as(var))

    scaled = False
    d = graph.single_user(c)
    if d is not None and d not in users and sixth(c, graph.defn[d]):
        chain.append(d)
        c, scaled = d, True
        d = graph.single_user(c)
    if d is None or d not in users or not _op(graph.defn[d], "relax.multiply"):
        return None
    da = graph.defn[d].args
    if not ((da[0].same_as(v) and da[1].same_as(c)) or (da[1].same_as(v) and da[0].same_as(c))):
        return None
    chain.append(d)
    if scaled:
        return chain
    e = graph.single_user(d)
    if e is None or not sixth(d, graph.defn[e]):
        return None
    chain.append(e)
    return chain


def _depth_to_space(graph: _Graph, site: _Site, cur: relax.Var
                    ) -> tuple[int, list[relax.Var]] | None:
    """``(k, [reshape, permute, reshape])`` when ``cur`` (the output of a 1x1, stride-1,
    ungrouped conv, NCHW ``[n, o*k*k, h, w]``) goes through ``conv_transpose_direct``'s
    depth-to-space: ``reshape [n, o, k, k, h, w]`` / ``permute_dims [0, 1, 4, 2, 5, 3]`` /
    ``reshape [n, o, h*k, w*k]``, each the single user of the one before."""
    a = site.call.attrs
    shape = _shape(cur)
    if (site.weight.shape[2:] != (1, 1) or int(a.groups) != 1 or shape is None
            or any(int(v) != 1 for v in a.strides) or any(int(v) != 0 for v in a.padding)
            or str(a.data_layout) != "NCHW" or str(a.out_layout) != "NCHW"):
        return None
    n, c, h, w = shape
    chain = []
    for expect in ("relax.reshape", "relax.permute_dims", "relax.reshape"):
        user = graph.single_user(chain[-1] if chain else cur)
        if user is None or not _op(graph.defn[user], expect) or _dtype(user) != "float32":
            return None
        chain.append(user)
    s1, s3 = _shape(chain[0]), _shape(chain[2])
    axes = graph.defn[chain[1]].attrs.axes
    if s1 is None or s3 is None or axes is None or len(s1) != 6:
        return None
    k = s1[2]
    if (s1 != (n, c // (k * k), k, k, h, w) or c % (k * k) or s1[3] != k
            or [int(v) for v in axes] != [0, 1, 4, 2, 5, 3]
            or s3 != (n, c // (k * k), h * k, w * k)):
        return None
    return k, chain


def _post_chain(graph: _Graph, site: _Site, cur: relax.Var, claimed: set) -> None:
    """Extend ``site``'s chain with float elementwise stages that run per element in the
    kernel's epilogue: per-channel (or scalar) constant multiply / add / subtract / divide
    (composed into one affine stage), hardswish, ReLU, Clip(0, inf), sigmoid."""
    out_shape = _shape(cur)
    if out_shape is None:
        return
    d2s = _depth_to_space(graph, site, cur)
    if d2s is not None:
        site.d2s, chain = d2s
        site.members.extend(chain)
        site.fused.append("depth_to_space")
        cur = chain[-1]
        out_shape = _shape(cur)
    post: list[tuple] = []
    oc = out_shape[1]

    def affine():
        if not post or post[-1][0] != "affine":
            post.append(("affine", np.ones(oc, np.float64), np.zeros(oc, np.float64)))
        return post[-1]

    while True:
        chain = _hswish(graph, cur)
        if chain is not None:
            post.append(("hswish",))
            site.members.extend(chain)
            site.fused.append("hswish")
            cur = chain[-1]
            continue
        user = graph.single_user(cur)
        if user is None or _shape(user) != out_shape or _dtype(user) != "float32":
            break
        nxt = graph.defn[user]
        if _op(nxt, "relax.nn.relu"):
            post.append(("relu",))
            name = "relu"
        elif _op(nxt, "relax.sigmoid"):
            post.append(("sigmoid",))
            name = "sigmoid"
        elif (_op(nxt, "relax.clip") and _activation_bounds(nxt) is not None
              and _activation_bounds(nxt)[0] == 0.0 and _activation_bounds(nxt)[1] is None):
            post.append(("relu",))
            name = "relu"
        elif any(_op(nxt, f"relax.{o}") for o in ("multiply", "add", "subtract", "divide")):
            a, b = nxt.args
            if a.same_as(b):
                break
            other = b if a.same_as(cur) else a
            c = _const(other)
            vec = _channel_vector(c, out_shape, 1) if c is not None else None
            if vec is None:
                break
            vec = vec.astype(np.float64)
            if _op(nxt, "relax.multiply"):
                _, A, B = affine()
                A *= vec
                B *= vec
                name = "mul"
            elif _op(nxt, "relax.add"):
                affine()[2][:] += vec
                name = "add"
            elif not a.same_as(cur):  # k - x, k / x: not affine in x (or not simply)
                break
            elif _op(nxt, "relax.subtract"):
                affine()[2][:] -= vec
                name = "sub"
            else:
                if np.any(vec == 0):
                    break
                _, A, B = affine()
                A /= vec
                B /= vec
                name = "div"
        else:
            break
        site.members.append(user)
        site.fused.append(name)
        cur = user
    site.post = post


def _depthwise(site: _Site) -> bool:
    """A conv whose every group has one input channel (``groups == IC``)."""
    return (site.kind == "conv2d" and site.weight.shape[1] == 1
            and int(site.call.attrs.groups) > 1)


# --------------------------------------------------------------------------------------------
# Rewriting


@dataclass
class _QVal:
    """A quantized tensor: ``expr`` is uint8 in ``layout`` ("NHWC" for a 4-D NCHW original,
    "plain" otherwise) with per-tensor ``params``."""

    expr: relax.Expr
    layout: str
    params: QParams | ChannelQParams


_QUANT_FRIENDLY = ("relax.nn.max_pool2d", "relax.nn.relu")


class _Rewriter:
    def __init__(self, graph: _Graph, sites: list[_Site], params: Mapping[relax.Var, QParams],
                 vnni: bool, report: QuantReport, pairs: Mapping[relax.Var, _Pair] | None = None,
                 sdot: bool = False):
        self.graph, self.sites, self.params = graph, sites, params
        self.pairs = dict(pairs or {})
        self.vnni, self.report = vnni, report
        self.sdot = sdot and not vnni
        self.site_of_tail = {s.tail: s for s in sites}
        self.inner = {m for s in sites for m in s.members[:-1]}
        self.inputs = ({s.x for s in sites} | {s.residual for s in sites if s.residual is not None}
                       | {s.y for s in sites if s.y is not None})
        self.channel_params: dict[relax.Var, ChannelQParams] = {}
        self.channel_only: set[relax.Var] = set()
        self.env: dict[relax.Var, relax.Expr | _QVal] = {}
        self.float_cache: dict[relax.Var, relax.Expr] = {}
        self.quant_cache: dict[tuple[relax.Var, str], _QVal] = {}
        self.kernels: dict[tvm.ir.GlobalVar, str] = {}
        self.bb: relax.BlockBuilder | None = None
        # float outputs a conv wrote NHWC because a spatial mean reads them (by original var)
        self.nhwc_float: dict[relax.Var, relax.Expr] = {}

    # ---- representations ---------------------------------------------------------------

    def quant_out(self, var: relax.Var) -> bool:
        """Whether a consumer of ``var`` takes it quantized."""
        for user in self.graph.users.get(var, []):
            if user is None:
                continue
            if var in self.inputs and var not in self.channel_only:
                return True
            value = self.graph.defn[user]
            if any(_op(value, name) for name in _QUANT_FRIENDLY) and value.args[0].same_as(var):
                return True
            if user in self.pairs and self.pairs[user].q.same_as(user):
                return True
        return False

    def fixed_params(self, var: relax.Var) -> QParams | None:
        """Parameters a QDQ model gives ``var``: its own pair's, or those of the pair that
        quantizes it (then ``var`` needs no calibration)."""
        if var in self.pairs and self.pairs[var].d.same_as(var):
            return self.pairs[var].params
        for user in self.graph.users.get(var, []):
            if user is not None and user in self.pairs and self.pairs[user].q.same_as(user) \
                    and self.pairs[user].x.same_as(var):
                return self.pairs[user].params
        return None

    def float_of(self, expr: relax.Expr) -> relax.Expr:
        if isinstance(expr, relax.Tuple):
            return relax.Tuple([self.float_of(f) for f in expr.fields])
        if not isinstance(expr, relax.Var):
            return expr
        val = self.env.get(expr, expr)
        if not isinstance(val, _QVal):
            return val
        if expr not in self.float_cache:
            axis = 3 if val.layout == "NHWC" else 1  # of a per-channel one
            f = self.bb.emit(emit_dequantize(val.expr, val.params, axis=axis))
            if val.layout == "NHWC":
                f = self.bb.emit(relax.op.permute_dims(f, [0, 3, 1, 2]))
            self.float_cache[expr] = f
        return self.float_cache[expr]

    def quant_of(self, var: relax.Expr, layout: str) -> _QVal:
        val = self.env.get(var, var) if isinstance(var, relax.Var) else var
        if isinstance(val, _QVal) and val.layout == layout and isinstance(val.params, QParams):
            return val
        key = (var, layout)
        pair = self.pairs.get(var)
        if (key not in self.quant_cache and pair is not None and pair.d.same_as(var)
                and pair.dtype == "uint8" and not isinstance(self.env.get(pair.q), _QVal)):
            q = self.env.get(pair.q, pair.q)
            if layout == "NHWC":
                q = self.bb.emit(relax.op.permute_dims(q, [0, 2, 3, 1]))
            self.quant_cache[key] = _QVal(q, layout, pair.params)
        if key not in self.quant_cache:
            if isinstance(val, _QVal):
                val = self.float_of(var)
            p = self.params[var]
            x = val
            if layout == "NHWC":
                x = self.bb.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
            q = self.bb.emit(emit_quantize(x, p), name_hint="quantized")
            self.quant_cache[key] = _QVal(q, layout, p)
        return self.quant_cache[key]

    def set_channel_params(self, params: Mapping[relax.Var, ChannelQParams]) -> None:
        """Depthwise inputs quantized per channel; a layer producing one that no other layer
        takes quantized then outputs float (the per-channel quantize follows it)."""
        self.channel_params = dict(params)
        others = ({s.x for s in self.sites if not _depthwise(s)}
                  | {s.y for s in self.sites if s.y is not None}
                  | {s.residual for s in self.sites if s.residual is not None})
        self.channel_only = {v for v in self.channel_params if v not in others}

    def channelwise(self, site: _Site) -> bool:
        """Whether ``site`` (a depthwise conv) takes its input quantized per channel: it has
        per-channel parameters and no kernel produced it as uint8 already."""
        val = self.env.get(site.x)
        if isinstance(val, _QVal):  # per channel already when its producer quantized it so
            return _depthwise(site) and isinstance(val.params, ChannelQParams)
        return site.x in self.channel_params and _depthwise(site)

    def quant_of_channels(self, var: relax.Var) -> _QVal:
        """``var`` (NCHW float) quantized per channel, NHWC."""
        val = self.env.get(var)
        if isinstance(val, _QVal) and isinstance(val.params, ChannelQParams):
            return val
        key = (var, "NHWC/channels")
        if key not in self.quant_cache:
            p = self.channel_params[var]
            x = self.bb.emit(relax.op.permute_dims(self.float_of(var), [0, 2, 3, 1]))
            q = self.bb.emit(emit_quantize(x, p, axis=-1), name_hint="quantized")
            self.quant_cache[key] = _QVal(q, "NHWC", p)
        return self.quant_cache[key]

    def sub(self, expr):
        if isinstance(expr, relax.Var):
            return self.float_of(expr)
        if isinstance(expr, relax.Tuple):
            return relax.Tuple([self.sub(f) for f in expr.fields])
        if isinstance(expr, relax.TupleGetItem):
            return relax.TupleGetItem(self.sub(expr.tuple_value), expr.index)
        return expr

    # ---- the walk ----------------------------------------------------------------------

    def run(self, mod: tvm.IRModule) -> tuple[relax.Function, tvm.IRModule]:
        func = self.graph.func
        bb = self.bb = relax.BlockBuilder(mod)
        name = "__tvmforge_quantized_main"
        with bb.function(name, list(func.params), attrs=dict(func.attrs or {})):
            for block in func.body.blocks:
                dataflow = isinstance(block, relax.DataflowBlock)
                with bb.dataflow() if dataflow else _null():
                    for binding in block.bindings:
                        self.binding(binding, dataflow)
            bb.emit_func_output(self.sub(func.body.body))
        out = bb.get()
        gv = out.get_global_var(name)
        new_main = out[gv]
        del out[gv]
        symbol = (func.attrs or {}).get("global_symbol")
        new_main = (new_main.with_attr("global_symbol", symbol) if symbol is not None
                    else new_main.without_attr("global_symbol"))
        return new_main, out

    def binding(self, binding, dataflow: bool) -> None:
        bb = self.bb
        var, value = binding.var, binding.value
        is_output = dataflow and not isinstance(var, relax.DataflowVar)
        if isinstance(binding, relax.MatchCast):
            self.env[var] = bb.match_cast(self.sub(value), binding.ty)
            return
        if var in self.inner:
            return
        pair = self.pairs.get(var)
        if pair is not None and isinstance(self.env.get(pair.x), _QVal) \
                and self.env[pair.x].params == pair.params:
            # QDQ of a tensor that is already quantized with these parameters: the same tensor
            # (the kernel rounded and saturated exactly as the quantize would)
            self.env[var] = self.env[pair.x]
            if is_output and pair.d.same_as(var):
                self.env[var] = bb.emit_output(self.float_of(var), name_hint=var.name)
            return
        if var in self.site_of_tail:
            self.env[var] = self.emit_site(self.site_of_tail[var])
        elif (_op(value, "relax.nn.max_pool2d") and isinstance(self.env.get(value.args[0]), _QVal)
              and self.env[value.args[0]].layout == "NHWC" and value.attrs.layout == "NCHW"):
            q = self.env[value.args[0]]
            a = value.attrs
            pooled = bb.emit(relax.op.nn.max_pool2d(
                q.expr, a.pool_size, a.strides, a.padding, a.dilation, a.ceil_mode,
                a.count_include_pad, layout="NHWC"))
            self.env[var] = _QVal(pooled, "NHWC", q.params)
        elif (isinstance(value, relax.Call) and value.args
              and isinstance(value.args[0], relax.Var) and value.args[0] in self.nhwc_float
              and self._spatial_mean(var, value.args[0]) is not None):
            keep = self._spatial_mean(var, value.args[0])
            m = bb.emit(relax.op.mean(self.nhwc_float[value.args[0]], axis=[1, 2],
                                      keepdims=keep))
            if keep:  # [n, 1, 1, c] -> [n, c, 1, 1]: the same bytes
                n, _, _, c = _shape(m)
                m = bb.emit(relax.op.reshape(m, [n, c, 1, 1]))
            self.env[var] = m
        elif _op(value, "relax.nn.relu") and isinstance(self.env.get(value.args[0]), _QVal):
            q = self.env[value.args[0]]
            zp = relax.const(np.uint8(q.params.zero_point), "uint8")
            self.env[var] = _QVal(bb.emit(relax.op.maximum(q.expr, zp)), q.layout, q.params)
        else:
            if isinstance(value, relax.Call):
                op = value.op if isinstance(value.op, tvm.ir.Op) else self.sub(value.op)
                expr = relax.Call(op, [self.sub(a) for a in value.args], value.attrs,
                                  value.ty_args)
            else:
                expr = self.sub(value)
            self.env[var] = bb.emit_output(expr, name_hint=var.name) if is_output else \
                bb.emit(expr, name_hint=var.name)
            return
        if is_output:
            self.env[var] = bb.emit_output(self.float_of(var), name_hint=var.name)

    # ---- one site ----------------------------------------------------------------------

    def emit_matmul(self, site: _Site) -> relax.Expr | _QVal:
        """``a @ b`` of two activations, both quantized per tensor (``int8_kernels.qmatmul``)."""
        aq = self.quant_of(site.x, "plain")
        bq = self.quant_of(site.y, "plain")
        out_quant = self.quant_out(site.tail)
        py = self.params[site.tail] if out_quant else None
        mult = np.float32(aq.params.scale) * np.float32(bq.params.scale)
        if py is not None:
            mult = mult / np.float32(py.scale)
        epi = K.Epilogue(out_dtype="uint8" if out_quant else "float32",
                         zero_point=py.zero_point if py else 0)
        te_fn = functools.partial(K.qmatmul, a_zero_point=aq.params.zero_point,
                                  b_zero_point=bq.params.zero_point, mult=float(mult), epi=epi)
        call = self.bb.call_te(te_fn, aq.expr, bq.expr, primfunc_name_hint="qmatmul_int32")
        self.kernels[call.args[0]] = "int32"
        out = self.bb.emit(call, name_hint=site.tail.name + "_q")
        self.report.layers.append(LayerInfo(site.name, site.kind, "int32", epi.out_dtype))
        return _QVal(out, "plain", py) if out_quant else out

    def emit_site(self, site: _Site) -> relax.Expr | _QVal:
        if site.kind == "matmul":
            return self.emit_matmul(site)
        bb = self.bb
        conv = site.kind == "conv2d"
        layout = "NHWC" if conv else "plain"
        channelwise = self.channelwise(site)
        xq = self.quant_of_channels(site.x) if channelwise else self.quant_of(site.x, layout)
        px = xq.params
        if conv:
            w_oihw = site.weight
        else:
            w_oihw = site.weight.T[:, :, None, None]
        oc = w_oihw.shape[0]
        s_w, w_q = weight_params(w_oihw, axis=0)
        groups = int(site.call.attrs.groups) if conv else 1
        if channelwise:  # depthwise: output o reads input channel o // (OC / IC) only
            x_scale, x_zp = px.arrays()
            src = np.arange(oc) // (oc // len(x_scale))
            x_scale, x_zp = x_scale[src], x_zp[src]
        else:
            x_scale, x_zp = np.float32(px.scale), px.zero_point
        s_acc = (x_scale * s_w).astype(np.float32)
        bias = site.bias if site.bias is not None else np.zeros(oc, np.float32)
        wsum = w_q.reshape(oc, -1).astype(np.int64).sum(axis=1)
        bias_q = np.round(bias.astype(np.float64) / s_acc.astype(np.float64)) - x_zp * wsum
        if self.sdot and groups == 1:  # sdot reads x_q - 128: the bias gives the 128 back
            bias_q = bias_q + 128 * wsum
        bias_q = np.clip(bias_q, -(2**31), 2**31 - 1).astype(np.int32)
        out_quant = self.quant_out(site.tail)
        py = self.params[site.tail] if out_quant else None
        # a tensor only depthwise convs take (per channel): the kernel quantizes it per
        # channel itself (NHWC u8) instead of writing float for a quantize pass to re-read
        chan_out = (conv and not out_quant and site.tail in self.channel_only
                    and site.tail in self.channel_params)
        if chan_out:
            py = self.channel_params[site.tail]
        real = bool(site.post) or chan_out  # the epilogue works on real values
        out_scale = np.float32(py.scale) if py and not real else np.float32(1.0)
        mult = (s_acc / out_scale).astype(np.float32)
        lower = upper = None
        if site.act is not None:
            lo, hi = site.act
            lower = None if lo is None else float(np.float32(lo) / out_scale)
            upper = None if hi is None else float(np.float32(hi) / out_scale)
        # a float output of a VNNI conv is written NCHW by the kernel itself (no transpose)
        nchw_out = (conv and not out_quant and not chan_out and groups == 1
                    and (self.vnni or self.sdot))
        # ... unless a spatial mean (an SE block's squeeze) reads it: then NHWC, the mean
        # reduces NHWC, and the NCHW view other users take fuses into their kernels as reads
        nhwc_float = (nchw_out and not site.d2s
                      and any(self._spatial_mean(u, site.tail) is not None
                              for u in self.graph.users.get(site.tail, []) if u is not None))
        nchw_out = nchw_out and not nhwc_float
        res_arg, res_kind, res_zp, res_mult = None, None, 0, 1.0
        if site.residual is not None:
            rv = self.env.get(site.residual, site.residual)
            if isinstance(rv, _QVal) and rv.layout == layout:
                res_arg, res_kind = rv.expr, "uint8"
                res_zp, res_mult = rv.params.zero_point, float(np.float32(rv.params.scale)
                                                               / out_scale)
            else:
                r = self.float_of(site.residual)
                if conv and not nchw_out:
                    r = bb.emit(relax.op.permute_dims(r, [0, 2, 3, 1]))
                res_arg, res_kind, res_mult = r, "float32", float(np.float32(1.0) / out_scale)
        u8_out = out_quant or chan_out
        kk = site.d2s * site.d2s or 1  # conv channels per depth-to-space output channel
        post_rows: list[np.ndarray] = []
        for stage in site.post:
            if stage[0] == "affine":
                post_rows += [np.repeat(stage[1], kk).astype(np.float32),
                              np.repeat(stage[2], kk).astype(np.float32)]
        if real and u8_out:
            if chan_out:
                scale, zp = (np.repeat(np.asarray(a, np.float32), kk) for a in py.arrays())
            else:
                scale = np.full(oc, np.float32(py.scale), np.float32)
                zp = np.full(oc, float(py.zero_point), np.float32)
            post_rows += [(np.float32(1.0) / scale).astype(np.float32), zp.astype(np.float32)]
        epi = K.Epilogue(
            out_dtype="uint8" if u8_out else "float32",
            zero_point=py.zero_point if py and not chan_out else 0,
            lower=lower, upper=upper,
            residual=res_kind, residual_zp=res_zp, residual_mult=res_mult,
            layout="NCHW" if nchw_out else "NHWC",
            post=tuple(stage[0] for stage in site.post),
            requant=real and u8_out,
        )
        x_expr = xq.expr
        x_shape = _shape(site.x)
        if conv:
            a = site.call.attrs
            pad = [int(p) for p in a.padding]
            spec = K.ConvSpec(
                kernel=(int(w_oihw.shape[2]), int(w_oihw.shape[3])),
                strides=tuple(int(s) for s in a.strides),
                padding=tuple(pad),
                dilation=tuple(int(d) for d in a.dilation),
                groups=groups,
            )
        else:
            spec = K.ConvSpec(kernel=(1, 1))
            m = int(np.prod(x_shape[:-1]))
            x_expr = bb.emit(relax.op.reshape(x_expr, [1, 1, m, x_shape[-1]]))
            if res_arg is not None:
                res_arg = bb.emit(relax.op.reshape(res_arg, [1, 1, m, oc]))
        ocp = -(-oc // 16) * 16
        if groups == 1:
            kernel_fn, weight = K.qconv2d_nhwc, K.pack_weight_vnni(w_q)
            vec = lambda v, dt: np.pad(v, (0, ocp - oc)).astype(dt)  # noqa: E731
            kind = "vnni" if self.vnni else "sdot" if self.sdot else "int32"
        else:
            kernel_fn = K.qconv2d_grouped_nhwc
            weight = np.ascontiguousarray(w_q.transpose(2, 3, 1, 0))  # KH, KW, ICg, OC
            vec = lambda v, dt: v.astype(dt)  # noqa: E731
            kind = "int32"
            # depthwise, NHWC, channels a multiple of 4: its own schedule (vnni/sdot hosts)
            dw_sched = (_depthwise(site) and oc == int(w_oihw.shape[0]) and oc % 4 == 0
                        and oc == groups and (self.vnni or self.sdot))
        args = [x_expr, relax.const(weight, "int8"), relax.const(vec(bias_q, "int32"), "int32"),
                relax.const(vec(mult, "float32"), "float32")]
        if res_arg is not None:
            args.append(res_arg)
        if channelwise:  # the padding inserts each channel's own zero point
            args.append(relax.const(px.arrays()[1].astype(np.uint8), "uint8"))
        if epi.has_post:
            rows = np.stack(post_rows) if post_rows else np.zeros((0, oc), np.float32)
            if groups == 1:
                rows = np.pad(rows, ((0, 0), (0, ocp - oc)))
            args.append(relax.const(np.ascontiguousarray(rows, np.float32), "float32"))
        te_fn = functools.partial(kernel_fn, spec=spec, epi=epi,
                                  x_zero_point=None if channelwise else px.zero_point,
                                  out_channels=oc)
        if kind == "sdot":
            te_fn = functools.partial(te_fn, signed=True)
        call = bb.call_te(te_fn, *args, primfunc_name_hint=f"q{site.kind}_{kind}")
        self.kernels[call.args[0]] = "depthwise" if groups > 1 and dw_sched else kind
        out = bb.emit(call, name_hint=site.tail.name + "_q")
        if not conv:
            out = bb.emit(relax.op.reshape(out, [*x_shape[:-1], oc]))
        self.report.layers.append(LayerInfo(site.name, site.kind, kind, epi.out_dtype,
                                            fused=list(site.fused)))
        if site.d2s:
            return self._depth_to_space(out, site.d2s, nhwc=not nchw_out, u8=u8_out, py=py)
        if out_quant or chan_out:
            return _QVal(out, layout, py)
        if conv and not nchw_out:
            if nhwc_float:
                self.nhwc_float[site.tail] = out
            return bb.emit(relax.op.permute_dims(out, [0, 3, 1, 2]))
        return out

    def _spatial_mean(self, user: relax.Var, var: relax.Var) -> bool | None:
        """``keepdims`` when ``user`` is ``mean(var, axis=[2, 3])`` of a 4-D tensor."""
        value = self.graph.defn.get(user)
        if value is None or not _op(value, "relax.mean") or not value.args[0].same_as(var):
            return None
        axes = value.attrs.axis
        if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3] or _shape(var) is None \
                or len(_shape(var)) != 4:
            return None
        return bool(value.attrs.keepdims)

    def _depth_to_space(self, out: relax.Expr, k: int, nhwc: bool, u8: bool,
                        py) -> relax.Expr | _QVal:
        """The conv's ``[n, o*k*k, h, w]`` result (NHWC or NCHW, uint8 or float) rearranged
        to ``[n, o, h*k, w*k]``: uint8 stays NHWC (a copy of bytes), float ends NCHW."""
        bb = self.bb
        r = relax.op
        if nhwc:
            n, h, w, c = _shape(out)
            o = c // (k * k)
            t = bb.emit(r.reshape(out, [n, h, w, o, k, k]))
            t = bb.emit(r.permute_dims(t, [0, 1, 4, 2, 5, 3]))  # n, h, kh, w, kw, o
            t = bb.emit(r.reshape(t, [n, h * k, w * k, o]))
            if u8:
                return _QVal(t, "NHWC", py)
            return bb.emit(r.permute_dims(t, [0, 3, 1, 2]))
        n, c, h, w = _shape(out)
        o = c // (k * k)
        t = bb.emit(r.reshape(out, [n, o, k, k, h, w]))
        t = bb.emit(r.permute_dims(t, [0, 1, 4, 2, 5, 3]))
        return bb.emit(r.reshape(t, [n, o, h * k, w * k]))


def _expose(func: relax.Function, tensors: Sequence[relax.Var],
            channels: Sequence[relax.Var] = ()) -> relax.Function:
    """``func`` returning ``tensors`` (a tuple) instead of its own result, then for each of
    ``channels`` (NCHW) its per-channel minima and maxima, ``[2, C]``."""
    wanted = set(tensors) | set(channels)
    vmap: dict[relax.Var, relax.Var] = {}

    def sub(expr):
        if isinstance(expr, relax.Var):
            return vmap.get(expr, expr)
        if isinstance(expr, relax.Tuple):
            return relax.Tuple([sub(f) for f in expr.fields])
        if isinstance(expr, relax.TupleGetItem):
            return relax.TupleGetItem(sub(expr.tuple_value), expr.index)
        return expr

    bb = relax.BlockBuilder()
    with bb.function("main", list(func.params), attrs=dict(func.attrs or {})):
        for block in func.body.blocks:
            dataflow = isinstance(block, relax.DataflowBlock)
            with bb.dataflow() if dataflow else _null():
                for binding in block.bindings:
                    var, value = binding.var, binding.value
                    if isinstance(binding, relax.MatchCast):
                        vmap[var] = bb.match_cast(sub(value), binding.ty)
                        continue
                    if isinstance(value, relax.Call):
                        value = relax.Call(value.op, [sub(a) for a in value.args], value.attrs,
                                           value.ty_args)
                    else:
                        value = sub(value)
                    out = dataflow and (not isinstance(var, relax.DataflowVar) or var in wanted)
                    vmap[var] = (bb.emit_output if out else bb.emit)(value, name_hint=var.name)
        stats = []
        if channels:
            with bb.dataflow():
                for v in channels:
                    t = sub(v)
                    lo = relax.op.min(t, axis=[0, 2, 3])
                    hi = relax.op.max(t, axis=[0, 2, 3])
                    stats.append(bb.emit_output(relax.op.stack([lo, hi], axis=0)))
        bb.emit_func_output(relax.Tuple([sub(v) for v in tensors] + stats))
    return bb.get()["main"]


# --------------------------------------------------------------------------------------------
# The pass


def _error_probe(func: relax.Function, sites: list[_Site], params: Mapping[relax.Var, QParams],
                 probed: list[str],
                 channel_params: Mapping[relax.Var, ChannelQParams] | None = None
                 ) -> relax.Function:
    """``func`` returning, per site, ``(sum((y_q - y)^2), sum(y^2))`` (see ``_layer_errors``);
    the names of the sites measured, in order, are appended to ``probed``."""
    by_var = {s.var: s for s in sites}
    vmap: dict[relax.Var, relax.Expr] = {}
    outputs: list[relax.Expr] = []

    def sub(expr):
        if isinstance(expr, relax.Var):
            return vmap.get(expr, expr)
        if isinstance(expr, relax.Tuple):
            return relax.Tuple([sub(f) for f in expr.fields])
        if isinstance(expr, relax.TupleGetItem):
            return relax.TupleGetItem(sub(expr.tuple_value), expr.index)
        return expr

    bb = relax.BlockBuilder()
    with bb.function("main", list(func.params), attrs=dict(func.attrs or {})):
        with bb.dataflow():
            for block in func.body.blocks:
                for binding in block.bindings:
                    var, value = binding.var, binding.value
                    if isinstance(binding, relax.MatchCast):
                        vmap[var] = bb.match_cast(sub(value), binding.ty)
                        continue
                    if isinstance(value, relax.Call):
                        value = relax.Call(value.op, [sub(a) for a in value.args], value.attrs,
                                           value.ty_args)
                    else:
                        value = sub(value)
                    vmap[var] = bb.emit(value)
                    site = by_var.get(var)
                    if site is None or site.x not in params or (
                            site.y is not None and site.y not in params):
                        continue

                    def fake_quant(e, p):
                        return bb.emit(emit_dequantize(bb.emit(emit_quantize(sub(e), p)), p))

                    x_fq = fake_quant(site.x, (channel_params or {}).get(site.x, params[site.x]))
                    if site.kind == "matmul":
                        other = fake_quant(site.y, params[site.y])
                    else:
                        axis = 0 if site.kind == "conv2d" else 1
                        s_w, w_q = weight_params(site.weight, axis=axis)
                        shape = [1] * site.weight.ndim
                        shape[axis] = -1
                        other = relax.const((w_q.astype(np.float32) * s_w.reshape(shape))
                                            .astype(np.float32))
                    y_q = bb.emit(relax.Call(value.op, [x_fq, other, *value.args[2:]],
                                             value.attrs, value.ty_args))
                    diff = bb.emit(relax.op.subtract(y_q, vmap[var]))
                    outputs.append(bb.emit_output(relax.op.sum(relax.op.multiply(diff, diff))))
                    outputs.append(bb.emit_output(
                        relax.op.sum(relax.op.multiply(vmap[var], vmap[var]))))
                    probed.append(site.name)
        bb.emit_func_output(relax.Tuple(outputs))
    return bb.get()["main"]


def _default_names(kind: str, _weight: np.ndarray, index: int) -> str:
    return f"{kind}_{index}"


@tvm.transform.module_pass(opt_level=0, name="QuantizeInt8")
class QuantizeInt8:
    """Post-training int8 quantization of ``main`` (see the module docstring)."""

    def __init__(
        self,
        calibrator: Calibrator | None = None,
        ranges: Mapping[str, Range] | None = None,
        skip_layers: Iterable[str] = (),
        layer_names: Mapping[str, str] | None = None,
        activation: str = "uint8",
        vnni: bool | None = None,
        sensitivity: float | None = None,
        depthwise_channels: bool = True,
        sdot: bool | None = None,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, "
                             f"not {activation!r}")
        self.calibrator = calibrator
        self.ranges = dict(ranges or {})
        self.skip_layers = set(skip_layers)
        self.layer_names = dict(layer_names or {})
        self.activation = activation
        self.vnni = vnni
        self.sensitivity = sensitivity
        self.depthwise_channels = depthwise_channels
        self.sdot = sdot
        self.report: QuantReport | None = None
        self.observed: list[str] = []

    def _name(self, kind: str, weight: np.ndarray | None, index: int) -> str:
        if self.layer_names and weight is not None:
            from tvmforge.passes.prune.prune_channels import weight_key

            name = self.layer_names.get(weight_key(weight))
            if name:
                return name
        return _default_names(kind, weight, index)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        family = int8_family(tvm.target.Target.current(allow_none=True))
        vnni = self.vnni if self.vnni is not None else family == "vnni"
        sdot = not vnni and (self.sdot if self.sdot is not None else family == "sdot")
        report = self.report = QuantReport(self.activation, vnni, sdot=sdot)
        gv = next((g for g in mod.get_global_vars() if g.name_hint == "main"), None)
        func = mod[gv] if gv is not None else None
        if not isinstance(func, relax.Function):
            return mod
        func = _canonicalize(func)
        graph = _Graph(func)
        pairs = _qdq_pairs(graph)
        skip = set(self.skip_layers)
        sites, rewriter, observed, fixed = self._plan(graph, pairs, skip, report, vnni, sdot)
        if not sites:
            log.info("quantize_int8: no layer to quantize")
            return mod
        channels = self._channel_inputs(graph, sites, pairs) if self.depthwise_channels else []
        tensor_params, channel_params = self._params(mod, func, observed, channels)
        params = {**fixed, **tensor_params}
        if self.sensitivity is not None:
            errors = self._layer_errors(mod, func, sites, params, channel_params)
            worst = {name for name, e in errors.items() if e > self.sensitivity}
            if worst:
                log.info("quantize_int8: left float by sensitivity > %g: %s", self.sensitivity,
                         ", ".join(sorted(worst)))
                report.layers.clear()
                report.refused.clear()
                sites, rewriter, observed, fixed = self._plan(graph, pairs, skip | worst,
                                                              report, vnni, sdot)
                for layer in report.layers:
                    if layer.name in worst:
                        layer.reason = f"sensitivity: relative error {errors[layer.name]:.3g}"
            report.errors = {k: round(v, 5) for k, v in errors.items()}
        rewriter.params = params
        rewriter.set_channel_params(channel_params)
        report.channel_tensors = len(channel_params)
        report.observed_tensors = len(observed)
        report.qdq_tensors = len(fixed)
        new_main, out = rewriter.run(mod)
        out.update_func(out.get_global_var("main"), new_main)
        for kvar, kind in rewriter.kernels.items():
            if kind in ("vnni", "sdot", "depthwise"):
                # Scheduled in the schedule stage (``schedule_int8``), after the tuning records:
                # unscheduled here, so that ``tune`` sees them as tasks and records apply.
                out.update_func(kvar, out[kvar].with_attr(K.KERNEL_ATTR, kind)
                                .with_attr("op_pattern", 8))  # kOpaque: fuse nothing into it
        out = relax.transform.DeadCodeElimination(["main"])(out)
        log.info("quantize_int8: %s", report.summary())
        return out

    def _plan(self, graph: _Graph, pairs, skip: set[str], report: QuantReport, vnni: bool,
              sdot: bool = False):
        """Sites, their rewriter, the tensors to calibrate and those a Q/DQ pair fixes."""
        sites = _find_sites(graph, self._name, skip, report)
        unknown = self.skip_layers - {layer.name for layer in report.layers} - {
            s.name for s in sites}
        if unknown:
            log.warning("quantize_int8: skip_layers names no layer: %s", ", ".join(sorted(unknown)))
        rewriter = _Rewriter(graph, sites, {}, vnni, report, pairs, sdot)
        observed: list[relax.Var] = []
        fixed: dict[relax.Var, QParams] = {}
        for v in [*(s.x for s in sites), *(s.y for s in sites if s.y is not None),
                  *(s.residual for s in sites if s.residual is not None),
                  *(s.tail for s in sites if rewriter.quant_out(s.tail))]:
            if not isinstance(v, relax.Var) or v in observed or v in fixed:
                continue
            p = rewriter.fixed_params(v)
            if p is not None:
                fixed[v] = p
            else:
                observed.append(v)
        return sites, rewriter, observed, fixed

    @staticmethod
    def _channel_inputs(graph: _Graph, sites: list[_Site], pairs) -> list[relax.Var]:
        """Inputs of depthwise convs to quantize per channel (not a Q/DQ pair's, nor a ReLU /
        max-pool, which run on uint8 values). A depthwise conv's output channel reads one
        input channel, so each may have its own scale; per tensor, channels whose range is
        far below the widest lose most of their 8 bits."""
        found: list[relax.Var] = []
        for s in sites:
            if not _depthwise(s):
                continue
            x = s.x
            if (not isinstance(x, relax.Var) or x in found or x in pairs
                    or _shape(x) is None or len(_shape(x)) != 4):
                continue
            value = graph.defn.get(x)
            if value is not None and any(_op(value, name) for name in _QUANT_FRIENDLY):
                continue
            found.append(x)
        return found

    def _layer_errors(self, mod, func, sites: list[_Site], params,
                      channel_params=None) -> dict[str, float]:
        """Each layer's own error on the calibration data: ``||y_q - y|| / ||y||`` where ``y``
        is the float layer and ``y_q`` the layer with its input and weight quantized (the
        float input it gets in the float model; errors of earlier layers are not included)."""
        sums = getattr(self.calibrator, "sums", None)
        if sums is None:
            raise ValueError("sensitivity needs a calibrator with a sums() method "
                             "(tvmforge.driver.calibration.Calibrator)")
        probed: list[str] = []
        probe = tvm.IRModule({"main": _error_probe(func, sites, params, probed,
                                                   channel_params or {})})
        for name, f in mod.functions_items():
            if name.name_hint != "main":
                probe[name] = f
        totals = list(sums(probe))
        return {name: float(np.sqrt(totals[2 * i] / max(totals[2 * i + 1], 1e-30)))
                for i, name in enumerate(probed)}

    def _params(self, mod, func, observed: list[relax.Var], channels: list[relax.Var]):
        """Per-tensor parameters of ``observed`` and per-channel ones of ``channels`` (when the
        calibrator can give per-channel ranges, ``supports_channels``)."""
        self.observed = [v.name for v in observed]
        if not getattr(self.calibrator, "supports_channels", False):
            channels = []
        ranges: dict[relax.Var, Range] = {}
        missing = []
        for v in observed:
            if v.name in self.ranges:
                ranges[v] = self.ranges[v.name]
            else:
                missing.append(v)
        by_channel: dict[relax.Var, ChannelQParams] = {}
        if missing or channels:
            if self.calibrator is None:
                raise ValueError(
                    "quantize_int8 needs activation ranges: pass a calibrator (calibration "
                    "data) or ranges for " + ", ".join(v.name for v in missing[:5]))
            probe = tvm.IRModule({"main": _expose(func, missing, channels)})
            for name, f in mod.functions_items():
                if name.name_hint != "main":
                    probe[name] = f
            got = list(self.calibrator(probe, channels=len(channels)) if channels
                       else self.calibrator(probe))
            if len(got) != len(missing) + len(channels):
                raise ValueError(f"calibrator returned {len(got)} ranges for "
                                 f"{len(missing) + len(channels)} tensors")
            ranges.update(zip(missing, got[:len(missing)], strict=True))
            for v, (lo, hi) in zip(channels, got[len(missing):], strict=True):
                by_channel[v] = channel_params(lo, hi)
        params = {v: activation_params(*ranges[v], self.activation) for v in observed}
        return params, by_channel


def quantize_int8(
    calibrator: Calibrator | None = None,
    *,
    ranges: Mapping[str, Range] | None = None,
    skip_layers: Iterable[str] = (),
    layer_names: Mapping[str, str] | None = None,
    activation: str = "uint8",
    vnni: bool | None = None,
    sensitivity: float | None = None,
    depthwise_channels: bool = True,
    sdot: bool | None = None,
) -> QuantizeInt8:
    """Post-training int8 quantization as a module pass.

    Parameters
    ----------
    calibrator:
        ``calibrator(probe_module) -> [(lo, hi), ...]``, one range per tensor ``probe_module``'s
        ``main`` returns (``tvmforge.driver.calibration.Calibrator`` runs it over data).
    ranges:
        Known ranges by tensor (Relax variable) name; the calibrator is asked for the rest.
    skip_layers:
        Layer names left float (ONNX node names where ``layer_names`` gives them, else
        ``conv2d_<i>`` / ``dense_<i>`` in graph order; ``.report`` lists them).
    layer_names:
        ``prune_channels.weight_key(weight) -> name``: names layers after their ONNX nodes.
    activation:
        ``uint8`` (asymmetric) or ``int8`` (symmetric) activations.
    vnni:
        Force the VNNI kernels on or off [default: when the current target has AVX-512 VNNI].
    sensitivity:
        Measure each layer's own relative error on the calibration data (``.report.errors``)
        and leave float every layer whose error exceeds this (e.g. ``0.1``); needs a
        calibrator with a ``sums`` method.
    depthwise_channels:
        Quantize the input of a depthwise conv per channel (when the calibrator gives
        per-channel ranges, ``supports_channels``); the layer producing it then outputs float
        unless another layer takes it quantized. ``False``: one scale per tensor.
    sdot:
        Force the ARM ``sdot`` kernels on or off [default: when the current target is AArch64
        with the dot product, ``+dotprod``, and VNNI is off].
    """
    return QuantizeInt8(calibrator, ranges, skip_layers, layer_names, activation, vnni,
                        sensitivity, depthwise_channels, sdot)
