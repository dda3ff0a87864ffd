"""Calibration: activation ranges for ``quantize_int8``, from data run through the float model.

Data (``--calibration DATA``): an ``.npz`` keyed by ONNX input name whose arrays are
``[num_samples, *input_shape]``, or a folder of such files (read in name order and joined along
the sample axis), or a mapping of the same. ``"random"`` (asked for explicitly) draws seeded
uniform ``[0, 1)`` inputs: it makes quantization *run* (for speed measurements), not accurate.

The float model, with the tensors ``quantize_int8`` wants to observe as extra outputs (its
``probe`` module), is compiled with tvmforge's pipeline for this machine and run on every
sample. Each tensor's range is then, by ``method``:

- ``minmax``: the smallest and largest value seen.
- ``percentile``: the ``percentile``-th percentile ``T`` of ``|x|`` over all samples (from a
  2048-bin histogram of ``|x|`` on ``[0, max|x|]``); the range is ``[max(min, -T), min(max, T)]``.
- ``entropy``: TensorRT's KL calibration: the threshold ``T`` on the same histogram whose
  clipped, quantized distribution (128 levels, or 255 for a non-negative tensor stored as
  ``uint8``) has the smallest KL divergence from the clipped reference distribution; the range is
  clipped to ``±T`` as for ``percentile``.

Histogram methods run the samples twice (the first pass finds ``max|x|``).

Per-channel ranges (``quantize_int8`` asks for them for depthwise convs' inputs): the probe's
last outputs are each sample's per-channel minima and maxima, ``[2, C]``; the range of channel
``c`` is the smallest minimum and largest maximum over the samples, whatever the method.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tvmforge.errors import InputError
from tvmforge.runtime.tensors import TensorInfo

__all__ = [
    "METHODS",
    "Calibrator",
    "entropy_threshold",
    "host_runner",
    "load_samples",
    "onnx_layer_names",
    "percentile_threshold",
    "quantize_pass",
]

METHODS = ("minmax", "percentile", "entropy")
RANDOM = "random"
HIST_BINS = 2048
RANDOM_SAMPLES = 8

Sample = list[np.ndarray]
# compile(mod) -> run(list of input arrays) -> list of output arrays
Runner = Callable[[Any], Callable[[Sequence[np.ndarray]], list[np.ndarray]]]


# --------------------------------------------------------------------------------------------
# Data


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as err:
        raise InputError(f"calibration data {path}: cannot read it as .npz ({err})") from None


def _read(data: str | Path) -> dict[str, np.ndarray]:
    path = Path(data)
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise InputError(f"calibration data {path}: the folder holds no .npz file")
        parts = [_read_npz(f) for f in files]
        keys = set(parts[0])
        for f, p in zip(files[1:], parts[1:], strict=True):
            if set(p) != keys:
                raise InputError(f"calibration data {f}: its keys {sorted(p)} differ from "
                                 f"{files[0].name}'s {sorted(keys)}")
        return {k: np.concatenate([p[k] for p in parts], axis=0) for k in sorted(keys)}
    if not path.exists():
        raise InputError(f"calibration data {path}: no such file or folder")
    return _read_npz(path)


def load_samples(
    data: str | Path | Mapping[str, Any],
    inputs: Sequence[TensorInfo],
    *,
    random_samples: int = RANDOM_SAMPLES,
    seed: int = 0,
) -> list[Sample]:
    """Calibration samples: one list of input arrays (in ``inputs`` order) per sample.

    Parameters
    ----------
    data:
        ``"random"``, an ``.npz`` path, a folder of ``.npz`` files, or ``{input name: array}``;
        arrays are ``[num_samples, *input_shape]`` (for an input whose first dimension is 1,
        ``[num_samples, *input_shape[1:]]`` is accepted too).
    inputs:
        The model's inputs with static shapes.
    random_samples, seed:
        How many seeded random samples ``"random"`` draws.

    Raises
    ------
    InputError
        For data that cannot be read or does not fit the inputs; the message names the input.
    """
    if isinstance(data, str) and data == RANDOM:
        rng = np.random.default_rng(seed)
        return [[_random(info, rng) for info in inputs] for _ in range(random_samples)]
    arrays = _read(data) if isinstance(data, str | Path) else dict(data)
    source = f"calibration data {data}" if isinstance(data, str | Path) else "calibration data"
    missing = [i.name for i in inputs if i.name not in arrays]
    if missing:
        raise InputError(
            f"{source} has no array for input(s) {', '.join(missing)} "
            f"(it has {', '.join(sorted(arrays)) or 'none'})",
            hint="key the arrays by ONNX input name, shape [num_samples, *input_shape]",
        )
    per_input = []
    for info in inputs:
        a = np.asarray(arrays[info.name])
        shape = tuple(int(d) for d in info.shape)
        if a.shape[1:] == shape:
            samples = [a[i] for i in range(a.shape[0])]
        elif shape and shape[0] == 1 and a.shape[1:] == shape[1:]:
            samples = [a[i:i + 1] for i in range(a.shape[0])]
        else:
            raise InputError(
                f"{source}: the array for input {info.name} has shape {list(a.shape)}; "
                f"expected [num_samples, {', '.join(map(str, shape))}]")
        per_input.append([np.ascontiguousarray(s, dtype=info.dtype) for s in samples])
    counts = {len(s) for s in per_input}
    if len(counts) != 1:
        raise InputError(f"{source}: the inputs have different numbers of samples "
                         f"({', '.join(str(len(s)) for s in per_input)})")
    if counts == {0}:
        raise InputError(f"{source}: no samples")
    return [list(sample) for sample in zip(*per_input, strict=True)]


def _random(info: TensorInfo, rng: np.random.Generator) -> np.ndarray:
    shape = tuple(int(d) for d in info.shape)
    dtype = np.dtype(info.dtype)
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    return rng.integers(0, 2, shape).astype(dtype)


# --------------------------------------------------------------------------------------------
# Thresholds from a histogram of |x| on [0, amax]


def percentile_threshold(hist: np.ndarray, amax: float, percentile: float) -> float:
    """The value below which ``percentile`` % of the histogram's mass lies."""
    total = hist.sum()
    if total == 0 or amax == 0:
        return float(amax)
    cdf = np.cumsum(hist) / total
    i = int(np.searchsorted(cdf, percentile / 100.0))
    return float(min(i + 1, len(hist)) * amax / len(hist))


