"""Quantization parameters and their arithmetic: per-tensor activation scales and zero points from
a calibrated range (u8 or s8), symmetric per-channel weight scales, numpy reference
quantize/dequantize, and the Relax ops that emit them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

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


def weight_params(w: np.ndarray, axis: int = 0, qmax: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric int8 weights: ``(scale[w.shape[axis]], q)`` with
    ``scale = max|w| / qmax``, ``q = clip(round(w / scale), -qmax, qmax)``; an all-zero channel
    gets scale 1.

    ``qmax`` is 127, or 64 for 7-bit weights (the AVX2 ``vpmaddubsw`` kernels, exact when
    ``|q| <= 64``; ONNX Runtime's ``reduce_range`` range, so its 7-bit weights come back as
    their own codes)."""
    if not 1 <= qmax <= 127:
        raise ValueError(f"qmax must be in [1, 127], not {qmax}")
    w = np.asarray(w, np.float32)
    others = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w), axis=others) if others else np.abs(w)
    scale = np.where(amax > 0, amax / np.float32(qmax), np.float32(1.0)).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
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




