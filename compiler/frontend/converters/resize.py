"""Resize, Upsample and the image-geometry ops (CenterCropPad, Col2Im).

``Resize`` (opsets 10, 11, 13, 18, 19) follows the ONNX reference implementation
(``onnx/reference/ops/op_resize.py``) exactly:

- the output size is ``floor(in * scale)`` for ``scales`` or ``sizes`` itself (with
  ``keep_aspect_ratio_policy`` ``not_larger`` / ``not_smaller``: one scale for every listed axis,
  the output ``round_half_up(scale * in)``); ``axes`` lists the axes that ``scales`` / ``sizes``
  / ``roi`` refer to (negative axes count from the end; the others keep their size);
- the coordinate transform uses the *given* scale (``sizes / in`` for ``sizes``), not
  ``out / in``: ``half_pixel``, ``half_pixel_symmetric``, ``pytorch_half_pixel``,
  ``align_corners`` (an output of one pixel samples 0), ``asymmetric``, ``tf_crop_and_resize``
  (``roi``; a coordinate outside the input gives ``extrapolation_value``) and, for opset 11,
  ``tf_half_pixel_for_nn``;
- ``nearest`` with every ``nearest_mode``; ``linear`` and ``cubic`` (``cubic_coeff_a``,
  ``exclude_outside``) on any number of axes (1-D, 2-D, 3-D ... resizes, batch and channel axes
  included when asked); ``antialias=1`` widens the linear / cubic filter by ``1 / scale`` when
  downsampling (and renormalises it);
- integer tensors are interpolated in float and rounded half to even and saturated back, as
  ONNX's ``saturate_cast`` does.

The filter is separable: for every resized axis the taps (input index, weight) of every output
index are computed here at compile time, in float64, by the reference's own formulas, and the
kernel gathers and weighs them (one TE compute for all axes when the taps are few, one per axis
for wide antialias filters). Where TVM's own ``image.resize2d`` computes exactly the same thing
(NCHW, nearest or linear, a scale that equals ``out / in``, and -- for nearest -- every chosen
source index checked against the reference with a margin for float32 rounding) it is used
instead, so the graph passes that know ``resize2d`` (NHWC sinking, NCHWc layout) still see the
common 2x upsamples of detection and segmentation necks.

``Upsample`` (opsets 7, 9, 10) and ``Resize``-10 are ``floor(in * scale)`` resizes with the
``asymmetric`` transform; their ``nearest`` takes ``floor`` of the source coordinate when an
axis is upsampled and ``ceil`` when it is downsampled (what ONNX Runtime does for them);
``linear`` / ``bilinear`` interpolate.

``CenterCropPad`` (18) crops or zero-pads each listed axis around its centre (an odd
difference puts the extra element at the end). ``Col2Im`` (18) sums the columns of an
``im2col`` back into an image of any rank, with ``dilations``, ``pads`` and ``strides``.

A dynamic dimension (a symbolic batch) passes through every op here when it is not resized,
cropped or folded; ``sizes`` given as a shape expression (``Concat(Shape(x)[:2], [H, W])``) may
name ``x``'s own dims for the axes it keeps.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, te, tirx
from tvm.relax.frontend.onnx import onnx_frontend

from tvmforge.errors import CompileError
from tvmforge.frontend.converters import register

_COORD_MODES = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_crop_and_resize",
    "tf_half_pixel_for_nn",
)
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
_MAX_UNROLLED_TAPS = 16


# --------------------------------------------------------------------------------------------
# helpers


def _str(attr: dict, key: str, default: str) -> str:
    v = attr.get(key, default)
    return v.decode("ascii") if isinstance(v, bytes) else str(v)


def _node(attr: dict) -> str:
    return str(attr.get("tvm_custom", {}).get("name", "") or "?")


def _fail(attr: dict, op: str, what: str, hint: str) -> CompileError:
    return CompileError(f"node {_node(attr)} ({op}): {what} is not supported", hint=hint)


def _input(inputs, i: int):
    return inputs[i] if len(inputs) > i else None


def _values(expr, params, attr: dict, op: str, what: str) -> list | None:
    """A shape-fixing input's values (ints, floats, or a symbolic dim), or None if omitted/empty."""
    if expr is None:
        return None
    expr = onnx_frontend.get_constant(expr, params)
    if isinstance(expr, tvm.ir.GenericConst):
        arr = expr.value.numpy().reshape(-1)
        return arr.tolist() if arr.size else None
    if isinstance(expr, relax.ShapeExpr):
        vals = [int(v) if isinstance(v, tirx.IntImm) else v for v in expr.values]
        return vals or None
    raise _fail(
        attr, op, f"a {what} computed at run time", f"freeze the inputs that {what} comes from"
    )