def _smooth(p: np.ndarray, eps: float = 1e-4) -> np.ndarray | None:
    zero = p == 0
    nonzero = p.size - int(zero.sum())
    if nonzero == 0:
        return None
    return p + eps * zero - (eps * zero.sum() / nonzero) * ~zero


def entropy_threshold(hist: np.ndarray, amax: float, levels: int = 128,
                      stride: int | None = None) -> float:
    """TensorRT's KL-divergence threshold for a histogram of ``|x|`` on ``[0, amax]``.

    For each candidate ``i`` (bins kept), the reference ``P`` is ``hist[:i]`` with the mass
    beyond added to its last bin; ``Q`` is ``hist[:i]`` merged into ``levels`` bins and spread
    back evenly over each merged bin's non-empty bins. The ``i`` with the smallest
    ``KL(P || Q)`` gives ``T = i * amax / bins``.
    """
    hist = np.asarray(hist, np.float64)
    bins = len(hist)
    if amax == 0 or hist.sum() == 0 or bins <= levels:
        return float(amax)
    stride = stride or max(1, (bins - levels) // 240)
    best, best_i = math.inf, bins
    tail = np.cumsum(hist[::-1])[::-1]  # tail[i] = hist[i:].sum()
    for i in range(levels, bins + 1, stride):
        ref = hist[:i].copy()
        if i < bins:
            ref[-1] += tail[i]
        chunk = (np.arange(i) * levels) // i
        nonzero = hist[:i] > 0
        sums = np.bincount(chunk, weights=hist[:i], minlength=levels)
        counts = np.bincount(chunk, weights=nonzero, minlength=levels)
        q = np.where(nonzero, sums[chunk] / np.maximum(counts[chunk], 1), 0.0)
        p_s = _smooth(ref / ref.sum())
        q_s = _smooth(q / q.sum()) if q.sum() > 0 else None
        if p_s is None or q_s is None:
            continue
        mask = p_s > 0
        kl = float(np.sum(p_s[mask] * np.log(p_s[mask] / np.maximum(q_s[mask], 1e-30))))
        if kl < best:
            best, best_i = kl, i
    return float(best_i * amax / bins)


# --------------------------------------------------------------------------------------------
# Running the probe


def host_runner(threads: int | None = None) -> Runner:
    """Compile a module for this machine with tvmforge's (float) pipeline; a function running
    it on a list of input arrays that returns the outputs as numpy arrays."""

    def compile_for_host(mod):
        from tvmforge.driver.pipeline import tvmforge_pipeline
        from tvmforge.passes.probe import build_runner
        from tvmforge.runtime.executor import set_threads
        from tvmforge.targets import host_target

        host = host_target(threads=threads).tvm_target()
        run = build_runner(mod, host, tvmforge_pipeline(target=host))
        set_threads(threads)
        return run

    return compile_for_host


class Calibrator:
    """Ranges of a probe module's outputs over calibration samples (``quantize_int8``'s
    ``calibrator``).

    Parameters
    ----------
    samples:
        From :func:`load_samples`.
    method:
        ``minmax``, ``percentile`` or ``entropy`` (see the module docstring).
    percentile:
        For ``percentile``: the percentile of ``|x|`` kept [default 99.99].
    runner:
        ``runner(mod)(arrays) -> outputs`` [default: :func:`host_runner`].
    activation:
        ``uint8`` or ``int8``: how the ranges will be used (``entropy``'s level count).
    progress:
        Show a progress bar on stderr; ``None``: only when stderr is a terminal.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        method: str = "minmax",
        *,
        percentile: float = 99.99,
        runner: Runner | None = None,
        activation: str = "uint8",
        bins: int = HIST_BINS,
        progress: bool | None = None,
    ):
        if method not in METHODS:
            raise InputError(f"calibration method {method!r}: use one of {', '.join(METHODS)}")
        if not 0.0 < percentile <= 100.0:
            raise InputError(f"percentile {percentile}: must be in (0, 100]")
        if not samples:
            raise InputError("calibration needs at least one sample")
        self.samples = list(samples)
        self.method, self.percentile, self.bins = method, float(percentile), int(bins)
        self.runner = runner or host_runner()
        self.activation = activation
        self.progress = progress
        self.ranges: list[tuple[float, float]] = []

    def _bar(self, desc: str):
        from tqdm import tqdm

        show = sys.stderr.isatty() if self.progress is None else self.progress
        return tqdm(self.samples, desc=desc, unit="sample", disable=not show, leave=False)

    def sums(self, probe) -> list[float]:
        """Each output of ``probe`` summed over all samples (``quantize_int8``'s sensitivity)."""
        run = self.runner(probe)
        totals: list[float] | None = None
        for sample in self._bar("measuring layer errors"):
            values = [float(np.sum(o, dtype=np.float64)) for o in run(sample)]
            totals = values if totals is None else [
                a + b for a, b in zip(totals, values, strict=True)]
        return totals or []

    supports_channels = True  # quantize_int8 may ask for per-channel ranges

    def __call__(self, probe, channels: int = 0) -> list[tuple[Any, Any]]:
        """One ``(lo, hi)`` per output of ``probe``. The last ``channels`` outputs are
        per-channel statistics ``[2, C]`` (each sample's minima, maxima): their ranges are
        arrays, the elementwise min of the minima and max of the maxima over all samples
        (min/max whatever ``method``)."""
        run = self.runner(probe)
        lo: list[Any] | None = None
        hi: list[Any] | None = None
        for sample in self._bar("calibrating"):
            outs = run(sample)
            plain, stats = outs[:len(outs) - channels], outs[len(outs) - channels:]
            mins = [float(np.min(o)) if o.size else 0.0 for o in plain] + [o[0] for o in stats]
            maxs = [float(np.max(o)) if o.size else 0.0 for o in plain] + [o[1] for o in stats]
            lo = mins if lo is None else [np.minimum(a, b) for a, b in zip(lo, mins, strict=True)]
            hi = maxs if hi is None else [np.maximum(a, b) for a, b in zip(hi, maxs, strict=True)]
        assert lo is not None and hi is not None
        lo = [float(a) if np.ndim(a) == 0 else a for a in lo]
        hi = [float(b) if np.ndim(b) == 0 else b for b in hi]
        n = len(lo) - channels
        if self.method == "minmax":
            self.ranges = list(zip(lo, hi, strict=True))
            return self.ranges
        amax = [max(-a, b) for a, b in zip(lo[:n], hi[:n], strict=True)]
        hists = [np.zeros(self.bins, np.int64) for _ in amax]
        for sample in self._bar(f"calibrating ({self.method})"):
            for h, m, o in zip(hists, amax, run(sample)[:n], strict=True):
                if m > 0:
                    h += np.histogram(np.abs(o), bins=self.bins, range=(0.0, m))[0]
        ranges = []
        for a, b, m, h in zip(lo[:n], hi[:n], amax, hists, strict=True):
            if self.method == "percentile":
                t = percentile_threshold(h, m, self.percentile)
            else:
                levels = 255 if a >= 0 and self.activation == "uint8" else 128
                t = entropy_threshold(h, m, levels)
            ranges.append((max(a, -t), min(b, t)))
        ranges += list(zip(lo[n:], hi[n:], strict=True))
        self.ranges = ranges
        return ranges


# --------------------------------------------------------------------------------------------
# Set-up for build_model(quantize=...)


QUANTIZE_MODES = ("int8", "int4")
INT4_GROUP_SIZES = (16, 32, 64, 128)
# ``skip_layers=["auto"]``: leave float the layers whose own relative error exceeds this
AUTO_SENSITIVITY = 0.05


PRECISIONS = ("auto", "fp32", "int8")


def _widest_weight_code(proto) -> int:
    """The largest ``|q|`` of the int8 initializers a ``DequantizeLinear`` reads (weights)."""
    import onnx

    inits = {t.name: t for t in proto.graph.initializer}
    widest = 0
    for node in proto.graph.node:
        t = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if t is not None and t.data_type == onnx.TensorProto.INT8:
            q = onnx.numpy_helper.to_array(t)
            if q.size:
                widest = max(widest, int(np.abs(q.astype(np.int16)).max()))
    return widest


def resolve_precision(model, inputs: Sequence[TensorInfo], tvm_target, quantize: str | None,
                      precision: str = "auto") -> tuple[str | None, dict[str, Any]]:
    """What a model's kernels compute in: the ``quantize`` mode to run and why.

    A *pre-quantized* model (QDQ: ``QuantizeLinear``/``DequantizeLinear`` around its layers, as
    ONNX Runtime's ``quantize_static`` writes it) is an int8 model, and ``precision="auto"``
    builds it as one where that pays: on a target with int8 dot-product kernels (AVX-512 VNNI,
    AMX, ARM ``sdot``) its layers become integer kernels with the model's own scales and zero
    points (``quantize="int8"`` without calibration data). Where the CPU has no such
    instruction (AVX2) the integer kernels run several times slower than float ones, so
    ``auto`` keeps float kernels that round at the model's quantization points, the same
    numbers (``passes/graph/fake_quant.py``); so it does for an input shape left dynamic (the
    int8 kernels are built for fixed shapes). ``precision="fp32"`` forces those float kernels
    (for debugging a quantized model), ``"int8"`` forces integer kernels. A float model is
    quantized only by ``quantize="int8"``; ``precision`` changes nothing for it.

    Models in the QOperator format (``QLinearConv``, ``QLinearMatMul``, ...) are integer
    arithmetic whatever ``precision`` says. Where ``auto`` would give a QDQ model integer
    kernels (and with ``int8``), their convs, matmuls and adds are imported in the QDQ form
    (``converters.quantized.as_qdq``) and become the same int8 kernels; elsewhere (and with
    ``fp32``) every op is computed exactly in int32, as ONNX Runtime's reference kernels do
    (note ``kernels: "int32"``).

    Returns ``(quantize, note)``: the mode for :func:`quantize_pass` (``None``: none) and what
    the manifest and the compile line say (``model``, ``kernels``, ``reason``).

    Raises
    ------
    InputError
        For an unknown precision, or one that contradicts ``quantize``.
    """
    from tvmforge.passes.schedule.intrinsics import int8_family

    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision}: use one of {', '.join(PRECISIONS)}")
    ops = {n.op_type for n in model.proto.graph.node}
    # a QOperator model quantizes its input and dequantizes its output too: its QLinear ops
    # tell it from a QDQ one
    qop = bool(ops & {"QLinearConv", "QLinearMatMul", "QGemm"})
    qdq = "QuantizeLinear" in ops and "DequantizeLinear" in ops and not qop
    kind = "qdq" if qdq else "qoperator" if qop else "float"
    if quantize == "int8" and precision == "fp32":
        raise InputError(f"{model.path}: --quantize {quantize} and --precision fp32 contradict "
                         "each other", hint="drop one of them")
    if quantize is not None:
        return quantize, {"model": kind, "precision": precision, "kernels": quantize,
                          "reason": f"--quantize {quantize}"}
    family = int8_family(tvm_target)
    dynamic = next((i for i in inputs if not i.static), None)
    if qop and not qdq:
        if precision == "int8" or (precision == "auto" and family is not None
                                   and dynamic is None):
            return "int8", {"model": kind, "precision": precision, "kernels": "int8",
                            "reason": "a QOperator model: its convs and matmuls as int8 "
                                      f"kernels ({family or 'int32'}) with its own scales"}
        why = ("--precision fp32" if precision == "fp32" else
               "no int8 dot-product instruction on this CPU" if family is None else
               f"input {dynamic.name!r} keeps a dynamic dimension")
        return None, {"model": kind, "precision": precision, "kernels": "int32",
                      "reason": f"{why}: every QOperator op computed exactly in int32"}
    if precision == "int8" and not qdq:
        raise InputError(
            f"{model.path}: --precision int8 builds a pre-quantized (QDQ) model's integer "
            "kernels, and this model has no QuantizeLinear/DequantizeLinear pairs",
            hint="quantize a float model with --quantize int8 --calibration DATA")
    if not qdq:
        return None, {"model": kind, "precision": precision, "kernels": "fp32", "reason": ""}
    if precision == "int8":
        return "int8", {"model": kind, "precision": precision, "kernels": "int8",
                        "reason": "--precision int8"}
    if precision == "fp32":
        reason = "--precision fp32: float kernels that round at the model's Q/DQ points"
    elif family is None:
        reason = ("this CPU has no int8 dot-product instruction (AVX-512 VNNI, AMX, ARM sdot): "
                  "float kernels that round at the model's Q/DQ points run faster than integer "
                  "ones here (--precision int8 forces those)")
    elif dynamic is not None:
        reason = (f"input {dynamic.name!r} keeps a dynamic dimension and the int8 kernels need "
                  "fixed shapes: float kernels that round at the model's Q/DQ points "
                  "(fix it with --input-shape for integer kernels)")
    else:
        reason = f"a QDQ model, built with its own scales on {family} kernels"
        if family == "avx2" and _widest_weight_code(model.proto) > 64:
            reason += (" (its 8-bit weights rounded to 7 bits, which AVX2's vpmaddubsw adds "
                       "without saturating; --precision fp32 keeps the model's own numbers)")
        return "int8", {"model": kind, "precision": precision, "kernels": "int8",
                        "reason": reason}
    return None, {"model": kind, "precision": precision, "kernels": "fp32", "reason": reason}


def _int4_pass(model, group_size: int, asymmetric: bool, scale_search: bool,
               skip_layers: Sequence[str]):
    from tvmforge.passes.quantize.int4 import QuantizeInt4

    if group_size not in INT4_GROUP_SIZES:
        raise InputError(f"--group-size {group_size}: use one of "
                         f"{', '.join(map(str, INT4_GROUP_SIZES))}")
    if any(e == "auto" or e.startswith("auto:") for e in skip_layers):
        raise InputError("--skip-layers auto measures int8 layers; with --quantize int4 name the "
                         "layers to keep float")
    names = list(skip_layers)
    qpass = QuantizeInt4(group_size=group_size, symmetric=not asymmetric, skip=names,
                         search=scale_search, layer_names=onnx_layer_names(model.proto))
    settings = {"mode": "int4", "group_size": group_size,
                "scheme": "asymmetric" if asymmetric else "symmetric",
                "scale_search": scale_search, "skip_layers": names}
    return qpass, settings


def onnx_layer_names(proto) -> dict[str, str]:
    """``weight_key(weight) -> ONNX node name`` for Conv/Gemm/MatMul initializer weights (and
    their transposes), so reports and ``skip_layers`` use the ONNX names. A conv whose weight a
    BatchNorm was folded into no longer matches and keeps its ``conv2d_<i>`` name."""
    import onnx

    from tvmforge.passes.prune.keys import weight_key

    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    names: dict[str, str] = {}
    for node in proto.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            for w in (weights.get(n) for n in node.input[:2]):
                if w is not None and w.dtype == np.float32:
                    label = node.name or node.output[0]
                    names[weight_key(w)] = label
                    if w.ndim == 2:
                        names[weight_key(np.ascontiguousarray(w.T))] = label
    return names


def quantize_pass(
    model,
    inputs: Sequence[TensorInfo],
    mode: str,
    calibration: str | Path | Mapping[str, Any] | None,
    method: str = "minmax",
    skip_layers: Sequence[str] = (),
    threads: int | None = None,
    activation: str = "uint8",
    group_size: int = 32,
    asymmetric: bool = False,
    scale_search: bool = False,
    activation_scales: str = "static",
):
    """``quantize_int8`` (or ``quantize_int4``) set up for a model: its data, calibrator and
    ONNX layer names.

    ``mode="int4"``: 4-bit weight-only matmuls (``passes/quantize/int4.py``), groups of
    ``group_size`` along K, symmetric unless ``asymmetric``; ``scale_search`` tries a few
    smaller scales per group and keeps the one with the least weight error. It needs no
    calibration data, and keeps dynamic shapes.

    ``activation_scales="dynamic"`` (with ``mode="int8"``): the matmuls with constant weights
    quantize their input with its own range at run time (``passes/quantize/dynamic_int8.py``,
    what transformers need); no calibration data, convolutions stay float.

    ``skip_layers`` holds layer names, and may hold ``"auto"`` or ``"auto:ERROR"``: measure
    each layer's own relative error on the calibration data and leave float those above
    ``ERROR`` (default :data:`AUTO_SENSITIVITY`). Returns the pass and the settings the
    manifest records.

    A model with ``QuantizeLinear`` nodes (QDQ) may come without data: the scales of its Q/DQ
    pairs are used, and building fails if a layer's input has none.

    Raises
    ------
    InputError
        For an unknown mode or method, missing or unusable calibration data.
    """
    from tvmforge.passes.quantize.quantize_int8 import quantize_int8

    if mode not in QUANTIZE_MODES:
        raise InputError(f"--quantize {mode}: use one of {', '.join(QUANTIZE_MODES)}")
    if method not in METHODS:
        raise InputError(f"--calibration-method {method}: use one of {', '.join(METHODS)}")
    if mode == "int4":
        return _int4_pass(model, group_size, asymmetric, scale_search, skip_layers)
    if activation_scales not in ("static", "dynamic"):
        raise InputError(f"--activation-scales {activation_scales}: use static or dynamic")
    if activation_scales == "dynamic":
        from tvmforge.passes.quantize.dynamic_int8 import dynamic_int8

        if any(e == "auto" or e.startswith("auto:") for e in skip_layers):
            raise InputError("--skip-layers auto measures calibrated layers; with "
                             "--activation-scales dynamic name the layers (matmul_<i>)")
        return dynamic_int8(tuple(skip_layers)), {
            "mode": "int8", "activation_scales": "dynamic", "skip_layers": list(skip_layers)}
    qdq = any(n.op_type in ("QuantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm")
              for n in model.proto.graph.node)
    if calibration is None and not qdq:
        raise InputError(
            "--quantize int8 needs calibration data to choose activation ranges",
            hint="pass --calibration DATA (.npz keyed by input name, arrays [num_samples, "
                 "*input_shape], or a folder of them); --calibration random quantizes with "
                 "random inputs (for speed measurements only: accuracy is not kept)",
        )
    static = [i for i in inputs if not i.static]
    if static:
        raise InputError(f"--quantize: input {static[0].name} has a dynamic shape "
                         f"{list(static[0].shape)}", hint="fix it with --input-shape")
    sensitivity = None
    names = []
    for entry in skip_layers:
        if entry == "auto" or entry.startswith("auto:"):
            try:
                sensitivity = float(entry[5:]) if entry != "auto" else AUTO_SENSITIVITY
            except ValueError:
                raise InputError(f"skip layer {entry!r}: write auto or auto:ERROR, "
                                 "e.g. auto:0.05") from None
        else:
            names.append(entry)
    calibrator = None  # a QDQ model without data: its Q/DQ pairs give every range it has
    samples: list[Sample] = []
    if calibration is not None:
        samples = load_samples(calibration, inputs)
        calibrator = Calibrator(samples, method, runner=host_runner(threads),
                                activation=activation)
    source = calibration if isinstance(calibration, str) else (
        str(calibration) if isinstance(calibration, Path) else
        "arrays" if calibration is not None else "qdq")
    settings = {
        "mode": mode,
        "activation": activation,
        "calibration": source,
        "calibration_method": method,
        "samples": len(samples),
        "skip_layers": names,
        "sensitivity": sensitivity,
    }
    qpass = quantize_int8(
        calibrator, skip_layers=names, layer_names=onnx_layer_names(model.proto),
        activation=activation, sensitivity=sensitivity,
    )
    return qpass, settings
