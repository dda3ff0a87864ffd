"""Structured channel pruning: remove whole conv output channels and dense neurons.

TVM has no sparse kernels, so pruning only pays when tensor shapes shrink: this pass removes
whole output channels of conv2d layers (and output features of dense/matmul layers), together
with everything that depends on them, and rewrites ``main`` with the smaller constants.

What it matches
---------------
Every ``relax.nn.conv2d`` (NCHW/OIHW, ``groups == 1``) and ``relax.matmul`` whose weight is a
constant is a *source* of channels. ``channel_groups.ChannelGraph`` follows each channel
through the per-channel ``subtract/divide/multiply/add`` of a decomposed BatchNorm, activations,
pools, depthwise convs (channel ``i`` in ↔ channel ``i`` out), residual adds (the producers of
both branches lose the same indices), concats (offsets) and flatten→dense (channel ``c`` is
input features ``c*H*W .. c*H*W+H*W-1``) into the layers that consume it. Channels that reach
a model output, an op the analysis does not model, a reshape that mixes channels, a grouped
conv or a layer whose weight is not a constant are left alone; the reason is logged at INFO.

The maths
---------
Removing channel ``i`` deletes row ``i`` of the producer's weight (``W[i]`` of a conv,
column ``i`` of a dense), entry ``i`` of every per-channel constant on its way, and input
channel ``i`` of every consumer (``W_c[:, i]``).

*Lossless* (``ratio=0``): a channel whose producers' weights are all zero is a constant ``c``
after its bias/BatchNorm/activation (the analysis carries that value). Its contribution to a
consumer is a constant too, so it folds into the consumer's bias exactly::

    y = W_k * x_k + W_r * c   →   y' = W_k * x_k + b_r,   b_r = conv(c · 1, W_r)

(for a padded conv ``b_r`` is computed over the zero-padded constant image, so it is exact at
the borders too; for a dense layer ``b_r = c · W_r``).

*Ratio* (``0 < ratio < 1``): ``ratio`` is a fraction of **FLOPs**: the pass removes channel
groups until the conv2d + matmul FLOPs of ``main`` (``2·N·Ho·Wo·kh·kw·C_in/groups·C_out`` per
conv, ``2·M·K·N`` per matmul) have dropped by ``ratio`` (or as far as the pinned channels and
the minimum widths allow; the report says how far). A group's importance is::

    I(i) = Σ_members ||W_m[i]||_p · |gamma_m,i / std_m,i|    (p = 1 for "l1", 2 for "l2")

the norm of each producer's filter ``i`` with the BatchNorm scale that follows it folded in,
divided by the mean importance of its space so layers of different fan-in compare (for
``"taylor"``, see below). Groups are
removed lowest first, ``align`` channels at a time, so that every pruned layer keeps a multiple
of ``align`` channels or exactly ``min_channels`` (on a CPU: ``align`` is two vector registers of
channels, so the packed conv kernels get at least two channel vectors per register tile,
``min_channels`` one; unaligned counts measured slower than no pruning at all, see
``default_align``); constant channels go first, for free.

*Taylor* (``method="taylor"``, needs calibration data): the importance of channel ``i`` is the
change of a loss ``L`` were it removed, by a Taylor expansion in a gate ``m_i`` on the channel
(``1`` kept, ``0`` removed). Without labels or a training loss there are no gradients to take,
so ``L`` is the squared error of the channel's consumers' outputs against the unpruned model's,
on the calibration data. ``L`` is quadratic in ``m``, and its first-order term
``E[a_i · dL/da_i]`` (the |activation x gradient| of Molchanov et al.) is zero at the unpruned
model, so the expansion is exact at second order::

    I(i) = Σ_consumers c  E[a_i²] · Σ_o ||s_o W_c[o, i]||²

(``a_i`` the channel's activations as the consumer reads them, ``s_o`` the BatchNorm scale after
the consumer). For a 1x1 conv or a dense layer this is exactly ``E||Δy||²``; for a kxk conv it
treats a channel's neighbouring pixels as uncorrelated (and ignores the zero padding). Unlike the
weight norms it sees what the data does: a channel the activation keeps at zero costs nothing,
whatever its filter. Per space, scores are again divided by their mean.

*Calibration* (optional ``{input: [N, ...]}``): with activations of the unpruned model on the
calibration inputs, each consumer's removed channels ``X_r`` are predicted from its kept ones
by least squares, ``X_r ≈ X_k A + a0`` (ridge-regularised), and substituted::

    W'_k = W_k + A W_r,        b' = b + conv(a0 · 1, W_r)

For a 1x1 conv or a dense layer this is exactly the least-squares refit
``argmin ||X_k W' + b' - X W||`` of the consumer on the kept channels; for a kxk conv it is its
per-pixel form (channels predicted pixel by pixel, then convolved).

Where it sits
-------------
After BatchNorm is gone (folded into the conv by ``fold_conv_bn`` or decomposed into
per-channel arithmetic by ``DecomposeOpsForInference``) and constants are folded, so weights
are Relax constants; before ``LegalizeOps``. In tvmforge it is the first of the caller's
``graph`` passes, which run after those clean-ups (``build_model(prune=...)`` puts it there).

The pass object keeps what it did in ``.report`` (a :class:`PruneReport`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import tvm
from tvm import relax

from tvmforge.passes.prune.channel_groups import FIXED, ChannelGraph, Layer
from tvmforge.passes.prune.keys import ordinal_key, weight_key
from tvmforge.passes.prune.moments import _calibration_samples, _channel_rows, _Moments, _runs
from tvmforge.passes.prune.report import LayerChange, PruneReport
from tvmforge.passes.prune.rewriter import _constants, _ordinals, _Rewriter, model_flops
from tvmforge.passes.prune.selection import Runner, _Plan, default_align, default_runner

log = logging.getLogger(__name__)


# importance: norm order of the output filters, or "taylor" (calibration activations)
METHODS: dict[str, int | None] = {"l1": 1, "l2": 2, "taylor": None}
# A refit solves a (channels x channels) system per consumer; wider inputs are not refit.
MAX_CALIBRATED_CHANNELS = 4096


# ---- the pass ------------------------------------------------------------------------------


@tvm.transform.module_pass(opt_level=0, name="PruneChannels")
class PruneChannels:
    """Structured channel pruning of ``main`` (see the module docstring)."""

    def __init__(
        self,
        ratio: float = 0.0,
        method: str = "l1",
        calibration: Mapping[str, np.ndarray] | Sequence[np.ndarray] | None = None,
        align: int | None = None,
        runner: Runner | None = None,
        layer_names: Mapping[str, str] | None = None,
        min_channels: int | None = None,
    ):
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"prune ratio must be in [0, 1), got {ratio}")
        if method not in METHODS:
            raise ValueError(f"prune method must be one of {', '.join(METHODS)}, got {method!r}")
        if method == "taylor" and calibration is None:
            raise ValueError("prune method 'taylor' needs calibration data")
        if align is not None and align < 1:
            raise ValueError(f"align must be >= 1, got {align}")
        if min_channels is not None and not 1 <= min_channels <= (align or min_channels):
            raise ValueError(f"min_channels must be in [1, align], got {min_channels}")
        self.ratio, self.method, self.align = float(ratio), method, align
        self.min_channels = min_channels
        self.calibration = calibration
        self.runner = runner or default_runner
        self.layer_names = dict(layer_names or {})
        self.report: PruneReport | None = None
        self._ordinals: dict[relax.Var, int] = {}

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if self.align is None:
            align, minimum = default_align(tvm.target.Target.current(allow_none=True))
            minimum = self.min_channels or minimum
        else:
            align, minimum = self.align, self.min_channels or self.align
        report = PruneReport(self.method, self.ratio, align, minimum)
        self.report = report
        gv = next((g for g in mod.get_global_vars() if g.name_hint == "main"), None)
        func = mod[gv] if gv is not None else None
        if not isinstance(func, relax.Function):
            return mod
        report.flops_before = report.flops_after = model_flops(func)
        report.params_before, report.weight_bytes_before = _constants(func)
        report.params_after, report.weight_bytes_after = (
            report.params_before,
            report.weight_bytes_before,
        )
        graph = ChannelGraph(func)
        self._ordinals = _ordinals(func)
        report.kept = [f"{r.where}: {r.why}" for r in graph.refusals]
        layer_flops = sum(
            layer.flops(layer.out_channels, layer.in_channels) for layer in graph.layers
        )
        layer_params = sum(
            layer.params(layer.out_channels, layer.in_channels) for layer in graph.layers
        )
        # constant weights of conv2d / matmul calls the analysis does not follow (grouped)
        unfollowed = report.params_before - _constants(func, True)[0] - layer_params
        other_flops = report.flops_before - layer_flops
        report.other_params = (report.params_before - layer_params,) * 2
        report.other_flops = (other_flops, other_flops)
        importance = None
        if self.method == "taylor":
            importance = self._taylor(mod, func, graph)
        plan = _Plan(graph, METHODS[self.method], align, other_flops, importance, minimum)
        plan.choose(self.ratio, report.flops_before)
        if plan.keep.all():
            log.info("prune_channels: nothing to remove")
            report.layers = self._changes(graph, plan)
            return mod
        stats = self._calibrate(mod, func, graph, plan) if self.calibration is not None else {}
        weights, biases = self._edit_layers(graph, plan, stats, report)
        new_func = _Rewriter(graph, plan, weights, biases).run(func)
        out = mod.clone()
        out.update_func(gv, new_func)
        report.flops_after = model_flops(new_func)
        report.params_after, report.weight_bytes_after = _constants(new_func)
        report.other_params = (report.other_params[0], _constants(new_func, True)[0] + unfollowed)
        report.other_flops = (other_flops, plan.other_flops)
        report.removed_channels = int((~plan.keep).sum())
        report.lossless_channels = int((~plan.keep & plan.constant).sum())
        report.layers = self._changes(graph, plan)
        log.info("prune_channels: %s", report.summary())
        return out

    # ---- per-layer edits ---------------------------------------------------------------

    def _name(self, layer: Layer) -> str:
        index = self._ordinals.get(layer.var, -1)
        return (
            self.layer_names.get(weight_key(layer.weight))
            or self.layer_names.get(ordinal_key(index, layer.weight.shape))
            or f"{layer.kind} {layer.var.name} {list(layer.weight.shape)}"
        )

    def _changes(self, graph: ChannelGraph, plan: _Plan) -> list[LayerChange]:
        changes = []
        for i, layer in enumerate(graph.layers):
            out_kept, in_kept = plan.layer_channels(i)
            changes.append(
                LayerChange(
                    self._name(layer),
                    layer.kind,
                    (layer.out_channels, out_kept),
                    (layer.in_channels, in_kept),
                    (
                        layer.flops(layer.out_channels, layer.in_channels),
                        layer.flops(out_kept, in_kept),
                    ),
                    (
                        layer.params(layer.out_channels, layer.in_channels),
                        layer.params(out_kept, in_kept),
                    ),
                )
            )
        return changes

    def _edit_layers(self, graph: ChannelGraph, plan: _Plan, stats, report: PruneReport):
        weights: dict[relax.Var, np.ndarray] = {}
        biases: dict[relax.Var, np.ndarray] = {}
        for layer in graph.layers:
            w = layer.weight
            if layer.space is not None:
                start = plan.offset[graph.find(layer.space)]
                keep_out = plan.keep[start : start + layer.out_channels]
                w = w[keep_out] if layer.kind == "conv2d" else w[:, keep_out]
            if layer.inp is None:
                if w is not layer.weight:
                    weights[layer.var] = np.ascontiguousarray(w)
                continue
            keep_in = plan.kept_positions(layer.inp)
            if layer.kind == "depthwise":
                w = w[keep_in]
            elif not keep_in.all():
                w, bias = self._consumer(layer, w, keep_in, stats.get(layer.var), report)
                if bias is not None:
                    biases[layer.var] = bias
            if w is not layer.weight:
                weights[layer.var] = np.ascontiguousarray(w, dtype=layer.weight.dtype)
        return weights, biases

    def _consumer(self, layer: Layer, w: np.ndarray, keep_in: np.ndarray, moments, report):
        """Drop the removed input channels of a consumer; fold or predict their contribution.

        Returns the new weight and the bias to add after the layer (or None).
        """
        chan = layer.inp
        offsets = np.where(keep_in | ~np.isfinite(chan.cval), 0.0, chan.cval)
        lossy = ~keep_in & ~np.isfinite(chan.cval)
        w = w.astype(np.float64)
        if moments is not None and lossy.any():
            s, m = moments
            w, offsets = _substitute(layer, w, keep_in, lossy, s, m, offsets)
            report.calibrated_layers += 1
        if layer.kind == "matmul":
            bias = offsets[~keep_in] @ w[~keep_in] if offsets.any() else None
            return w[keep_in], (bias.astype(layer.weight.dtype) if bias is not None else None)
        bias = _conv_offset(layer, w[:, ~keep_in], offsets[~keep_in]) if offsets.any() else None
        return w[:, keep_in], bias

    def _calibrate(self, mod, func, graph: ChannelGraph, plan: _Plan):
        """Moments of each consumer's input channels on the calibration data (unpruned)."""
        wanted: dict[relax.Var, list[Layer]] = {}
        for layer in graph.layers:
            if layer.kind == "depthwise" or layer.inp is None:
                continue
            keep = plan.kept_positions(layer.inp)
            if not (~keep & ~np.isfinite(layer.inp.cval)).any():
                continue
            runs = _runs(layer.inp)
            if not isinstance(layer.in_var, relax.Var) or (runs > 1 and layer.kind != "matmul"):
                continue
            if len(layer.inp) // runs > MAX_CALIBRATED_CHANNELS:
                log.info(
                    "prune_channels: %s has too many input channels to refit; removed "
                    "channels are dropped",
                    self._name(layer),
                )
                continue
            wanted.setdefault(layer.in_var, []).append(layer)
        if not wanted:
            return {}
        samples = _calibration_samples(func, self.calibration)
        params = list(func.params)
        probe_vars = [v for v in wanted if v not in params]
        run = None
        if probe_vars:
            probe = mod.clone()
            probe.update_func(
                probe.get_global_var("main"), _Rewriter(graph, None).run(func, expose=probe_vars)
            )
            run = self.runner(probe)
        # one set of moments per (tensor, positions per channel), shared by its consumers
        first: dict[tuple[relax.Var, int], Layer] = {}
        for var, layers in wanted.items():
            for layer in layers:
                first.setdefault((var, _runs(layer.inp)), layer)
        shared = {key: _Moments(len(layer.inp) // key[1]) for key, layer in first.items()}
        for sample in samples:
            values = dict(zip(probe_vars, run(sample), strict=True)) if run else {}
            values.update({p: a for p, a in zip(params, sample, strict=True) if p in wanted})
            for (var, s), layer in first.items():
                shared[var, s].add(_channel_rows(values[var], layer, s))
        moments = {
            layer.var: (_runs(layer.inp), shared[var, _runs(layer.inp)])
            for var, layers in wanted.items()
            for layer in layers
        }
        log.info(
            "prune_channels: calibrated %d layer(s) on %d sample(s)", len(moments), len(samples)
        )
        return moments

    def _taylor(self, mod, func, graph: ChannelGraph) -> dict[int, np.ndarray]:
        """Per space, each channel's "taylor" importance (see the module docstring): the
        squared change of its consumers' outputs were it removed, on the calibration data."""
        consumers: dict[relax.Var, list[Layer]] = {}
        for layer in graph.layers:
            if layer.inp is None or not isinstance(layer.in_var, relax.Var):
                continue
            if (graph.roots_of(layer.inp) != FIXED).any():
                consumers.setdefault(layer.in_var, []).append(layer)
        if not consumers:
            return {}
        samples = _calibration_samples(func, self.calibration)
        params = list(func.params)
        probe_vars = [v for v in consumers if v not in params]
        run = None
        if probe_vars:
            probe = mod.clone()
            probe.update_func(
                probe.get_global_var("main"), _Rewriter(graph, None).run(func, expose=probe_vars)
            )
            run = self.runner(probe)
        # E[a_p^2] per position p of each consumer's channel axis, averaged over the samples
        energy = {var: np.zeros(len(layers[0].inp)) for var, layers in consumers.items()}
        for sample in samples:
            values = dict(zip(probe_vars, run(sample), strict=True)) if run else {}
            values.update({p: a for p, a in zip(params, sample, strict=True) if p in consumers})
            for var, layers in consumers.items():
                x = np.moveaxis(values[var].astype(np.float64), layers[0].inp.axis, -1)
                energy[var] += (x * x).reshape(-1, x.shape[-1]).mean(axis=0) / len(samples)
        importance = {root: np.zeros(graph.size(root)) for root in graph.roots()}
        seen: set[int] = set()
        for var, layers in consumers.items():
            for layer in layers:
                contrib = energy[var] * _input_gains(layer)
                roots = graph.roots_of(layer.inp)
                for root in np.unique(roots[roots != FIXED]):
                    at = roots == root
                    np.add.at(importance[int(root)], layer.inp.index[at], contrib[at])
                    seen.add(int(root))
        log.info(
            "prune_channels: taylor importance from %d consumer input(s) on %d sample(s)",
            len(consumers),
            len(samples),
        )
        return {root: v for root, v in importance.items() if root in seen}


def _input_gains(layer: Layer) -> np.ndarray:
    """Per contracted input position ``i``: ``sum ||s_o W[o, i]||^2`` over outputs ``o`` (and
    kernel taps), ``s`` the BatchNorm scale after the layer."""
    w = layer.weight.astype(np.float64)
    if layer.kind == "depthwise":
        return (w * w).reshape(w.shape[0], -1).sum(axis=1)
    scale = layer.scale if layer.scale is not None else 1.0
    if layer.kind == "matmul":
        ws = w * scale
        return (ws * ws).sum(axis=1)
    ws = w * np.reshape(scale, (-1, 1, 1, 1))
    return (ws * ws).sum(axis=(0, 2, 3))


def _substitute(
    layer: Layer,
    w: np.ndarray,
    keep_in: np.ndarray,
    lossy: np.ndarray,
    s: int,
    moments: _Moments,
    offsets: np.ndarray,
):
    """Predict removed channels from kept ones (least squares) and fold into ``w``."""
    mean, cov = moments.mean_cov()
    kept_c, lossy_c = keep_in[::s], lossy[::s]
    k, r = np.flatnonzero(kept_c), np.flatnonzero(lossy_c)
    if not len(k) or not len(r):
        return w, offsets
    ckk = cov[np.ix_(k, k)]
    ridge = 1e-3 * np.trace(ckk) / len(k) + 1e-12
    a = np.linalg.solve(ckk + ridge * np.eye(len(k)), cov[np.ix_(k, r)])  # [K, R]
    a0 = mean[r] - mean[k] @ a
    # weights as [channel, s, rest]: input channel c owns rows c*s .. c*s+s-1 (dense)
    if layer.kind == "matmul":
        wc = w.reshape(len(kept_c), s, -1)
        wc[k] += np.einsum("kr,rsn->ksn", a, wc[r])
        w = wc.reshape(w.shape)
    else:
        w = w.copy()
        w[:, k] += np.einsum("kr,orhw->okhw", a, w[:, r])
    per_channel = np.zeros(len(kept_c))
    per_channel[r] = a0
    return w, np.where(lossy, np.repeat(per_channel, s), offsets)


def _conv_offset(layer: Layer, w_removed: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The output of ``layer`` for removed input channels holding constants ``values``.

    The constant image is zero-padded like the real input, so border outputs differ; the
    result is ``[1, O, 1, 1]`` where it is uniform and ``[1, O, Ho, Wo]`` where it is not.
    """
    kernel = np.einsum("orhw,r->ohw", w_removed, values)
    _, _, h, wd = layer.in_shape
    _, _, ho, wo = layer.out_shape
    top, left, bottom, right = (int(p) for p in layer.attrs.padding)
    sh, sw = (int(v) for v in layer.attrs.strides)
    dh, dw = (int(v) for v in layer.attrs.dilation)
    mask = np.zeros((h + top + bottom, wd + left + right))
    mask[top : top + h, left : left + wd] = 1.0
    out = np.zeros((kernel.shape[0], ho, wo))
    for i in range(kernel.shape[1]):
        for j in range(kernel.shape[2]):
            y0, x0 = i * dh, j * dw
            window = mask[y0 : y0 + (ho - 1) * sh + 1 : sh, x0 : x0 + (wo - 1) * sw + 1 : sw]
            out += kernel[:, i, j][:, None, None] * window[None]
    dtype = layer.weight.dtype
    if np.all(out == out[:, :1, :1]):
        return out[:, :1, :1][None].astype(dtype)
    return out[None].astype(dtype)


def prune_channels(
    ratio: float = 0.0,
    *,
    method: str = "l1",
    calibration: Mapping[str, np.ndarray] | Sequence[np.ndarray] | None = None,
    align: int | None = None,
    runner: Runner | None = None,
    layer_names: Mapping[str, str] | None = None,
    min_channels: int | None = None,
) -> tvm.transform.Pass:
    """Structured channel pruning of ``main``; the returned pass keeps its ``.report``.

    Parameters
    ----------
    ratio:
        Fraction of the conv2d + matmul FLOPs to remove, in ``[0, 1)``. ``0`` removes only the
        channels that are constant (all-zero weights), without changing any output.
    method:
        Channel importance: ``"l1"`` or ``"l2"`` norm of the group's output filters
        (BatchNorm scale folded in), or ``"taylor"``: the squared change of the consumers'
        outputs were the channel removed, from ``calibration`` activations (required).
    calibration:
        Optional ``{input name: array [num_samples, *input_shape]}`` (or arrays in input
        order): the consumers of removed channels are refit by least squares on the unpruned
        model's activations for these inputs (and ``"taylor"`` scores channels on them).
    align, min_channels:
        Pruned layers keep a multiple of ``align`` channels or exactly ``min_channels`` (default:
        ``align``); layers with no such count below their width only lose constant channels
        (keeping at least one). Default: ``default_align`` of the current target (32 and 16
        on AVX-512, 16 and 8 on AVX2, 8 and 8 without a target).
    runner:
        ``runner(mod)`` compiles a module and returns ``run(arrays) -> outputs``; used to get
        calibration activations. Defaults to TVM's stock pipeline on the host CPU.
    layer_names:
        Names for the report's layers, keyed by ``weight_key(weight)`` or, for weights that
        earlier passes changed (BatchNorm folding), by ``ordinal_key(i, weight shape)`` of the
        ``i``-th conv2d/matmul of ``main``.
    """
    return PruneChannels(ratio, method, calibration, align, runner, layer_names, min_channels)

# Names callers reach through this module.
from tvmforge.passes.prune.report import layer_table, summary_line  # noqa: E402

__all__ = [
    "PruneChannels",
    "PruneReport",
    "default_align",
    "default_runner",
    "layer_table",
    "model_flops",
    "ordinal_key",
    "prune_channels",
    "summary_line",
    "weight_key",
]