def _dims(x, attr: dict, op: str) -> list:
    ty = x.ty
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        raise _fail(attr, op, "an input of unknown rank or shape", "give the input a fixed rank")
    return [int(d) if isinstance(d, tirx.IntImm) else d for d in ty.shape.values]


def _same_dim(a, b) -> bool:
    if isinstance(a, int) or isinstance(b, int):
        return isinstance(a, int) and isinstance(b, int) and a == b
    return bool(tvm_ffi.structural_equal(a, b))


def _norm_axes(axes, rank: int, attr: dict, op: str) -> list[int]:
    out = [int(a) + rank if int(a) < 0 else int(a) for a in axes]
    if any(not 0 <= a < rank for a in out) or len(set(out)) != len(out):
        raise _fail(attr, op, f"axes {list(axes)} for a rank-{rank} input", "fix the axes")
    return out


# --------------------------------------------------------------------------------------------
# Resize: per-axis taps, computed as the ONNX reference does


def _nearest_coeffs(ratio: float, mode: str) -> np.ndarray:
    if float(ratio).is_integer():
        return np.array([0.0, 1.0])
    if mode == "round_prefer_floor":
        return np.array([ratio <= 0.5, ratio > 0.5], np.float64)
    if mode == "round_prefer_ceil":
        return np.array([ratio < 0.5, ratio >= 0.5], np.float64)
    if mode == "floor":
        return np.array([1.0, 0.0])
    return np.array([0.0, 1.0])  # ceil


