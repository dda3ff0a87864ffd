"""Winograd convolution ``F(m x m, 3 x 3)`` in the blocked ``NCHW{B}c`` layout.

Why
---
A 3x3 stride-1 conv computes each output from nine taps; Winograd's minimal filtering
algorithm computes an ``m x m`` tile of outputs from an ``(m+2) x (m+2)`` tile of inputs with
``(m+2)^2`` multiplications per channel pair instead of ``9 m^2``: for ``m = 4``, 36 instead
of 144, 4x fewer. ONNX Runtime's CPU convs (MLAS ``NchwcConv``) are direct convolutions, so a
direct conv of ours can at best match them; ResNet-50 spends a third of its time in 3x3
stride-1 convs. oneDNN, NNPACK and TVM's ARM/CUDA TOPI use the same algorithm.

The three kernels
-----------------
With ``alpha = m + 2``, ``E = alpha^2`` points, ``P`` tiles of ``m x m`` outputs per sample
(the plane's ragged edge padded), channels blocked by ``B``; the batch ``N`` is the leading
dim of every buffer, so a dynamic batch's kernels run per sample (``passes/batch_outer.py``):

1. **input transform** (``winograd_input_nchwc``): ``V[n, e, c/B, 0, p, B] =
   (B^T d_p B)[e]`` for the ``alpha x alpha`` input tile ``d_p`` of tile ``p`` (stride ``m``;
   the conv's zero padding and the ragged edge read as zeros);
2. **batched product** (``winograd_product_nchwc``): for each sample and point ``e``,
   ``M[n, e, k/B, 0, p, B] = sum_c V[n, e, c, p] U[e, c, k]`` -- a 1x1 conv over ``P``
   "pixels", written as the blocked 1x1 conv with a weight per point and carrying the
   packed-conv annotation: ``schedule_cpu_default`` fuses sample and point into the conv's
   batch and gives it the register tile of ``conv2d_nchwc_packed`` (vectors of output
   channels x tiles);
3. **output transform** (``winograd_output_nchwc``): ``Y = A^T M_p A``, the ``m x m`` tile
   of outputs (the ragged edge's outputs past the plane are not stored).

Both transforms are written as one sparse sum per point (per output position of a tile):
the matrices' zeros are left out and ``+-1`` costs no multiply; a ``Select`` on the point
picks the sum, and the schedule unrolls the points so the ``Select`` folds. They are marked
out-elementwise-fusable (a conv's pattern kind): the conv's bias, activation and residual
fuse into the output transform as they fuse into a conv, and no transform fuses with its
injective neighbours (a concat, the next conv's input transform).

The weight transform ``U = G g G^T`` runs once in numpy at compile time (float64, then
float32). The transform matrices come from TVM's Cook-Toom construction with the
interpolation points of Barabasz et al. (``tvm.topi.nn.winograd_util``); the error against
the direct conv stays near float32 rounding (``tests/passes/test_winograd.py``).

Where it runs
-------------
``nchwc_layout`` asks ``winograd_tile`` for each 3x3 stride-1 conv on a blocked input and
emits these three kernels instead of ``conv2d_nchwc_packed`` when the cost model below picks
a tile. The transforms carry the block annotation ``tvmforge.winograd`` (the tile size);
``passes/schedule/winograd_transform.py`` is their CPU schedule.
"""

from __future__ import annotations

import functools

import numpy as np
import tvm
from tvm import te, topi

from tvmforge.passes.graph.pack_conv_weights import PACKED_CONV_ATTR

__all__ = [
    "OUT_ELEMWISE_FUSABLE",
    "WINOGRAD_ATTR",
    "transform_matrices",
    "winograd_input_nchwc",
    "winograd_output_nchwc",
    "winograd_product_nchwc",
    "winograd_tile",
    "winograd_weight",
]

# Block annotation on the transforms' blocks: the tile size m.
WINOGRAD_ATTR = "tvmforge.winograd"

# TVM's pattern kind of an op whose elementwise consumers fuse into it (a conv's), given to
# both transforms (see above).
OUT_ELEMWISE_FUSABLE = 4

# Tile sizes tried, and how a candidate is costed: the batched product's multiply-adds, or
# the time to stream its transformed weights (``alpha^2 * C * K`` floats, read once) when
# that is longer, counted as FLOP_PER_WEIGHT_BYTE flops per byte. Measured on this AVX-512
# machine, two threads in ResNet-50: the product of 256 channels at 14x14 with F(4x4) (9.4 MB
# of weights, 75 MFLOP) ran 0.59 ms, memory-bound at 16 GB/s against ~250 GFLOP/s of
# compute: 16 flops per byte. With F(2x2) there (4.2 MB, 103 MFLOP) the model ran 28.7 ->
# 28.1 ms. A candidate must cost at most MAX_COST_RATIO of the direct conv (its 9 C K
# multiply-adds per output pixel) to be worth three kernels and two more passes over memory:
# 512 channels at 7x7 (4 tiles of 4x4, 38 MB of weights) stays direct.
TILES = (4, 2)
FLOP_PER_WEIGHT_BYTE = 16
MAX_COST_RATIO = 0.8


