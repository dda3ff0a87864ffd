"""4-bit weight-only matmul kernels (``quantize_int4``, ONNX Runtime's ``MatMulNBits``): their
packed layout, TE definition and hand schedule.

``y[M, N] = x[M, K] @ dequant(W)^T`` with ``W`` 4-bit, quantized in groups of ``G`` (16, 32,
64, 128) consecutive ``k`` of one output column ``n``, one fp32 scale and one 4-bit zero point
per group::

    dequant(W)[n, k] = (q[n, k] - zp[n, k // G]) * scale[n, k // G]

Activations and accumulation stay fp32: batch-1 matmuls (GEMV) are memory bound, and reading
4 bits per weight instead of 32 is what makes them faster.

Layout (``pack_weights``)
-------------------------
Columns are padded to panels of :data:`PANEL` (32) and ``K`` to a multiple of ``G``:

- ``wp`` uint8 ``[Np/32, Kp/2, 32]``: byte ``[p, j, c]`` holds column ``n = 32 p + c`` at
  ``k = 2j`` in its low nibble and ``k = 2j + 1`` in its high nibble (MatMulNBits' own nibble
  order, so its ``B [N, K/G, G/2]`` is this layout after a transpose of bytes: nothing is
  re-quantized). One ``k`` pair of a panel is 32 contiguous bytes, and a panel's ``Kp/2 x 32``
  bytes are one contiguous stream.
- ``scales`` fp32 ``[Kp/G, Np]``, contiguous along ``n`` (one vector load per group).
- zero points, optional: packed uint8 ``[ceil(Kp/G / 2), Np]`` (group ``g`` in the low nibble
  of row ``g // 2`` when ``g`` is even), or fp32 ``[Kp/G, Np]`` (MatMulNBits' float zero
  points); absent: 8 (symmetric).

Maths (``int4_matmul``)
-----------------------
The dequantization is factored out of the inner loop, group by group::

    acc[m, n, g] = sum_{k in g} x[m, k] * float(q[n, k])          (the inner loop)
    xs[m, g]     = sum_{k in g} x[m, k]
    y[m, n]      = sum_g scale[g, n] * (acc[m, n, g] - zp[g, n] * xs[m, g])

which is ``sum_k x[m, k] * (q[n, k] - zp) * scale`` regrouped: per weight the inner loop does
an unpack (a shift and a mask per byte, shared by two ``k``), an int -> float conversion and
one FMA; the scale and zero point are applied once per group. The rounding differs from
dequantize-then-multiply by float reassociation only (ORT's own kernels reassociate too).
``K`` not a multiple of ``G``: ``x`` reads as 0 past ``K``, so the padded weights do not count.

Schedule (``apply_default_schedule``)
-------------------------------------
Per panel of 32 columns (the parallel loop, fused with row tiles) and per group: the ``m_r x
32`` accumulators of the group are registers (``m_r`` rows x ``32 / lanes`` vectors: 4 AVX2
vectors, 2 AVX-512), the ``G/2`` byte pairs stream through them (``k`` pair and nibble
unrolled, the 32 columns vectorized: one byte load -> zero-extend -> ``& 15`` / ``>> 4`` ->
convert -> FMA with the broadcast ``x``), then the group's scale and zero point update the
output tile (in L1). ``x``'s group sums are a small stage of their own.
"""

from __future__ import annotations

import numpy as np
from tvm import s_tir, te, tirx

__all__ = [
    "KERNEL_ATTR",
    "PANEL",
    "apply_default_schedule",
    "dequantize_np",
    "from_matmul_nbits",
    "int4_matmul",
    "int4_matmul_np",
    "pack_nibbles",
    "pack_weights",
    "unpack_nibbles",
]

KERNEL_ATTR = "tvmforge.int4_kernel"
PANEL = 32  # output columns per packed panel (4 AVX2 vectors, 2 AVX-512, 8 NEON)
GROUP_SIZES = (16, 32, 64, 128)


