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
``w_q = clip(round(W / s_w), -127, 127)``; 7 bits for the AVX2 kernels (``/ 64``, ``[-64, 64]``,
below). Activations: per tensor, from a calibrated range
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
integers); on an AVX2 CPU without a dot product (AMD Zen 2/3, Intel client CPUs) likewise
with ``vpmaddubsw`` + ``vpmaddwd`` (``"avx2"``), whose u8 x s8 pairs saturate in s16 unless
``|w_q| <= 64``: this family's conv and dense weights are 7-bit, ``s_w[o] = max|W[o]| / 64``,
``w_q`` in ``[-64, 64]`` (a pair is at most ``2 * 255 * 64 = 32640``: exact; ONNX Runtime's
``reduce_range`` range, whose QDQ weights keep their codes; a QDQ model's full-range 8-bit
weights are requantized to 7 bits, which its layer's report entry says); depthwise convs get
their own hand schedule (``"depthwise"``); elsewhere, and for grouped convs, the plain int32
kernel is left to the default schedules.

Calibration
-----------
Activation ranges come from ``calibrator(probe)``: ``probe`` is the module whose ``main`` returns
the tensors to observe (a tuple, in the order of :attr:`QuantizeInt8.observed`), and the
calibrator returns one ``(lo, hi)`` per tensor (``tvmforge.driver.calibration`` runs it over
data with the minmax, percentile or entropy method). ``ranges`` (by tensor) can be given instead.

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

import logging
from collections.abc import Iterable, Mapping

import numpy as np
import tvm
from tvm import relax

from tvmforge.passes.quantize.patterns import (
    _canonicalize,
    _depthwise,
    _find_sites,
    _Graph,
    _op,
    _qdq_pairs,
    _shape,
    _Site,
)
from tvmforge.passes.quantize.qparams import (
    ACTIVATIONS,
    Calibrator,
    ChannelQParams,
    QParams,
    Range,
    activation_params,
    channel_params,
    dequantize_np,
    emit_dequantize,
    emit_quantize,
    quantize_np,
    weight_params,
)
from tvmforge.passes.quantize.report import QuantReport
from tvmforge.passes.quantize.rewriter import _QUANT_FRIENDLY, _expose, _Rewriter, substitute
from tvmforge.passes.schedule import int8_kernels as K
from tvmforge.passes.schedule.intrinsics import int8_family

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# The pass


def _error_probe(func: relax.Function, sites: list[_Site], params: Mapping[relax.Var, QParams],
                 probed: list[str],
                 channel_params: Mapping[relax.Var, ChannelQParams] | None = None,
                 weight_max=None) -> relax.Function:
    """``func`` returning, per site, ``(sum((y_q - y)^2), sum(y^2))`` (see ``_layer_errors``);
    the names of the sites measured, in order, are appended to ``probed``."""
    by_var = {s.var: s for s in sites}
    vmap: dict[relax.Var, relax.Expr] = {}
    outputs: list[relax.Expr] = []

    def sub(expr):
        return substitute(vmap, expr)

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
                        qmax = weight_max(site) if weight_max is not None else 127
                        s_w, w_q = weight_params(site.weight, axis=axis, qmax=qmax)
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
        avx2: bool | None = None,
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
        self.avx2 = avx2
        self._avx2 = False  # this run's choice (transform_module)
        self.report: QuantReport | None = None
        self.observed: list[str] = []

    def _name(self, kind: str, weight: np.ndarray | None, index: int) -> str:
        if self.layer_names and weight is not None:
            from tvmforge.passes.prune.keys import weight_key

            name = self.layer_names.get(weight_key(weight))
            if name:
                return name
        return _default_names(kind, weight, index)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        family = int8_family(tvm.target.Target.current(allow_none=True))
        vnni = self.vnni if self.vnni is not None else family == "vnni"
        sdot = not vnni and (self.sdot if self.sdot is not None else family == "sdot")
        # an explicit vnni=False asks for the plain int32 kernels on x86, as before this family
        self._avx2 = not vnni and not sdot and (
            self.avx2 if self.avx2 is not None else family == "avx2" and self.vnni is None)
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
        # Without data (a pre-quantized model), a layer whose input or output the model gives
        # no scale for stays float, rather than failing the build.
        for _ in range(len(sites)):
            missing = {v for v in observed if v.name not in self.ranges}
            if self.calibrator is not None or not missing or not pairs:
                break  # a float model without data: _params says what is missing
            unknown = {s.name for s in sites if {s.x, s.y, s.residual, s.tail} & missing}
            log.info("quantize_int8: no Q/DQ scale for the input or output of %s: left float",
                     ", ".join(sorted(unknown)))
            skip |= unknown
            report.layers.clear()
            report.refused.clear()
            sites, rewriter, observed, fixed = self._plan(graph, pairs, skip, report, vnni, sdot)
            for layer in report.layers:
                if layer.name in unknown:
                    layer.reason = "the model gives no scale for its input or output"
        if not sites:
            log.info("quantize_int8: no layer to quantize")
            return mod
        channels = self._channel_inputs(graph, sites, pairs) if self.depthwise_channels else []
        tensor_params, channel_params = self._params(mod, func, observed, channels)
        params = {**fixed, **tensor_params}
        if self.sensitivity is not None:
            errors = self._layer_errors(mod, func, sites, params, channel_params,
                                        rewriter.weight_max)
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
            if kind in ("vnni", "sdot", "avx2", "depthwise"):
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
        sites = _find_sites(graph, self._name, skip, report, pairs)
        unknown = self.skip_layers - {layer.name for layer in report.layers} - {
            s.name for s in sites}
        if unknown:
            log.warning("quantize_int8: skip_layers names no layer: %s", ", ".join(sorted(unknown)))
        rewriter = _Rewriter(graph, sites, {}, vnni, report, pairs, sdot,
                             avx2=self._avx2)
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
                      channel_params=None, weight_max=None) -> dict[str, float]:
        """Each layer's own error on the calibration data: ``||y_q - y|| / ||y||`` where ``y``
        is the float layer and ``y_q`` the layer with its input and weight quantized (the
        float input it gets in the float model; errors of earlier layers are not included)."""
        sums = getattr(self.calibrator, "sums", None)
        if sums is None:
            raise ValueError("sensitivity needs a calibrator with a sums() method "
                             "(tvmforge.driver.calibration.Calibrator)")
        probed: list[str] = []
        probe = tvm.IRModule({"main": _error_probe(func, sites, params, probed,
                                                   channel_params or {}, weight_max)})
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
    avx2: bool | None = None,
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
    avx2:
        Force the AVX2 ``vpmaddubsw`` kernels (7-bit weights) on or off [default: when the
        current target is an AVX2 CPU without AVX-512 or a dot product, and ``vnni`` is not
        given: an explicit ``vnni=False`` keeps the plain int32 kernels, as before].
    """
    return QuantizeInt8(calibrator, ranges, skip_layers, layer_names, activation, vnni,
                        sensitivity, depthwise_channels, sdot, avx2)

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