@functools.cache
def transform_matrices(m: int, r: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A, B, G)`` of ``F(m, r)`` in float64: ``Y = A^T [(G g G^T) * (B^T d B)] A``;
    ``A`` is ``alpha x m``, ``B`` ``alpha x alpha``, ``G`` ``alpha x r``."""
    from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points

    a, b, g = _cook_toom_convolution(_interpolation_points(m + r - 2), m, r)
    return np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(g, np.float64)


def winograd_weight(weight: np.ndarray, m: int, block: int) -> np.ndarray:
    """``W[K, C, 3, 3]`` -> ``U[alpha^2, ceil(K/B), C, 1, 1, B]`` (``U[e] = G W G^T``; zero
    filters pad ``K`` to a multiple of ``B``), the weight of ``winograd_product_nchwc``."""
    k, c, kh, _kw = weight.shape
    _a, _b, g = transform_matrices(m, kh)
    alpha = m + kh - 1
    u = np.einsum("ei,kcij,uj->eukc", g, weight.astype(np.float64), g)
    u = u.reshape(alpha * alpha, k, c)
    kb = -(-k // block)
    if kb * block != k:
        u = np.concatenate([u, np.zeros((alpha * alpha, kb * block - k, c))], axis=1)
    u = u.reshape(alpha * alpha, kb, block, c).transpose(0, 1, 3, 2)
    return np.ascontiguousarray(u.reshape(alpha * alpha, kb, c, 1, 1, block).astype(np.float32))


def _tiles(size: int, m: int) -> int:
    return -(-size // m)


def winograd_tile(data_shape, weight_shape, attrs) -> int | None:
    """``m`` when a conv with these shapes (``data_shape[:4]``: ``N, C/B, H, W`` or NCHW;
    ``weight_shape``: OIHW) and ``relax.nn.conv2d`` attrs runs fastest as
    ``F(m x m, 3 x 3)`` by the cost model above, else ``None``. Needs a static plane, a 3x3
    weight, stride 1, dilation 1 and one group; a dynamic batch (``"$n"``) is costed as one
    sample (the kernels run per sample)."""
    if data_shape is None or not all(isinstance(d, int) for d in data_shape[1:]):
        return None
    if tuple(int(v) for v in weight_shape[2:]) != (3, 3) or int(attrs.groups) != 1:
        return None
    if any(int(v) != 1 for v in (*attrs.strides, *attrs.dilation)):
        return None
    k, c = int(weight_shape[0]), int(weight_shape[1])
    n, _c, h, w = data_shape[:4]
    n = n if isinstance(n, int) else 1
    top, left, bottom, right = (int(v) for v in attrs.padding)
    out_h, out_w = h + top + bottom - 2, w + left + right - 2
    best, best_cost = None, MAX_COST_RATIO * 2 * 9 * c * k * n * out_h * out_w
    for m in TILES:
        points = (m + 2) ** 2
        tiles = n * _tiles(out_h, m) * _tiles(out_w, m)
        cost = max(2 * points * c * k * tiles, FLOP_PER_WEIGHT_BYTE * 4 * points * c * k)
        if cost < best_cost:
            best, best_cost = m, cost
    return best


def _sparse_sum(terms):
    """``sum(coef * value)`` over the nonzero coefficients, ``1`` and ``-1`` without a
    multiply (float32 constants)."""
    out = None
    for coef, value in terms:
        if coef == 0:
            continue
        term = value if coef in (1, -1) else value * tvm.tirx.const(float(coef), "float32")
        if out is None:
            out = -term if coef == -1 else term
        else:
            out = out - term if coef == -1 else out + term
    return tvm.tirx.const(0.0, "float32") if out is None else out


def _select(index, exprs):
    """``exprs[index]`` for an index that the schedule unrolls (then the chain folds)."""
    out = exprs[-1]
    for i in range(len(exprs) - 2, -1, -1):
        out = tvm.tirx.Select(index == i, exprs[i], out)
    return out


def winograd_input_nchwc(
    data: te.Tensor, padding: tuple[int, int, int, int], m: int, r: int = 3
) -> te.Tensor:
    """``V[N, alpha^2, C/B, 1, P, B]`` of a blocked input ``[N, C/B, H, W, B]`` for a stride-1
    ``r x r`` conv with ``padding`` (top, left, bottom, right); tile ``p = ty * TW + tx`` of
    sample ``n``, point ``e = e1 * alpha + e2``. The batch ``N`` stays the leading dim of
    every buffer (it may be a dynamic batch's var: ``passes/batch_outer.py`` then runs the
    kernels per sample). Two separable passes, each a sparse sum picked by a ``Select`` on
    the (unrolled) index: rows ``R[e1, b] = sum_a B[a, e1] d[a, b]``, then
    ``V[e1, e2] = sum_b R[e1, b] B[b, e2]``."""
    n = data.shape[0]
    cb, h, w, block = (int(v) for v in data.shape[1:])
    top, left, bottom, right = padding
    oh, ow = h + top + bottom - r + 1, w + left + right - r + 1
    th, tw = _tiles(oh, m), _tiles(ow, m)
    alpha = m + r - 1
    # zero padding: the conv's, then up to whole tiles
    padded = topi.nn.pad(
        data,
        [0, 0, top, left, 0],
        [0, 0, th * m + r - 1 - h - top, tw * m + r - 1 - w - left, 0],
        name="winograd_pad",
    )
    _a, bm, _g = transform_matrices(m, r)

    def rows_body(b, e1, c, p, col, v):
        y, x = p // tw * m, p % tw * m
        return _select(
            e1,
            [
                _sparse_sum((bm[a, i], padded[b, c, y + a, x + col, v]) for a in range(alpha))
                for i in range(alpha)
            ],
        )

    rows = te.compute(
        (n, alpha, cb, th * tw, alpha, block), rows_body, name="winograd_input_rows"
    )

    def body(b, e, c, _z, p, v):
        return _select(
            e % alpha,
            [
                _sparse_sum(
                    (bm[col, j], rows[b, e // alpha, c, p, col, v]) for col in range(alpha)
                )
                for j in range(alpha)
            ],
        )

    return te.compute(
        (n, alpha * alpha, cb, 1, th * tw, block),
        body,
        name="winograd_input",
        attrs={WINOGRAD_ATTR: m},
    )


def winograd_product_nchwc(data: te.Tensor, weight: te.Tensor) -> te.Tensor:
    """``M[n, e, k/B, 1, p, B] = sum_c V[n, e, c/B, 0, p, c%B] * U[e, k/B, c, 0, 0, B]``:
    per sample, the blocked 1x1 conv (``conv2d_nchwc_packed``'s loop nest) with a weight per
    point ``e``; its schedule fuses the sample and the point into the conv's batch."""
    n, e = data.shape[:2]
    bi = int(data.shape[-1])
    _e, kb, c, _kh, _kw, block = (int(v) for v in weight.shape)
    p = int(data.shape[4])
    rc = te.reduce_axis((0, c), "rc")
    ry = te.reduce_axis((0, 1), "ry")
    rx = te.reduce_axis((0, 1), "rx")
    return te.compute(
        (n, e, kb, 1, p, block),
        lambda b, t, f, y, x, v: te.sum(
            data[b, t, rc // bi, y + ry, x + rx, rc % bi] * weight[t, f, rc, ry, rx, v],
            axis=[rc, ry, rx],
        ),
        name="winograd_product",
        attrs={PACKED_CONV_ATTR: block},
    )


def winograd_output_nchwc(
    data: te.Tensor, out_h: int, out_w: int, m: int, r: int = 3
) -> te.Tensor:
    """``Y[N, K/B, OH, OW, B]`` from ``M[N, alpha^2, K/B, 1, P, B]``: ``A^T M_p A`` for tile
    ``p``, in two separable passes, each a sparse sum picked by a ``Select`` on the
    (unrolled) index: columns ``S[e1, j] = sum_e2 M[e1, e2] A[e2, j]``, then
    ``Y[i, j] = sum_e1 A[e1, i] S[e1, j]``."""
    n = data.shape[0]
    kb, tiles, block = int(data.shape[2]), int(data.shape[4]), int(data.shape[5])
    tw = _tiles(out_w, m)
    alpha = m + r - 1
    am, _b, _g = transform_matrices(m, r)

    def cols_body(b, e1, k, p, j, v):
        return _select(
            j,
            [
                _sparse_sum(
                    (am[e2, jj], data[b, e1 * alpha + e2, k, 0, p, v]) for e2 in range(alpha)
                )
                for jj in range(m)
            ],
        )

    cols = te.compute((n, alpha, kb, tiles, m, block), cols_body, name="winograd_output_cols")

    def body(b, k, y, x, v):
        p = y // m * tw + x // m
        return _select(
            y % m,
            [
                _sparse_sum((am[e1, i], cols[b, e1, k, p, x % m, v]) for e1 in range(alpha))
                for i in range(m)
            ],
        )

    return te.compute(
        (n, kb, out_h, out_w, block),
        body,
        name="winograd_output",
        attrs={WINOGRAD_ATTR: m},
    )