def _ceil(a: int, b: int) -> int:
    return -(-a // b) * b


# --------------------------------------------------------------------------------------------
# Packing (numpy, at compile time)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """``[..., 2L]`` values in 0..15 → ``[..., L]`` bytes, element ``2i`` in the low nibble."""
    q = np.asarray(q, np.uint8)
    if q.shape[-1] % 2:
        q = np.concatenate([q, np.zeros((*q.shape[:-1], 1), np.uint8)], axis=-1)
    return (q[..., 0::2] & 15) | ((q[..., 1::2] & 15) << 4)


def unpack_nibbles(b: np.ndarray) -> np.ndarray:
    """``[..., L]`` bytes → ``[..., 2L]`` values, the low nibble first."""
    b = np.asarray(b, np.uint8)
    out = np.empty((*b.shape[:-1], 2 * b.shape[-1]), np.uint8)
    out[..., 0::2] = b & 15
    out[..., 1::2] = b >> 4
    return out


def pack_weights(
    q: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, group: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Our layout (see the module docstring) from per-column codes.

    Parameters
    ----------
    q:
        uint8 ``[N, Kp]`` codes 0..15, ``Kp`` a multiple of ``group`` (padded already).
    scales:
        fp32 ``[N, Kp/G]``.
    zero_points:
        uint8 ``[N, Kp/G]`` codes 0..15 (packed here), fp32 ``[N, Kp/G]`` (kept float), or
        ``None`` (8).

    Returns
    -------
    ``(wp [Np/32, Kp/2, 32] uint8, scales [Kp/G, Np] fp32, zero points or None)``
    """
    n, kp = q.shape
    if kp % group:
        raise ValueError(f"K={kp} is not padded to the group size {group}")
    np_ = _ceil(n, PANEL)
    qp = np.zeros((np_, kp), np.uint8)
    qp[:n] = q
    if zero_points is not None and zero_points.dtype == np.uint8:
        qp[n:] = 8  # padded columns: any code; their outputs are sliced off
    wp = pack_nibbles(qp).reshape(np_ // PANEL, PANEL, kp // 2).transpose(0, 2, 1)
    s = np.zeros((kp // group, np_), np.float32)
    s[:, :n] = np.asarray(scales, np.float32).T
    zp = None
    if zero_points is not None:
        if np.issubdtype(zero_points.dtype, np.floating):
            zp = np.zeros((kp // group, np_), np.float32)
            zp[:, :n] = zero_points.T
        else:
            z = np.full((kp // group, np_), 8, np.uint8)
            z[:, :n] = zero_points.T
            zp = np.ascontiguousarray(pack_nibbles(z.T).T)  # pairs of groups per byte
    return np.ascontiguousarray(wp), s, zp


def from_matmul_nbits(
    b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, k: int, n: int,
    block: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """MatMulNBits' 4-bit constants (``B [N, K/G, G/2]`` uint8, ``scales [N * K/G]`` or
    ``[N, K/G]``, zero points packed uint8 ``[N, ceil(K/G / 2)]`` or float ``[N, K/G]``)
    in our layout: the same codes, bytes rearranged (``pack_weights``)."""
    blocks = -(-k // block)
    codes = unpack_nibbles(np.asarray(b, np.uint8).reshape(n, blocks * block // 2))
    s = np.asarray(scales, np.float32).reshape(n, blocks)
    zp = None
    if zero_points is not None:
        z = np.asarray(zero_points)
        if np.issubdtype(z.dtype, np.floating):
            zp = z.astype(np.float32).reshape(n, blocks)
        else:
            zp = unpack_nibbles(z.astype(np.uint8).reshape(n, -1))[:, :blocks]
    return pack_weights(codes, s, zp, block)


def dequantize_np(q: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None,
                  group: int) -> np.ndarray:
    """``(q - zp) * scale`` for codes ``[N, Kp]``, scales/zero points ``[N, Kp/G]``."""
    zp = 8.0 if zero_points is None else np.repeat(zero_points.astype(np.float32), group, 1)
    return ((q.astype(np.float32) - zp) * np.repeat(scales.astype(np.float32), group, 1)
            ).astype(np.float32)


def int4_matmul_np(x: np.ndarray, q: np.ndarray, scales: np.ndarray,
                   zero_points: np.ndarray | None, group: int) -> np.ndarray:
    """Reference: ``x [M, K] @ dequant [N, Kp]^T`` in float64 (numpy)."""
    w = dequantize_np(q, scales, zero_points, group)[:, : x.shape[-1]]
    return (x.astype(np.float64) @ w.T.astype(np.float64)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# TE definition


def int4_matmul(
    x: te.Tensor,
    wp: te.Tensor,
    scales: te.Tensor,
    zero_points: te.Tensor | None = None,
    *,
    group: int,
) -> te.Tensor:
    """``x [M, K] fp32`` times the packed 4-bit weight ``wp [Np/32, Kp/2, 32]`` (see the module
    docstring); ``scales [Kp/G, Np]``; ``zero_points`` packed uint8 ``[ceil(Kp/G/2), Np]``, fp32
    ``[Kp/G, Np]`` or ``None`` (8). Returns ``y [M, Np]`` fp32 (the caller slices off padded
    columns)."""
    if group not in GROUP_SIZES:
        raise ValueError(f"group size {group}: use one of {GROUP_SIZES}")
    m, k = x.shape
    panels, k2, panel = (int(d) for d in wp.shape)
    if panel != PANEL:
        raise ValueError(f"weight panel {panel}, want {PANEL}")
    kp, np_ = 2 * k2, panels * PANEL
    ng = kp // group
    f32 = "float32"
    k_static = int(k)

    def xv(i, kk):
        if k_static == kp:
            return x[i, kk]
        return tirx.if_then_else(kk < k_static, x[i, tirx.min(kk, k_static - 1)],
                                 tirx.const(0.0, f32))

    rs = te.reduce_axis((0, group), "rs")
    xs = te.compute((m, ng), lambda i, g: te.sum(xv(i, g * group + rs), axis=rs), name="xsum")
    r2 = te.reduce_axis((0, group // 2), "r2")
    ri = te.reduce_axis((0, 2), "ri")

    def code(j, g, kk2, nib):
        byte = wp[j // PANEL, g * (group // 2) + kk2, j % PANEL].astype("int32")
        return ((byte >> (nib * 4)) & 15).astype(f32)

    acc = te.compute(
        (m, np_, ng),
        lambda i, j, g: te.sum(xv(i, g * group + r2 * 2 + ri) * code(j, g, r2, ri),
                               axis=[r2, ri]),
        name="acc",
    )

    def zp(g, j):
        if zero_points is None:
            return tirx.const(8.0, f32)
        if zero_points.dtype == "uint8":
            byte = zero_points[g // 2, j].astype("int32")
            return ((byte >> ((g % 2) * 4)) & 15).astype(f32)
        return zero_points[g, j]

    rg = te.reduce_axis((0, ng), "rg")
    return te.compute(
        (m, np_),
        lambda i, j: te.sum(scales[rg, j] * (acc[i, j, rg] - zp(rg, j) * xs[i, rg]), axis=rg),
        name="y",
    )


# --------------------------------------------------------------------------------------------
# Schedule


# x's group sums run in parallel from this many adds on. A batch-1 row's (768 adds, well
# under a microsecond) in a parallel loop of their own cost a second fork-join per call, and
# with another process on one of two cores that fork-join made the kernel 13x slower on two
# threads than on one (Zen 3, ``[1, 768] x [768, 3072]`` group 32, interleaved in one process:
# 1 thread 209 us, 2 threads 2881 us; the sums serial: 211 / 272 us).
_XSUM_PARALLEL_ADDS = 1 << 16


def _rows(m: int, vectors: int, accumulators: int) -> int:
    """Rows of the register tile: ``rows x vectors`` accumulators, rows dividing ``m``."""
    bound = max(min(accumulators // max(vectors, 1), 4), 1)
    return max(d for d in range(1, min(m, bound) + 1) if m % d == 0)


def apply_default_schedule(sch: s_tir.Schedule, lanes: int, num_cores: int,
                           accumulators: int = 12) -> None:
    """The hand schedule of an :func:`int4_matmul` kernel, in place (see the module
    docstring). ``lanes``: fp32 lanes of a vector register; ``accumulators``: vector
    registers the tile may hold."""
    y = sch.get_sblock("y")
    acc = sch.get_sblock("acc")
    xs = sch.get_sblock("xsum")
    m, n, g = sch.get_loops(y)
    extent = sch.get(m).extent
    ext_m = int(extent) if isinstance(extent, tirx.IntImm) else 1  # symbolic rows: 1 a tile
    lanes = lanes if PANEL % lanes == 0 else 4
    vectors = PANEL // lanes
    rows = _rows(ext_m, vectors, accumulators)
    n_o, n_i = sch.split(n, [None, PANEL])
    m_o, m_i = sch.split(m, [None, rows])
    sch.reorder(n_o, m_o, g, m_i, n_i)
    outer = sch.fuse(n_o, m_o)
    if num_cores > 1:
        sch.parallel(outer)
    # the group's accumulators under the group loop, in registers (a stack buffer)
    sch.compute_at(acc, g, preserve_unit_loops=True)
    am, an, _ag, r2, ri = sch.get_loops(acc)[-5:]
    an_o, an_i = sch.split(an, [None, lanes])
    sch.reorder(r2, ri, am, an_o, an_i)
    sch.set_scope(acc, 0, "global")
    sch.unroll(ri)
    sch.unroll(am)
    sch.unroll(an_o)
    sch.vectorize(an_i)
    # the output tile's loops, vectorized like the accumulators
    bm, bn = sch.get_loops(y)[-2:]
    bn_o, bn_i = sch.split(bn, [None, lanes])
    sch.unroll(bm)
    sch.unroll(bn_o)
    sch.vectorize(bn_i)
    init = sch.decompose_reduction(acc, r2)  # zeroed per group
    y_init = sch.decompose_reduction(y, g)  # zeroed before the groups
    for block in (init, y_init):
        last = sch.get_loops(block)[-1]
        if sch.get(last).kind != tirx.ForKind.VECTORIZED:
            sch.vectorize(last)
    # x's group sums: M x K adds, before the panels; a parallel loop of their own only when
    # there are enough of them (``_XSUM_PARALLEL_ADDS``)
    xm, xg, xr = sch.get_loops(xs)
    sums = ext_m * int(sch.get(xg).extent)
    if (num_cores > 1 and sums >= 8 * num_cores
            and sums * int(sch.get(xr).extent) >= _XSUM_PARALLEL_ADDS):
        sch.parallel(sch.fuse(xm, xg))
