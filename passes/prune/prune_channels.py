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

import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import tvm
from tvm import relax

from tvmforge.passes.prune.channel_groups import FIXED, Chan, ChannelGraph, Layer, static_shape

log = logging.getLogger(__name__)

__all__ = [
    "PruneChannels",
    "PruneReport",
    "default_align",
    "default_runner",
    "layer_table",
    "ordinal_key",
    "prune_channels",
    "summary_line",
    "weight_key",
]

# importance: norm order of the output filters, or "taylor" (calibration activations)
METHODS: dict[str, int | None] = {"l1": 1, "l2": 2, "taylor": None}
# A refit solves a (channels x channels) system per consumer; wider inputs are not refit.
MAX_CALIBRATED_CHANNELS = 4096

# compile(mod) -> run(list of input arrays) -> list of output arrays
Runner = Callable[[tvm.IRModule], Callable[[Sequence[np.ndarray]], list[np.ndarray]]]


@dataclass
class LayerChange:
    """One conv2d / depthwise conv / matmul: channels, weight parameters and FLOPs, (before,
    after)."""

    name: str
    op: str
    channels: tuple[int, int]  # output channels before, after
    in_channels: tuple[int, int]
    flops: tuple[int, int]
    params: tuple[int, int] = (0, 0)  # scalars of the layer's weight

    @property
    def changed(self) -> bool:
        return self.channels[0] != self.channels[1] or self.in_channels[0] != self.in_channels[1]


@dataclass
class PruneReport:
    """What ``prune_channels`` did: FLOPs (conv2d + matmul), parameters and weight bytes
    before/after, in total and per layer.

    ``layers`` holds every conv2d / matmul the analysis follows; ``other_params`` and
    ``other_flops`` the rest, so that ``sum(layer params) + other_params == params`` and
    ``sum(layer FLOPs) + other_flops == flops`` before and after: biases, BatchNorm constants
    and the weights of layers the analysis does not follow (grouped convs) are ``other``.
    """

    method: str
    ratio: float
    align: int
    min_channels: int = 0
    flops_before: int = 0
    flops_after: int = 0
    params_before: int = 0
    params_after: int = 0
    weight_bytes_before: int = 0  # bytes of all constants of ``main``
    weight_bytes_after: int = 0
    other_params: tuple[int, int] = (0, 0)
    other_flops: tuple[int, int] = (0, 0)
    removed_channels: int = 0
    lossless_channels: int = 0  # removed channels that were constant (folded exactly)
    calibrated_layers: int = 0
    layers: list[LayerChange] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # why channels were left alone

    @property
    def flops_removed(self) -> float:
        return 1.0 - self.flops_after / self.flops_before if self.flops_before else 0.0

    def to_json(self) -> dict:
        data = asdict(self)
        data["flops_removed"] = round(self.flops_removed, 4)
        data["other_params"] = list(self.other_params)
        data["other_flops"] = list(self.other_flops)
        data["layers"] = [
            {
                **asdict(c),
                "channels": list(c.channels),
                "in_channels": list(c.in_channels),
                "flops": list(c.flops),
                "params": list(c.params),
            }
            for c in self.layers
        ]
        return data

    def summary(self) -> str:
        return summary_line(self.to_json())


def _pct(before: int, after: int) -> str:
    return f"{100 * (after - before) / before:+.1f}%" if before else "+0.0%"


def summary_line(report: Mapping) -> str:
    """One line for a build log from a report's JSON (``PruneReport.to_json``)."""
    r = report
    changed = sum(
        c["channels"][0] != c["channels"][1] or c["in_channels"][0] != c["in_channels"][1]
        for c in r["layers"]
    )
    return (
        f"{changed} of {len(r['layers'])} layer(s) narrowed ({r['removed_channels']} channel(s) "
        f"removed, {r['lossless_channels']} constant); FLOPs {r['flops_before'] / 1e9:.3f}G -> "
        f"{r['flops_after'] / 1e9:.3f}G ({_pct(r['flops_before'], r['flops_after'])}), "
        f"parameters {r['params_before'] / 1e6:.3f}M -> {r['params_after'] / 1e6:.3f}M "
        f"({_pct(r['params_before'], r['params_after'])}), weights "
        f"{r['weight_bytes_before'] / 1e6:.2f} MB -> {r['weight_bytes_after'] / 1e6:.2f} MB"
    )