def _cubic_coeffs(ratio: float, scale: float, a: float) -> np.ndarray:
    r = ratio
    return np.array(
        [
            ((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
            ((a + 2) * r - (a + 3)) * r * r + 1,
            ((a + 2) * (1 - r) - (a + 3)) * (1 - r) * (1 - r) + 1,
            ((a * ((1 - r) + 1) - 5 * a) * ((1 - r) + 1) + 8 * a) * ((1 - r) + 1) - 4 * a,
        ]
    )


def _cubic_coeffs_antialias(ratio: float, scale: float, a: float) -> np.ndarray:
    scale = min(scale, 1.0)
    i_start = int(np.floor(-2 / scale) + 1)
    x = np.abs(scale * (np.arange(i_start, 2 - i_start) - ratio))
    c = np.where(
        x <= 1,
        (a + 2) * x**3 - (a + 3) * x**2 + 1,
        np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0.0),
    )
    return c / c.sum()


def _linear_coeffs(ratio: float, scale: float) -> np.ndarray:
    return np.array([1 - ratio, ratio])


def _linear_coeffs_antialias(ratio: float, scale: float) -> np.ndarray:
    scale = min(scale, 1.0)
    start = int(np.floor(-1 / scale) + 1)
    footprint = 2 - 2 * start
    c = np.clip(1 - np.abs((np.arange(start, start + footprint) - ratio) * scale), 0, 1)
    return c / c.sum()


def _source_coords(
    coord: str, y: np.ndarray, scale: float, in_len: int, out_len: int, roi: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray | None]:
    """ONNX's output-index -> input-coordinate map (float64), and the extrapolated outputs."""
    out_f = scale * in_len
    extrapolated = None
    if coord == "align_corners":
        x = np.zeros(out_len) if out_f == 1 else y * (in_len - 1) / (out_f - 1)
    elif coord == "asymmetric":
        x = y / scale
    elif coord == "tf_crop_and_resize":
        if out_f == 1:
            x = np.full(out_len, (roi[1] - roi[0]) * (in_len - 1) / 2)
        else:
            x = y * (roi[1] - roi[0]) * (in_len - 1) / (out_f - 1)
        x = x + roi[0] * (in_len - 1)
        extrapolated = (x < 0) | (x > in_len - 1)
    elif coord == "pytorch_half_pixel":
        x = np.full(out_len, -0.5) if out_f == 1 else (y + 0.5) / scale - 0.5
    elif coord == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif coord == "half_pixel_symmetric":
        offset = in_len / 2 * (1 - out_len / out_f)
        x = offset + (y + 0.5) / scale - 0.5
    else:  # tf_half_pixel_for_nn (opset 11)
        x = (y + 0.5) / scale
    return x, extrapolated


class _Taps:
    """One resized axis: ``out[o] = sum_k w[o, k] * in[idx[o, k]]`` (``w`` None: nearest)."""

    def __init__(self, axis, in_len, out_len, idx, w, extrapolated):
        self.axis, self.in_len, self.out_len = axis, in_len, out_len
        self.idx = idx.astype(np.int32)
        self.w = w
        self.extrapolated = (
            extrapolated if extrapolated is not None and extrapolated.any() else None
        )

    @property
    def n(self) -> int:
        return 1 if self.w is None else self.w.shape[1]


def _axis_taps(
    axis: int,
    in_len: int,
    out_len: int,
    scale: float,
    roi: tuple[float, float],
    mode: str,
    coord: str,
    nearest_mode: str,
    cubic_a: float,
    exclude_outside: bool,
    antialias: bool,
) -> _Taps:
    """The reference's ``_interpolate_1d_along_axis`` as (index, weight) tables."""
    y = np.arange(out_len, dtype=np.float64)
    x_ori, extrapolated = _source_coords(coord, y, scale, in_len, out_len, roi)
    if mode == "nearest" and nearest_mode == "simple":
        # Upsample / Resize-10 (ONNX Runtime): floor when upsampling, ceil when downsampling.
        idx = np.ceil(x_ori) if scale < 1 else np.floor(x_ori)
        idx = np.clip(idx, 0, in_len - 1).astype(np.int64)
        return _Taps(axis, in_len, out_len, idx, None, extrapolated)

    x_int = np.floor(x_ori)
    ratios = np.where(x_ori == x_int, 1.0, x_ori - x_int)
    if mode == "nearest":
        coeffs = np.stack([_nearest_coeffs(float(r), nearest_mode) for r in ratios])
    elif mode == "linear":
        fn = _linear_coeffs_antialias if antialias else _linear_coeffs
        coeffs = np.stack([fn(float(r), scale) for r in ratios])
    else:
        fn = _cubic_coeffs_antialias if antialias else _cubic_coeffs
        coeffs = np.stack([fn(float(r), scale, cubic_a) for r in ratios])
    n = coeffs.shape[1]

    # the n indices nearest to x_ori, ties to the smaller one (the reference's _get_neighbor)
    pad = int(np.ceil(n / 2))
    xp = x_ori + pad
    p = np.floor(xp).astype(np.int64)
    frac = xp - p
    if n % 2 == 0:
        offset = np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        base = -((n - 1) // 2)
        offset = np.where(frac <= 0.5, base, base + 1)
    neighbors = (p + offset)[:, None] + np.arange(n)[None, :] - pad

    if exclude_outside:
        coeffs = np.where((neighbors < 0) | (neighbors >= in_len), 0.0, coeffs)
        total = coeffs.sum(axis=-1, keepdims=True)
        coeffs = coeffs / np.where(total == 0, 1.0, total)
    idx = np.clip(neighbors, 0, in_len - 1)
    if mode == "nearest":
        pick = np.argmax(coeffs, axis=1)
        return _Taps(axis, in_len, out_len, idx[np.arange(out_len), pick], None, extrapolated)
    # drop tap columns that weigh nothing anywhere (the antialias filter's zero ends)
    keep = np.any(coeffs != 0, axis=0)
    if keep.any() and not keep.all():
        coeffs, idx = coeffs[:, keep], idx[:, keep]
    return _Taps(axis, in_len, out_len, idx, coeffs, extrapolated)


# --------------------------------------------------------------------------------------------
# Resize: kernels


def _dt(v) -> str:
    """The dtype of a TE / TIR expression or tensor, as a string."""
    d = getattr(v, "dtype", None)
    return str(d if d is not None else v.ty)


def _to_dtype(v, dtype: str):
    """Float ``v`` to ``dtype`` as ONNX's saturate_cast: ints round half to even and clip."""
    if _dt(v) == dtype:
        return v
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(np.dtype(dtype))
        lo = tirx.const(float(info.min), _dt(v))
        hi = tirx.const(float(info.max), _dt(v))
        v = tirx.max(tirx.min(tirx.nearbyint(v), hi), lo)
    return v.astype(dtype)


def _stage(x, tables, plans: list[_Taps], out_dtype: str, extrapolation: float, name: str):
    """TE: resize ``x`` along every axis in ``plans`` at once (taps unrolled, or reduced)."""
    cdtype = "float64" if "float64" in (_dt(x), out_dtype) else "float32"
    nearest = plans[0].w is None
    out_shape = list(x.shape)
    it = iter(tables)
    per_axis = []
    for p in plans:
        out_shape[p.axis] = p.out_len
        idx = next(it)
        w = None if nearest else next(it)
        mask = next(it) if p.extrapolated is not None else None
        per_axis.append((p, idx, w, mask))

    def finish(val, i):
        val = val.astype(out_dtype) if nearest and _dt(val) != out_dtype else val
        val = val if nearest else _to_dtype(val, out_dtype)
        masks = [m[i[p.axis]] for (p, _i, _w, m) in per_axis if m is not None]
        if masks:
            cond = masks[0] != 0
            for m in masks[1:]:
                cond = tirx.Or(cond, m != 0)
            ext = _to_dtype(tirx.const(extrapolation, "float64"), out_dtype)
            val = tirx.Select(cond, ext, val)
        return val

    if math.prod(p.n for p in plans) > _MAX_UNROLLED_TAPS:
        # one wide (antialias) axis: a reduction, then the cast / extrapolation
        assert len(plans) == 1 and not nearest
        p, idx, w, _mask = per_axis[0]
        k = te.reduce_axis((0, p.n), name="k")

        def tap(*i):
            src = list(i)
            src[p.axis] = idx[i[p.axis], k]
            return te.sum(x[tuple(src)].astype(cdtype) * w[i[p.axis], k], axis=k)

        acc = te.compute(out_shape, tap, name=name + "_acc")
        return te.compute(out_shape, lambda *i: finish(acc[i], i), name=name)

    def fcompute(*i):
        val = None
        for combo in itertools.product(*[range(p.n) for p in plans]):
            src = list(i)
            weight = None
            for (p, idx, w, _mask), c in zip(per_axis, combo, strict=True):
                o = i[p.axis]
                src[p.axis] = idx[o] if nearest else idx[o, c]
                if not nearest:
                    weight = w[o, c] if weight is None else weight * w[o, c]
            v = x[tuple(src)]
            term = v if nearest else v.astype(cdtype) * weight
            val = term if val is None else val + term
        return finish(val, i)

    return te.compute(out_shape, fcompute, name=name)


def _emit_taps(bb, x, plans: list[_Taps], extrapolation: float):
    dtype = str(x.ty.dtype)
    nearest = plans[0].w is None
    cdtype = "float64" if dtype == "float64" else "float32"
    if nearest or math.prod(p.n for p in plans) <= _MAX_UNROLLED_TAPS:
        stages = [plans]
    else:
        stages = [[p] for p in plans]
    out = x
    for s, group in enumerate(stages):
        last = s == len(stages) - 1
        out_dtype = dtype if (last or nearest) else cdtype
        args = []
        for p in group:
            args.append(relax.const(p.idx, "int32"))
            if not nearest:
                args.append(relax.const(p.w.astype(cdtype), cdtype))
            if p.extrapolated is not None:
                args.append(relax.const(p.extrapolated.astype(np.int8), "int8"))

        def fn(xt, *tabs, _group=group, _out_dtype=out_dtype):
            return _stage(xt, tabs, _group, _out_dtype, extrapolation, "resize")

        out = bb.emit_te(fn, out, *args, primfunc_name_hint="resize")
    return out


def _tvm_round(v: np.ndarray, method: str) -> np.ndarray:
    if method == "round_prefer_floor":
        return np.ceil(v - 0.5)
    if method == "round_prefer_ceil":
        return np.floor(v + 0.5)
    if method == "floor":
        return np.floor(v + 1e-5)
    return np.ceil(v - 1e-5)


def _tvm_nearest_matches(p: _Taps, coord: str, method: str) -> bool:
    """Does TVM's nearest resize (float32 coordinates) pick exactly the reference's indices?"""
    in_len, out_len = p.in_len, p.out_len
    y = np.arange(out_len, dtype=np.float64)
    if coord == "asymmetric" and method == "floor" and out_len % in_len == 0:
        div = out_len // in_len  # TVM divides integers here (can_convert_multiply_to_intdiv)
        if div <= 1 / (1e-5 * in_len + 1e-5):
            return bool(np.array_equal(y.astype(np.int64) // div, p.idx))
    s = in_len / out_len
    if coord in ("half_pixel", "pytorch_half_pixel"):
        v = (y + 0.5) * s - 0.5 if (out_len > 1 or coord == "half_pixel") else np.zeros(out_len)
    elif coord == "align_corners":
        if out_len == 1:
            return False
        v = (in_len - 1) / (out_len - 1) * y
    elif coord == "asymmetric":
        v = s * y
    elif coord == "tf_half_pixel_for_nn":
        v = (y + 0.5) * s
    else:
        return False
    delta = 1e-6 * np.maximum(1.0, np.abs(v))
    for d in (-delta, delta):
        got = np.clip(_tvm_round(v + d, method), 0, in_len - 1).astype(np.int64)
        if not np.array_equal(got, p.idx):
            return False
    return True


def _fast_resize2d(x, dims, plans, scales, mode, coord, antialias, nearest_method):
    """TVM's ``image.resize2d`` where it computes what ONNX asks for, else None."""
    if len(dims) != 4 or mode not in ("nearest", "linear"):
        return None
    if any(p.axis not in (2, 3) for p in plans) or not all(isinstance(d, int) for d in dims[2:]):
        return None
    if any(p.extrapolated is not None for p in plans):
        return None
    hw = {p.axis: p for p in plans}
    for a in (2, 3):
        if a not in hw:  # an unresized axis still goes through TVM's coordinate map
            hw[a] = _Taps(a, dims[a], dims[a], np.arange(dims[a]), None, None)
            scales[a] = 1.0
        p = hw[a]
        if abs(p.out_len / p.in_len - scales[a]) > 1e-6 * scales[a]:
            return None  # ONNX maps coordinates with the given scale, TVM with out / in
        if antialias and scales[a] < 1:
            return None
    out_hw = [hw[2].out_len, hw[3].out_len]
    tvm_coord = "half_pixel" if coord == "half_pixel_symmetric" else coord
    if mode == "linear":
        if not str(x.ty.dtype).startswith(("float", "bfloat")):
            return None  # TVM truncates to integers, ONNX rounds
        if tvm_coord not in ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel"):
            return None
        if tvm_coord == "align_corners" and min(out_hw) == 1:
            return None
        rounding = ""
    else:
        if nearest_method == "simple":
            methods = {"floor" if scales[a] >= 1 else "ceil" for a in (2, 3)}
            if len(methods) != 1:
                return None
            (rounding,) = methods
        else:
            rounding = nearest_method
        if not all(_tvm_nearest_matches(hw[a], tvm_coord, rounding) for a in (2, 3)):
            return None
    return relax.op.image.resize2d(
        x,
        size=relax.ShapeExpr(out_hw),
        roi=[0.0, 0.0, 0.0, 0.0],
        layout="NCHW",
        method="linear" if mode == "linear" else "nearest_neighbor",
        coordinate_transformation_mode=tvm_coord,
        rounding_method=rounding,
    )


def _resize(
    bb,
    x,
    attr: dict,
    op: str,
    *,
    mode: str,
    coord: str,
    nearest_mode: str,
    cubic_a: float = -0.75,
    exclude_outside: bool = False,
    extrapolation: float = 0.0,
    antialias: bool = False,
    axes: list[int] | None = None,
    policy: str = "stretch",
    roi: list | None = None,
    scales: list | None = None,
    sizes: list | None = None,
):
    dims = _dims(x, attr, op)
    rank = len(dims)
    dtype = str(x.ty.dtype)
    if mode == "bilinear":
        mode = "linear"
    if mode not in ("nearest", "linear", "cubic"):
        raise _fail(attr, op, f"mode {mode!r}", "use nearest, linear or cubic")
    if coord not in _COORD_MODES:
        raise _fail(attr, op, f"coordinate_transformation_mode {coord!r}", "use an ONNX mode")
    if mode == "nearest" and nearest_mode not in (*_NEAREST_MODES, "simple"):
        raise _fail(attr, op, f"nearest_mode {nearest_mode!r}", "use an ONNX nearest_mode")
    if mode == "nearest" and antialias:
        raise _fail(attr, op, "antialias with mode nearest", "use linear or cubic")
    if mode != "nearest" and dtype == "bool":
        raise _fail(attr, op, f"{mode} interpolation of a bool tensor", "use mode nearest")
    if policy not in ("stretch", "not_larger", "not_smaller"):
        raise _fail(attr, op, f"keep_aspect_ratio_policy {policy!r}", "use an ONNX policy")
    axes = list(range(rank)) if axes is None else _norm_axes(axes, rank, attr, op)

    # roi, full rank: starts then ends
    full_roi = [0.0] * rank + [1.0] * rank
    if roi is not None:
        if len(roi) == 2 * len(axes):
            for i, a in enumerate(axes):
                full_roi[a], full_roi[rank + a] = float(roi[i]), float(roi[len(axes) + i])
        elif len(roi) == 2 * (rank - 2) and len(axes) == rank:  # spatial-only, from exporters
            for i, a in enumerate(range(2, rank)):
                full_roi[a], full_roi[rank + a] = float(roi[i]), float(roi[rank - 2 + i])
        else:
            raise _fail(attr, op, f"a roi of {len(roi)} values for {len(axes)} axes", "fix roi")
    elif coord == "tf_crop_and_resize":
        full_roi = None

    scale = [1.0] * rank
    out = list(dims)
    if sizes is not None:
        if len(sizes) != len(axes):
            raise _fail(attr, op, f"{len(sizes)} sizes for {len(axes)} axes", "fix sizes")
        for a, s in zip(axes, sizes, strict=True):
            if not isinstance(s, int) or not isinstance(dims[a], int):
                if _same_dim(s, dims[a]):
                    continue  # the input's own (symbolic) dim: unchanged
                raise _fail(attr, op, f"resizing the dynamic axis {a}", "give it a fixed size")
            scale[a], out[a] = s / dims[a], s
        if policy != "stretch":
            pick = min if policy == "not_larger" else max
            s = pick(scale[a] for a in axes)
            for a in axes:
                if not isinstance(dims[a], int):
                    if s != 1.0:
                        raise _fail(attr, op, f"resizing the dynamic axis {a}", "fix its size")
                    continue
                scale[a], out[a] = s, int(s * dims[a] + 0.5)
    elif scales is not None:
        if len(scales) != len(axes):
            raise _fail(attr, op, f"{len(scales)} scales for {len(axes)} axes", "fix scales")
        for a, s in zip(axes, scales, strict=True):
            s = float(np.float32(s))
            if s <= 0:
                raise _fail(attr, op, f"scale {s}", "scales must be positive")
            if not isinstance(dims[a], int):
                if s != 1.0:
                    raise _fail(attr, op, f"resizing the dynamic axis {a}", "fix its size")
                continue
            scale[a], out[a] = s, int(s * dims[a])
    else:
        raise _fail(attr, op, "a Resize with neither scales nor sizes", "give one of them")

    plans = []
    for a in axes:
        if not isinstance(dims[a], int):
            continue
        trivial_roi = full_roi is None or (
            math.isclose(full_roi[a], 0.0) and math.isclose(full_roi[rank + a], 1.0)
        )
        if math.isclose(scale[a], 1.0) and out[a] == dims[a] and trivial_roi:
            continue
        if out[a] <= 0:
            raise _fail(attr, op, f"an output of size {out[a]} on axis {a}", "fix scales/sizes")
        if full_roi is None:
            raise _fail(attr, op, "tf_crop_and_resize without roi", "give the roi input")
        plans.append(
            _axis_taps(
                a,
                dims[a],
                out[a],
                scale[a],
                (full_roi[a], full_roi[rank + a]),
                mode,
                coord,
                nearest_mode,
                cubic_a,
                exclude_outside,
                antialias,
            )
        )
    if not plans:
        return x
    fast = _fast_resize2d(x, dims, plans, list(scale), mode, coord, antialias, nearest_mode)
    if fast is not None:
        return fast
    return _emit_taps(bb, x, plans, extrapolation)


@register("Resize")
class Resize(onnx_frontend.Resize):
    """ONNX Resize, opsets 10 to 19 (see the module docstring)."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        scales = _values(_input(inputs, 1), params, attr, "Resize", "scales")
        return _resize(
            bb,
            inputs[0],
            attr,
            "Resize",
            mode=_str(attr, "mode", "nearest"),
            coord="asymmetric",
            nearest_mode="simple",
            scales=scales,
        )

    @classmethod
    def _impl_v11(cls, bb, inputs, attr, params):
        roi = _values(_input(inputs, 1), params, attr, "Resize", "roi")
        scales = _values(_input(inputs, 2), params, attr, "Resize", "scales")
        sizes = _values(_input(inputs, 3), params, attr, "Resize", "sizes")
        if scales is not None and sizes is not None:
            raise _fail(attr, "Resize", "both scales and sizes", "give only one of them")
        axes = attr.get("axes")
        return _resize(
            bb,
            inputs[0],
            attr,
            "Resize",
            mode=_str(attr, "mode", "nearest"),
            coord=_str(attr, "coordinate_transformation_mode", "half_pixel"),
            nearest_mode=_str(attr, "nearest_mode", "round_prefer_floor"),
            cubic_a=float(attr.get("cubic_coeff_a", -0.75)),
            exclude_outside=bool(attr.get("exclude_outside", 0)),
            extrapolation=float(attr.get("extrapolation_value", 0.0)),
            antialias=bool(attr.get("antialias", 0)),
            axes=None if axes is None else [int(a) for a in axes],
            policy=_str(attr, "keep_aspect_ratio_policy", "stretch"),
            roi=roi,
            scales=scales,
            sizes=[v if not isinstance(v, float) else int(v) for v in sizes] if sizes else None,
        )

    _impl_v13 = _impl_v11
    _impl_v18 = _impl_v11
    _impl_v19 = _impl_v11


@register("Upsample")
class Upsample(onnx_frontend.Upsample):
    """ONNX Upsample (7: ``scales`` attribute; 9, 10: ``scales`` input): ``floor(in * scale)``,
    asymmetric coordinates, nearest (floor when upsampling) or (bi)linear."""

    @classmethod
    def _impl_v7(cls, bb, inputs, attr, params):
        scales = attr.get("scales")
        if scales is None:
            raise _fail(attr, "Upsample", "an Upsample-7 without scales", "add the attribute")
        return cls._upsample(bb, inputs[0], attr, list(scales))

    @classmethod
    def _impl_v9(cls, bb, inputs, attr, params):
        scales = _values(_input(inputs, 1), params, attr, "Upsample", "scales")
        if scales is None:
            raise _fail(attr, "Upsample", "an Upsample without scales", "give the scales input")
        return cls._upsample(bb, inputs[0], attr, scales)

    @classmethod
    def _upsample(cls, bb, x, attr, scales):
        return _resize(
            bb,
            x,
            attr,
            "Upsample",
            mode=_str(attr, "mode", "nearest"),
            coord="asymmetric",
            nearest_mode="simple",
            scales=scales,
        )


# --------------------------------------------------------------------------------------------
# CenterCropPad, Col2Im


@register("CenterCropPad")
class CenterCropPad(onnx_frontend.OnnxOpConverter):
    """ONNX CenterCropPad (18): each listed axis (``axes``, default all) is centre-cropped or
    zero-padded to ``shape``; an odd difference leaves the extra element at the end."""

    @classmethod
    def _impl_v18(cls, bb, inputs, attr, params):
        x = inputs[0]
        dims = _dims(x, attr, "CenterCropPad")
        rank = len(dims)
        shape = _values(_input(inputs, 1), params, attr, "CenterCropPad", "shape") or []
        axes = attr.get("axes")
        axes = list(range(rank)) if axes is None else [int(a) for a in axes]
        axes = _norm_axes(axes, rank, attr, "CenterCropPad")
        if len(shape) != len(axes):
            raise _fail(
                attr,
                "CenterCropPad",
                f"{len(shape)} sizes for {len(axes)} axes",
                "give one size per axis",
            )
        out = list(dims)
        shift = [0] * rank  # output index i reads input index i + shift (crop > 0, pad < 0)
        padded = set()
        for a, s in zip(axes, shape, strict=True):
            if not isinstance(s, int) or not isinstance(dims[a], int):
                if _same_dim(s, dims[a]):
                    continue
                raise _fail(
                    attr, "CenterCropPad", f"cropping the dynamic axis {a}", "give it a fixed size"
                )
            out[a] = int(s)
            shift[a] = (dims[a] - int(s)) // 2 if dims[a] >= s else -((int(s) - dims[a]) // 2)
            if s > dims[a]:
                padded.add(a)
        if all(isinstance(o, int) and o == d for o, d in zip(out, dims, strict=True) if o is not d):
            return x

        def fn(xt):
            def f(*i):
                src, conds = [], []
                for a in range(rank):
                    j = i[a] + shift[a]
                    src.append(j)
                    if a in padded:
                        conds.append(tirx.And(j >= 0, j < dims[a]))
                if not conds:
                    return xt[tuple(src)]
                cond = conds[0]
                for c in conds[1:]:
                    cond = tirx.And(cond, c)
                return tirx.if_then_else(cond, xt[tuple(src)], tirx.const(0, _dt(xt)))

            return te.compute(out, f, name="center_crop_pad")

        return bb.emit_te(fn, x, primfunc_name_hint="center_crop_pad")


@register("Col2Im")
class Col2Im(onnx_frontend.OnnxOpConverter):
    """ONNX Col2Im (18): ``input[N, C * prod(block), L]`` -> ``[N, C, *image_shape]``, each
    column's block values added at ``block_pos * strides - pads_begin + k * dilations`` (any
    number of spatial dims; positions outside the image are dropped)."""

    @classmethod
    def _impl_v18(cls, bb, inputs, attr, params):
        x = inputs[0]
        op = "Col2Im"
        dims = _dims(x, attr, op)
        image = _values(_input(inputs, 1), params, attr, op, "image_shape")
        block = _values(_input(inputs, 2), params, attr, op, "block_shape")
        if not image or not block or len(image) != len(block) or len(dims) != 3:
            raise _fail(
                attr,
                op,
                "these image_shape / block_shape / input ranks",
                "give a [N, C*K, L] input and one image and block size per dim",
            )
        image, block = [int(v) for v in image], [int(v) for v in block]
        nd = len(image)
        dil = [int(v) for v in attr.get("dilations", [1] * nd)]
        strides = [int(v) for v in attr.get("strides", [1] * nd)]
        pads = [int(v) for v in attr.get("pads", [0] * (2 * nd))]
        if len(dil) != nd or len(strides) != nd or len(pads) != 2 * nd:
            raise _fail(
                attr,
                op,
                "dilations/strides/pads of the wrong length",
                "give one per spatial dim (pads: begins then ends)",
            )
        n_blocks = [
            (image[d] + pads[d] + pads[nd + d] - dil[d] * (block[d] - 1) - 1) // strides[d] + 1
            for d in range(nd)
        ]
        k_total = math.prod(block)
        ck, length = dims[1], dims[2]
        if (
            not isinstance(ck, int)
            or ck % k_total
            or not isinstance(length, int)
            or (length != math.prod(n_blocks))
            or min(n_blocks) < 1
        ):
            raise _fail(
                attr,
                op,
                f"an input of shape {dims} for image {image} and block {block}",
                "the input must be [N, C * prod(block), prod(number of blocks)]",
            )
        channels = ck // k_total
        dtype = str(x.ty.dtype)
        acc = "float32" if dtype in ("float16", "bfloat16") else dtype

        def fn(xt):
            ks = [te.reduce_axis((0, block[d]), name=f"k{d}") for d in range(nd)]

            def f(n, c, *pos):
                conds, blk = [], []
                for d in range(nd):
                    t = pos[d] + pads[d] - ks[d] * dil[d]
                    conds += [t >= 0, tirx.floormod(t, strides[d]) == 0]
                    b = tirx.floordiv(t, strides[d])
                    conds.append(b < n_blocks[d])
                    blk.append(b)
                kidx, lidx = 0, 0
                for d in range(nd):
                    kidx = kidx * block[d] + ks[d]
                    lidx = lidx * n_blocks[d] + blk[d]
                cond = conds[0]
                for cnd in conds[1:]:
                    cond = tirx.And(cond, cnd)
                v = tirx.if_then_else(
                    cond, xt[n, c * k_total + kidx, lidx].astype(acc), tirx.const(0, acc)
                )
                return te.sum(v, axis=ks)

            s = te.compute([dims[0], channels, *image], f, name="col2im")
            if acc == dtype:
                return s
            return te.compute(s.shape, lambda *i: s[i].astype(dtype), name="col2im_cast")

        return bb.emit_te(fn, x, primfunc_name_hint="col2im")