def layer_table(report: Mapping, everything: bool = False) -> list[str]:
    """The per-layer table of a report's JSON: the pruned layers (all with ``everything``),
    then one row for the rest and the totals."""
    rows = [("layer", "op", "out ch", "in ch", "params", "FLOPs")]

    def pair(v, fmt=str) -> str:
        return fmt(v[0]) if v[0] == v[1] else f"{fmt(v[0])} -> {fmt(v[1])}"

    def mega(n: int) -> str:
        for scale, unit, digits in ((1e9, "G", 3), (1e6, "M", 3), (1e4, "k", 1)):
            if n >= scale:
                return f"{n / (scale if unit != 'k' else 1e3):.{digits}f}{unit}"
        return str(n)

    shown = [
        c
        for c in report["layers"]
        if everything
        or c["channels"][0] != c["channels"][1]
        or c["in_channels"][0] != c["in_channels"][1]
    ]
    for c in shown:
        rows.append(
            (
                c["name"],
                c["op"],
                pair(c["channels"]),
                pair(c["in_channels"]),
                pair(c["params"], mega),
                pair(c["flops"], mega),
            )
        )
    hidden = len(report["layers"]) - len(shown)
    if hidden:
        rest = [c for c in report["layers"] if c not in shown]
        rows.append(
            (
                f"({hidden} unchanged layer(s))",
                "",
                "",
                "",
                mega(sum(c["params"][0] for c in rest)),
                mega(sum(c["flops"][0] for c in rest)),
            )
        )
    rows.append(
        (
            "(biases, BatchNorm, other)",
            "",
            "",
            "",
            pair(report["other_params"], mega),
            pair(report["other_flops"], mega),
        )
    )
    rows.append(
        (
            "total",
            "",
            "",
            "",
            pair((report["params_before"], report["params_after"]), mega),
            pair((report["flops_before"], report["flops_after"]), mega),
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            v.ljust(w) if i < 2 else v.rjust(w)
            for i, (v, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    ]


def weight_key(weight: np.ndarray) -> str:
    """A key naming a weight by its contents (``layer_names`` maps these to layer names)."""
    w = np.ascontiguousarray(weight)
    h = hashlib.sha1(f"{w.shape}{w.dtype}".encode())
    h.update(w.tobytes())
    return h.hexdigest()[:20]


def ordinal_key(index: int, shape: Sequence[int]) -> str:
    """A key naming the ``index``-th conv2d/matmul of ``main`` whose weight has ``shape``."""
    return f"#{index}:{'x'.join(str(int(d)) for d in shape)}"


def default_align(target: tvm.target.Target | None) -> tuple[int, int]:
    """``(align, min_channels)``: pruned layers keep a multiple of ``align`` channels or
    exactly ``min_channels``.

    On a CPU, ``min_channels`` is the fp32 vector lanes (at least 8) and ``align`` twice that:
    ``pack_conv_weights`` packs output channels in blocks of one vector and
    ``schedule_cpu_default`` gives a packed conv a register tile of ``nf`` blocks, ``nf`` a
    divisor of the block count of at most 4; ``pack_dense_weights`` uses panels of two
    vectors. An odd block count (208 = 13 x 16) leaves ``nf = 1``: twice the loads per FMA.
    Measured on ResNet-50 pruned to 50 % of its FLOPs (AVX-512, 2 threads, tvmforge's default
    schedules with packed weights, interleaved runs, one process, 2026-11-22): multiples of 16
    ran 1.67-1.71x faster than unpruned, multiples of 32 1.83x, of 64 1.92x (fewer, coarser
    choices: 64-channel layers can no longer be pruned); earlier, without packed weights,
    multiples of 8 ran 1.2-1.4x and unaligned counts 0.9-0.95x (slower than no pruning).
    Without a target: 8 and 8; GPUs: 16 and 16 (not measured).
    """
    if target is None:
        return 8, 8
    if target.kind.name in ("llvm", "c"):
        from tvmforge.passes.schedule.params import CpuScheduleParams

        lanes = max(8, CpuScheduleParams.from_target(target).lanes)
        return 2 * lanes, lanes
    return 16, 16


def _kept_counts(size: int, align: int, minimum: int) -> list[int]:
    """The channel counts below ``size`` a pruned space may keep, widest first."""
    counts = list(range(align * ((size - 1) // align), align - 1, -align))
    if minimum < min(align, size):
        counts.append(minimum)
    return counts


def default_runner(mod: tvm.IRModule) -> Callable[[Sequence[np.ndarray]], list[np.ndarray]]:
    """Compile ``mod`` for the host CPU with TVM's default pipeline; a function running it."""
    target = tvm.target.Target({"kind": "llvm"})
    executable = tvm.compile(mod, target=target)
    vm = relax.VirtualMachine(executable, tvm.cpu())

    def run(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = vm["main"](*[tvm.runtime.tensor(a, tvm.cpu()) for a in arrays])
        return _flatten_outputs(out)

    return run


def _flatten_outputs(out) -> list[np.ndarray]:
    if hasattr(out, "numpy"):
        return [out.numpy()]
    return [a for item in out for a in _flatten_outputs(item)]


# ---- selection -----------------------------------------------------------------------------


@dataclass
class _Space:
    root: int
    order: np.ndarray  # removable indices, in removal order
    free: int  # leading entries of ``order`` removed for free (constant channels)
    levels: list[tuple[float, int]]  # (score, channels removed after this chunk), ascending


class _Plan:
    """Which channels each space keeps; FLOPs of the layers under that choice."""

    def __init__(
        self,
        graph: ChannelGraph,
        order: int | None,
        align: int,
        other_flops: int,
        importance: Mapping[int, np.ndarray] | None = None,
        min_channels: int | None = None,
    ):
        self.graph = graph
        self.importance = importance or {}
        self.roots = graph.roots()
        self.offset, total = {}, 0
        for r in self.roots:
            self.offset[r] = total
            total += graph.size(r)
        self.keep = np.ones(total, bool)
        self.other_flops = other_flops
        self.constant = self._constant_channels()
        minimum = align if min_channels is None else min_channels
        self.spaces = [self._space(r, order, align, minimum) for r in self.roots]
        self._positions = [self._global(layer.inp) for layer in graph.layers]

    def _global(self, chan: Chan | None) -> np.ndarray | None:
        """Positions of ``chan`` as indices into ``self.keep`` (-1: fixed)."""
        if chan is None:
            return None
        roots = self.graph.roots_of(chan)
        out = np.full(len(chan), -1, np.int64)
        tracked = roots != FIXED
        out[tracked] = [
            self.offset[int(r)] + int(i)
            for r, i in zip(roots[tracked], chan.index[tracked], strict=True)
        ]
        return out

    def kept_positions(self, chan: Chan) -> np.ndarray:
        g = self._global(chan)
        return np.where(g < 0, True, self.keep[np.maximum(g, 0)])

    def _constant_channels(self) -> np.ndarray:
        """Channels whose value is one constant at every layer that consumes them."""
        ok = np.ones(len(self.keep), bool)
        for layer in self.graph.layers:
            if layer.kind == "depthwise" or layer.inp is None:
                continue
            g = self._global(layer.inp)
            bad = (g >= 0) & ~np.isfinite(layer.inp.cval)
            ok[g[bad]] = False
        return ok

    def _space(self, root: int, order: int | None, align: int, minimum: int) -> _Space:
        graph = self.graph
        size, pinned = graph.size(root), graph.pinned(root)
        start = self.offset[root]
        constant = self.constant[start : start + size] & ~pinned
        importance = self.importance.get(root)
        if importance is None:  # norms (for "taylor": a space no calibrated consumer reads)
            importance = np.zeros(size)
            for m in graph.members(root):
                importance += graph.layers[m].output_norms(order or 1)
        removable = ~pinned
        mean = importance[removable].mean() if removable.any() else 1.0
        score = importance / mean if mean > 0 else importance
        free_idx = np.flatnonzero(constant)
        rest = np.flatnonzero(removable & ~constant)
        free_idx = free_idx[np.argsort(score[free_idx], kind="stable")]
        rest = rest[np.argsort(score[rest], kind="stable")]
        order_idx = np.concatenate([free_idx, rest]).astype(np.int64)
        # constant channels go for free, as far as the alignment of what is left allows;
        # layers too narrow to have an aligned count below their width lose only those
        counts = _kept_counts(size, align, minimum)
        kept = size - len(free_idx)
        if counts:
            kept = min(c for c in [*counts, size] if c >= kept) if kept > counts[-1] else counts[-1]
        free = size - max(kept, 1)
        levels: list[tuple[float, int]] = []
        removed = free
        for c in counts:
            if size - c <= removed:
                continue
            if size - c > len(order_idx):
                break
            chunk = order_idx[removed : size - c]
            levels.append((float(score[chunk].mean()), size - c))
            removed = size - c
        return _Space(root, order_idx, free, levels)

    def apply(self, removed: Mapping[int, int]) -> None:
        """Keep everything but the first ``removed[root]`` channels of each space's order."""
        self.keep[:] = True
        for space in self.spaces:
            n = removed.get(space.root, 0)
            self.keep[self.offset[space.root] + space.order[:n]] = False

    def layer_channels(self, i: int) -> tuple[int, int]:
        """(out, in) channels layer ``i`` keeps under the current choice."""
        layer = self.graph.layers[i]
        g = self._positions[i]
        in_kept = (
            layer.in_channels
            if g is None
            else int(np.where(g < 0, True, self.keep[np.maximum(g, 0)]).sum())
        )
        if layer.kind == "depthwise":
            return in_kept, in_kept
        start = self.offset[self.graph.find(layer.space)]
        return int(self.keep[start : start + layer.out_channels].sum()), in_kept

    def flops(self) -> int:
        total = self.other_flops
        for i, layer in enumerate(self.graph.layers):
            total += layer.flops(*self.layer_channels(i))
        return total

    def choose(self, ratio: float, total_flops: int) -> None:
        """Free removals, then the cheapest chunks until ``ratio`` of the FLOPs are gone."""
        base = {s.root: s.free for s in self.spaces}
        chunks = sorted((score, s.root, n) for s in self.spaces for score, n in s.levels)
        target = total_flops * (1.0 - ratio)

        def upto(t: int) -> dict[int, int]:
            removed = dict(base)
            for _, root, n in chunks[:t]:
                removed[root] = max(removed[root], n)
            return removed

        self.apply(base)
        if ratio <= 0 or self.flops() <= target:
            return
        lo, hi = 0, len(chunks)
        self.apply(upto(hi))
        if self.flops() > target:
            log.info(
                "prune_channels: only %.1f%% of the FLOPs can go (asked for %.1f%%)",
                100 * (1 - self.flops() / total_flops),
                100 * ratio,
            )
            return
        while lo < hi:
            mid = (lo + hi) // 2
            self.apply(upto(mid))
            if self.flops() <= target:
                hi = mid
            else:
                lo = mid + 1
        self.apply(upto(lo))


# ---- calibration ---------------------------------------------------------------------------


def _runs(chan: Chan) -> int:
    """How many consecutive positions each channel of ``chan`` spans (flatten → dense: H*W)."""
    change = (np.diff(chan.space) != 0) | (np.diff(chan.index) != 0)
    bounds = np.concatenate([[0], np.flatnonzero(change) + 1, [len(chan)]])
    lengths = np.diff(bounds)
    return int(lengths[0]) if np.all(lengths == lengths[0]) else 1


def _channel_rows(x: np.ndarray, layer: Layer, s: int) -> np.ndarray:
    """Activations of ``layer``'s input as rows of channel vectors."""
    if layer.kind == "matmul":
        rows = x.reshape(-1, x.shape[-1] // s, s)
        return rows.transpose(0, 2, 1).reshape(-1, x.shape[-1] // s)
    return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])


class _Moments:
    def __init__(self, channels: int):
        self.sum = np.zeros(channels)
        self.outer = np.zeros((channels, channels))
        self.count = 0

    def add(self, rows: np.ndarray) -> None:
        rows64 = rows.astype(np.float64)
        self.sum += rows64.sum(axis=0)
        self.outer += rows64.T @ rows64
        self.count += len(rows64)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.sum / self.count
        return mean, self.outer / self.count - np.outer(mean, mean)


def _calibration_samples(func: relax.Function, calibration) -> list[list[np.ndarray]]:
    params = list(func.params)
    if isinstance(calibration, Mapping):
        by_name = {p.name: p for p in params}
        missing = [p.name for p in params if p.name not in calibration]
        if missing:
            raise ValueError(
                f"calibration data lacks input(s) {', '.join(missing)}; "
                f"it has {', '.join(map(str, calibration))}"
            )
        arrays = [np.asarray(calibration[p.name]) for p in by_name.values()]
    else:
        arrays = [np.asarray(a) for a in calibration]
        if len(arrays) != len(params):
            raise ValueError(f"calibration gives {len(arrays)} arrays for {len(params)} inputs")
    per_input = []
    for p, a in zip(params, arrays, strict=True):
        shape = static_shape(p)
        if shape is None:
            raise ValueError(f"input {p.name} has a dynamic shape")
        if a.shape[1:] == shape:
            samples = [a[i] for i in range(a.shape[0])]
        elif shape and shape[0] == 1 and a.shape[1:] == shape[1:]:
            samples = [a[i : i + 1] for i in range(a.shape[0])]
        elif a.shape == shape:
            samples = [a]
        else:
            raise ValueError(
                f"calibration array for {p.name} has shape {a.shape}; "
                f"expected [num_samples, {', '.join(map(str, shape))}]"
            )
        dtype = str(p.ty.dtype)
        per_input.append([np.ascontiguousarray(x, dtype=dtype) for x in samples])
    counts = {len(s) for s in per_input}
    if len(counts) != 1:
        raise ValueError("calibration arrays have different numbers of samples")
    return [list(sample) for sample in zip(*per_input, strict=True)]


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
