"""Default CPU schedules for every fused TIR kernel, without tuning.

TVM's stock CPU pipeline schedules nothing: each kernel that ``LegalizeOps`` + ``FuseOps`` +
``FuseTIR`` produce is a naive, single-threaded loop nest. This module pass gives each such
``PrimFunc`` a schedule derived from the target alone (vector width from the CPU's features,
parallelism from ``num-cores``), never from the model.

Where it sits
-------------
After ``FuseTIR`` and after ``MetaScheduleApplyDatabase``, before TVM's dataflow lowering.
Functions that already carry ``tirx.is_scheduled`` (tuning records, hand-written kernels) are
left as they are, except that the weight-prefetch marks a record replaying a default schedule
carries become their prefetch loops (``weight_prefetch``); every function this pass schedules
is marked with that attribute.

What it matches
---------------
1. **Contractions**: a function whose one heavy block is a multiply-accumulate reduction
   ``C[s...] += A[...] * B[...]`` (conv2d in NCHW, incl. 1x1, strided, depthwise and grouped;
   dense, matmul, batch_matmul), with any elementwise epilogue fused after it (bias, BN,
   relu, residual add) and injective producers before it (padding, transposes).
2. **Packed convolutions**: the conv blocks ``pack_conv_weights`` emits, annotated
   ``tvmforge.packed_conv = B`` (weights ``[F/B, C, KH, KW, B]``), get the direct-convolution
   recipe below instead of the contraction one.
3. **Packed matmuls**: the matmul blocks ``pack_dense_weights`` emits, annotated
   ``tvmforge.packed_dense = B`` (weights in column panels ``[N/B, K, B]``), get an ``8 x B``
   register tile with the panel loop outermost (``_schedule_packed_dense``).
4. **Everything else** (elementwise/injective, pooling, plain reductions): the generic
   schedule below.

Contraction recipe
------------------
Let ``v`` be the innermost spatial axis of the output (contiguous in memory) and ``r`` a
*row* axis that the operand read along ``v`` does not depend on (the output channel of a conv,
the row of a matmul), so the other operand's value is reused across it.

- register tile ``r_i x v_i``: ``v_i`` a divisor of ``v`` near the vector width (or all of
  ``v`` when ``v`` is short; LLVM splits odd-length vectors into legal pieces), ``r_i`` a
  divisor of ``r`` such that ``r_i * ceil(v_i / lanes)`` accumulators fit in the vector
  register file;
- loop order ``[spatial outer tiles] [reduction axes] [r_i (unrolled), v_i (vectorized)]``;
- the init is split off with ``decompose_reduction`` above the reduction loops;
- the epilogue (inlined into one block) is ``reverse_compute_at`` into the tile, so the
  accumulator buffer shrinks to the tile and stays in registers; without an epilogue a
  ``cache_write`` provides one;
- the outer spatial tiles are fused and run in parallel;
- a 1x1 stride-1 conv whose row width is no multiple of the vector width (56, 28, 14, 7)
  gets its ``y, x`` plane merged into one axis first (``_flatten_plane``), so the vector
  loop runs in full registers over the contiguous plane.

Vector loops are always a divisor of the axis and at most one or two registers wide: a tail
predicate or an odd vector wider than a register (``<55 x float>``) makes LLVM emit scalar
code (measured 15-20x slower than an 11-wide vector on AVX-512).

Padding producers stay separate (inlining them would put a bounds check in the inner loop)
and get the generic schedule; other injective producers are inlined.

Packed-convolution recipe
-------------------------
Vectors over output channels instead of output columns, as oneDNN's and TVM's
``conv2d_NCHWc`` x86 kernels do: the accumulators are ``nf`` vectors of ``B`` channels times
``xi`` output columns (``packed_conv_tile``: at most half the registers, fewest loads per
FMA, counting that LLVM reuses a broadcast input across the kernel's taps), held in a
``local`` buffer laid out ``[.., xi, B]`` across the whole ``(rc, ry, rx)`` reduction. Per
step the tile loads ``nf`` contiguous weight vectors and broadcasts the input values. The
output tiles are ordered so that whichever of input tile and weights is reused stays in
cache (weights up to 1 MiB: all channel blocks of one input tile in a row; larger weights:
one channel block over the whole output). The fused epilogue runs on the tile, vectorized
over channels (a strided store into NCHW).

1x1 stride-1 convs whose plane is a whole number of vectors (56x56), or whose epilogue adds a
residual (then vectors of 12-15 lanes: 14x14), use a pixel tile instead
(``packed_pixel_tile``): ``r`` channels x ``vp`` vectors of the flattened plane, weights
broadcast, input and epilogue contiguous. Measured on Emerald Rapids, one thread (GFLOP/s):
3x3 convs 64-512 channels 120-165 (the contraction recipe: 20-55); 1x1 64->256 at 56x56
with the residual epilogue 63 (channel tile) -> 107-137 (pixel tile).

Generic recipe
--------------
Per block at the root: injective producers are inlined; the leading spatial loops are fused
and parallelised; the innermost spatial loop is vectorised (moved inside the reduction loops
first, when it is the contiguous axis of the block's reads, as in pooling).

Any schedule error in the contraction recipe falls back to the generic one, and an error
there leaves the function as it was: the pass never changes what a kernel computes, only the
order of its loops. Reasons are logged at debug level.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.schedule import LoopRV, SBlockRV

from .weight_prefetch import (
    insert_weight_prefetches,
    mark_weight_prefetch,
)

log = logging.getLogger(__name__)

__all__ = ["CpuScheduleParams", "schedule_cpu_default", "schedule_prim_func"]

SCHEDULED_ATTR = "tirx.is_scheduled"

# What a schedule primitive raises on an illegal step (ScheduleError and TVM's internal errors
# are RuntimeErrors); ValueError is this module's own "recipe does not fit".
_SCHEDULE_ERRORS = (RuntimeError, ValueError)


@dataclass(frozen=True)
class CpuScheduleParams:
    """What the schedules need to know about the CPU.

    Attributes
    ----------
    lanes:
        fp32 lanes in one vector register (16 for AVX-512, 8 for AVX2, 4 for SSE/NEON).
    vector_registers:
        Architectural vector registers (32 for AVX-512 and AArch64, 16 otherwise).
    num_cores:
        Worker threads the parallel loops are sized for.
    """

    lanes: int = 4
    vector_registers: int = 16
    num_cores: int = 1

    @property
    def accumulators(self) -> int:
        """Vector registers the register tile may use for accumulators."""
        return self.vector_registers * 3 // 4

    @classmethod
    def from_target(cls, target: tvm.target.Target) -> CpuScheduleParams:
        from tvm.target import codegen

        with target:
            features = set(codegen.llvm_get_cpu_features())
        triple = str(target.attrs.get("mtriple", "") or "")
        if "avx512f" in features:
            lanes, regs = 16, 32
        elif "avx2" in features or "avx" in features:
            lanes, regs = 8, 16
        elif "neon" in features or triple.startswith(("aarch64", "arm64")):
            lanes, regs = 4, 32
        else:
            lanes, regs = 4, 16
        cores = int(target.attrs.get("num-cores", 0) or 0) or 1
        return cls(lanes=lanes, vector_registers=regs, num_cores=cores)


def current_cpu_lanes() -> int | None:
    """fp32 lanes of the current target when it is an ``llvm`` CPU, else ``None`` (the graph
    passes that lay data out for the vector width do nothing then)."""
    target = tvm.target.Target.current(allow_none=True)
    if target is None or target.kind.name != "llvm":
        return None
    return CpuScheduleParams.from_target(target).lanes


# --------------------------------------------------------------------------------------------
# Block analysis


def _iter_kinds(sch: s_tir.Schedule, block: SBlockRV) -> str:
    """``S``/``R``/``O`` per block iterator, as dlight writes it."""
    kinds = []
    for iv in sch.get(block).iter_vars:
        kinds.append(
            {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}.get(iv.iter_type, "O")
        )
    return "".join(kinds)


def _loops_match_iters(sch: s_tir.Schedule, block: SBlockRV) -> bool:
    """Whether the block's loops bind its iterators one to one, in order (as legalized)."""
    loops = sch.get_loops(block)
    binding = _bindings(sch, block)
    if binding is None or len(loops) != len(sch.get(block).iter_vars):
        return False
    for loop, value in zip(loops, binding, strict=True):
        if not (isinstance(value, tirx.Var) and value.same_as(sch.get(loop).loop_var)):
            return False
    return True


def _bindings(sch: s_tir.Schedule, block: SBlockRV) -> list | None:
    """The iterator bindings of a block that is the sole body of its innermost loop."""
    loops = sch.get_loops(block)
    if not loops:
        return None
    body = sch.get(loops[-1]).body
    if isinstance(body, s_tir.SBlockRealize) and body.block.same_as(sch.get(block)):
        return list(body.iter_values)
    return None


def _extents(sch: s_tir.Schedule, loops: list[LoopRV]) -> list[int]:
    out = []
    for loop in loops:
        ext = sch.get(loop).extent
        if not isinstance(ext, tirx.IntImm):
            raise ValueError("symbolic loop extent")
        out.append(int(ext.value))
    return out


_CHILD_FIELDS = (
    "a",
    "b",
    "value",
    "condition",
    "true_value",
    "false_value",
    "args",
    "indices",
    "source",
)


def _contains(node, pred) -> bool:
    """Whether ``pred`` holds for ``node`` or any expression below it (TIR expressions and
    buffer stores; TVM 0.27 exposes no TIR visitor to Python)."""
    stack = [node]
    while stack:
        cur = stack.pop()
        if pred(cur):
            return True
        if isinstance(cur, (list, tuple, tvm_ffi.Array)):
            stack.extend(cur)
            continue
        if not isinstance(cur, (tvm.ir.expr.Expr, tirx.BufferStore)):
            continue
        for field in _CHILD_FIELDS:
            child = getattr(cur, field, None)
            if child is not None and not isinstance(child, (int, float, str)):
                stack.append(child)
    return False


def _uses_var(expr, var: tirx.Var) -> bool:
    return _contains(expr, lambda n: isinstance(n, tirx.Var) and n.same_as(var))


_IF_THEN_ELSE = tvm.ir.Op.get("prim.if_then_else")


def _is_padding(sch: s_tir.Schedule, block: SBlockRV) -> bool:
    """A spatial block whose value is an ``if_then_else`` (padding, concat-like selects)."""
    body = sch.get(block).body

    def is_select(node) -> bool:
        if isinstance(node, tvm.ir.expr.Call) and node.op.same_as(_IF_THEN_ELSE):
            return True
        return isinstance(node, tirx.Select)

    return _contains(body, is_select)


def _is_mac(sch: s_tir.Schedule, block: SBlockRV) -> bool:
    """``C[..] = C[..] + A[..] * B[..]`` (possibly with casts), with an init, S and R iters."""
    stmt = sch.get(block)
    kinds = _iter_kinds(sch, block)
    if "R" not in kinds or "S" not in kinds or "O" in kinds or stmt.init is None:
        return False
    body = stmt.body
    if not isinstance(body, tirx.BufferStore) or not isinstance(body.value, tirx.Add):
        return False
    lhs, rhs = body.value.a, body.value.b
    if not (isinstance(lhs, tvm.ir.expr.TensorLoad) and lhs.source.same_as(body.buffer)):
        lhs, rhs = rhs, lhs
    if not (isinstance(lhs, tvm.ir.expr.TensorLoad) and lhs.source.same_as(body.buffer)):
        return False
    while isinstance(rhs, tirx.Cast):
        rhs = rhs.value
    return isinstance(rhs, tirx.Mul) and len(stmt.reads) >= 2


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _largest_divisor_at_most(n: int, bound: int) -> int:
    return max(d for d in _divisors(n) if d <= max(bound, 1))


# --------------------------------------------------------------------------------------------
# Generic schedule: parallel outer spatial loops, vectorized inner spatial loop


def _inline_injective(sch: s_tir.Schedule, keep: set[str] = frozenset()) -> None:
    """Inline every non-output spatial block (except padding and ``keep``) into its consumers."""
    changed = True
    while changed:
        changed = False
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            name = sch.get(block).name_hint
            if name in keep or "R" in _iter_kinds(sch, block):
                continue
            if _is_padding(sch, block) and not _producer_of_injective_only(sch, block):
                continue
            try:
                sch.compute_inline(block)
                changed = True
                break
            except _SCHEDULE_ERRORS:
                continue


def _producer_of_injective_only(sch: s_tir.Schedule, block: SBlockRV) -> bool:
    """A select-producing block may be inlined when nothing heavy consumes it."""
    consumers = sch.get_consumers(block)
    return bool(consumers) and all(not _is_mac(sch, c) for c in consumers)


def _vector_split(extent: int, lanes: int) -> int:
    """The length of the vectorized inner loop for a spatial loop of ``extent``.

    Always a divisor of ``extent`` and at most one register wide: a tail predicate keeps LLVM
    from vectorizing, and odd vectors wider than a register (``<55 x float>``) are legalized
    into scalar code (measured: 15-20x slower than an 11-wide vector).
    """
    return _largest_divisor_at_most(extent, lanes)


def _split_points(sch: s_tir.Schedule, block: SBlockRV, iter_index: int) -> list[int]:
    """Constants ``k`` the block's selects compare this iterator with (``v < k``, ``v >= k``):
    where a concatenation along it switches from one input to the next."""
    stmt = sch.get(block)
    var = stmt.iter_vars[iter_index].var
    extent = int(stmt.iter_vars[iter_index].dom.extent)
    points: set[int] = set()

    def visit(node) -> bool:
        cond = None
        if isinstance(node, tvm.ir.expr.Call) and node.op.same_as(_IF_THEN_ELSE):
            cond = node.args[0]
        elif isinstance(node, tirx.Select):
            cond = node.condition
        if cond is None:
            return False
        for cmp in _comparisons(cond):
            a, b, inclusive = cmp.a, cmp.b, isinstance(cmp, (tirx.LE, tirx.GT))
            if isinstance(b, tirx.Var) and isinstance(a, tirx.IntImm):
                a, b = b, a  # k <= v is v >= k: the other side of k belongs to v
                inclusive = isinstance(cmp, (tirx.LT, tirx.GE))
            if isinstance(a, tirx.Var) and a.same_as(var) and isinstance(b, tirx.IntImm):
                k = int(b.value) + (1 if inclusive else 0)
                if 0 < k < extent:
                    points.add(k)
        return False

    _contains(stmt.body, visit)
    return sorted(points)


def _comparisons(cond) -> list:
    out, stack = [], [cond]
    while stack:
        cur = stack.pop()
        if isinstance(cur, (tirx.And, tirx.Or)):
            stack.extend([cur.a, cur.b])
        elif isinstance(cur, tirx.Not):
            stack.append(cur.a)
        elif isinstance(cur, (tirx.LT, tirx.LE, tirx.GT, tirx.GE)):
            out.append(cur)
    return out


def _vectorize_pieces(
    sch: s_tir.Schedule, loop: LoopRV, extent: int, points: list[int], lanes: int
) -> bool:
    """Vectorize the innermost ``loop`` in pieces that never straddle a concatenation's
    ``points`` (a 16-lane vector over 24-channel inputs selects lane by lane: PP-OCRv4 det's
    int8 neck concat ran 4.5 ms on one thread).

    The loop is split by ``g``, the gcd of the pieces, into ``[extent / g] x [g]``; the outer
    part is unrolled, so each copy's select conditions (``c_o * g + c_i < k``, ``k`` a multiple
    of ``g``) no longer depend on the vector lanes and fold to one branch (without the unroll
    the select stays lane-wise even when no vector straddles two inputs). ``False`` when the
    pieces are too small to vectorize or too many to unroll.
    """
    bounds = [0, *points, extent]
    g = 0
    for a, b in itertools.pairwise(bounds):
        g = math.gcd(g, b - a)
    if g < 4 or extent // g > 16:
        return False
    outer, inner = sch.split(loop, factors=[None, g])
    v = _vector_split(g, lanes)
    if v < g:
        middle, inner = sch.split(inner, factors=[None, v])
        sch.unroll(middle)
    sch.unroll(outer)
    sch.vectorize(inner)
    return True


def _schedule_block_generic(
    sch: s_tir.Schedule, block: SBlockRV, params: CpuScheduleParams
) -> None:
    loops = sch.get_loops(block)
    if not loops or not _loops_match_iters(sch, block):
        return
    kinds = _iter_kinds(sch, block)
    extents = _extents(sch, loops)
    spatial = [i for i, k in enumerate(kinds) if k == "S"]
    if not spatial:
        return
    vec_idx = None
    last_s = spatial[-1]
    if kinds.count("R") == 0:
        vec_idx = _write_contiguous_iter(sch, block)
        if vec_idx is None:
            vec_idx = last_s if last_s == len(kinds) - 1 else None
    elif _reads_contiguous_along(sch, block, last_s):
        vec_idx = last_s
    order = [i for i in range(len(loops)) if i != vec_idx]
    # Spatial loops first, then reductions, then the vector loop.
    order = [i for i in order if kinds[i] == "S"] + [i for i in order if kinds[i] != "S"]
    if vec_idx is not None:
        order.append(vec_idx)
    loops_in_order = [loops[i] for i in order]
    sch.reorder(*loops_in_order)
    inner_vec = None
    points = _split_points(sch, block, vec_idx) if vec_idx is not None and "R" not in kinds else []
    if points:
        outer_spatial = [loops[i] for i in order if kinds[i] == "S" and i != vec_idx]
        if _vectorize_pieces(sch, loops[vec_idx], extents[vec_idx], points, params.lanes):
            _parallelize(sch, outer_spatial, params)
            return
    if vec_idx is not None and extents[vec_idx] >= 2:
        v = _vector_split(extents[vec_idx], params.lanes)
        if v >= 2:
            if v < extents[vec_idx]:
                outer, inner_vec = sch.split(loops[vec_idx], factors=[None, v])
                # the outer part of the vector loop joins the outer spatial loops
                pos = order.index(vec_idx)
                head = [loops[i] for i in order[:pos] if kinds[i] == "S"]
                rest = [loops[i] for i in order[:pos] if kinds[i] != "S"]
                sch.reorder(*head, outer, *rest, inner_vec)
                outer_spatial = [*head, outer]
            else:
                inner_vec = loops[vec_idx]
                outer_spatial = [loops[i] for i in order if kinds[i] == "S" and i != vec_idx]
        else:
            outer_spatial = [loops[i] for i in order if kinds[i] == "S" and i != vec_idx]
    else:
        outer_spatial = [loops[i] for i in order if kinds[i] == "S"]
        if kinds.count("R") == 0 and outer_spatial:
            # all-spatial block whose last loop was not vectorized: keep the innermost serial
            outer_spatial = outer_spatial[:-1] if len(outer_spatial) > 1 else outer_spatial
    _parallelize(sch, outer_spatial, params)
    if inner_vec is not None:
        # A reduction block keeps its init inside the vector loop (a lane-invariant branch):
        # after decompose_reduction the update block would no longer be vectorizable.
        sch.vectorize(inner_vec)


def _write_contiguous_iter(sch: s_tir.Schedule, block: SBlockRV) -> int | None:
    """The one (non-unit) iterator in the last index of the block's write, if only one.

    Vectorizing that one makes the stores contiguous. For a layout transform the block runs
    over the *source*: ``[N, C/16, H, W, 16] -> NCHW`` iterates ``(.., w, c % 16)``, and
    vectorizing its last iterator (contiguous reads) scattered every store 16 planes apart
    (PP-OCRv4 det, 32x320x320: 6.7 ms a transform; with the stores contiguous and the reads a
    16-wide gather that stays in L1, about a tenth)."""
    stmt = sch.get(block)
    if len(stmt.writes) != 1:
        return None
    index = stmt.writes[0].region[-1].min
    used = [
        i for i, iv in enumerate(stmt.iter_vars)
        if int(iv.dom.extent) > 1 and _uses_var(index, iv.var)
    ]
    return used[0] if len(used) == 1 else None


def _reads_contiguous_along(sch: s_tir.Schedule, block: SBlockRV, iter_index: int) -> bool:
    """Whether every buffer the block reads has this iterator in its last index."""
    stmt = sch.get(block)
    var = stmt.iter_vars[iter_index].var
    writes = stmt.writes
    if not writes or not _uses_var(writes[0].region[-1].min, var):
        return False
    for region in stmt.reads:
        if region.source.same_as(writes[0].source):
            continue
        if not _uses_var(region.region[-1].min, var):
            return False
    return True


def _parallelize(
    sch: s_tir.Schedule, outer_loops: list[LoopRV], params: CpuScheduleParams
) -> LoopRV | None:
    """Fuse leading loops until they give every core enough work, and run them in parallel."""
    if not outer_loops or params.num_cores <= 1:
        return None
    extents = _extents(sch, outer_loops)
    want = 8 * params.num_cores
    count, total = 0, 1
    for ext in extents:
        count += 1
        total *= ext
        if total >= want:
            break
    if total < 2:
        return None
    fused = sch.fuse(*outer_loops[:count]) if count > 1 else outer_loops[0]
    sch.parallel(fused)
    return fused


def _schedule_row_reduction(
    sch: s_tir.Schedule, block: SBlockRV, params: CpuScheduleParams
) -> bool:
    """A reduction over the last, contiguous axis (softmax's max and sum, layer norm's means)
    as vector partial results: ``rfactor`` by the vector width, the partials vectorized along
    the row, their ``lanes`` summed per row; rows in parallel. ``False`` when the block is not
    that (nothing changed). Measured (BERT-base, 2 threads): softmax over 12x128x128 0.57 ->
    0.09 ms, layer norm's mean-variance-normalize over 128x768 0.043 -> 0.015 ms."""
    loops = sch.get_loops(block)
    kinds = _iter_kinds(sch, block)
    if kinds.count("R") != 1 or kinds[-1] != "R" or "S" not in kinds:
        return False
    if not _loops_match_iters(sch, block):
        return False
    stmt = sch.get(block)
    r_var = stmt.iter_vars[-1].var
    out = stmt.writes[0].source if stmt.writes else None
    reads = [r for r in stmt.reads if out is None or not r.source.same_as(out)]
    # the row is contiguous in what it reads along it; other reads are per row (broadcast)
    along = [r for r in reads if any(_uses_var(d.min, r_var) for d in r.region)]
    if not along or not all(
        _uses_var(r.region[-1].min, r_var)
        and not any(_uses_var(d.min, r_var) for d in r.region[:-1])
        for r in along
    ):
        return False
    extent = int(sch.get(loops[-1]).extent)
    lanes = params.lanes
    if extent % lanes or extent < 2 * lanes:
        return False
    _, r_in = sch.split(loops[-1], factors=[None, lanes])
    partial = sch.rfactor(r_in, factor_axis=len(loops) - 1)
    rows = sch.get_loops(block)[:-1]
    fused = sch.fuse(*rows) if len(rows) > 1 else rows[0]
    if params.num_cores > 1:
        sch.parallel(fused)
    sch.compute_at(partial, fused, preserve_unit_loops=True)
    inner = [lp for lp in sch.get_loops(partial)[1:] if int(sch.get(lp).extent) > 1]
    if len(inner) == 2:  # [row steps (reduction), lanes (spatial)] after the reorder
        steps, lane = (inner if int(sch.get(inner[1]).extent) == lanes else inner[::-1])
        sch.reorder(steps, lane)
        sch.vectorize(lane)
    return True




def _schedule_generic(
    sch: s_tir.Schedule, params: CpuScheduleParams, row_reductions: bool = False
) -> None:
    _inline_injective(sch)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        try:
            if row_reductions and _schedule_row_reduction(sch, block, params):
                continue
            _schedule_block_generic(sch, block, params)
        except _SCHEDULE_ERRORS as err:  # one block's failure leaves it serial
            if row_reductions:
                raise
            log.debug("generic schedule of block %s skipped: %s", sch.get(block).name_hint, err)


# --------------------------------------------------------------------------------------------
# Window pooling (max/avg pool2d over NCHW)

# Output columns a strided pool row is unrolled by (measured, ShuffleNet's 3x3 stride-2 max
# pool on 24x112x112, 2 threads: 0.19 ms with the generic schedule's 14-lane vectors, whose
# stride-2 loads are gathers; 0.05-0.07 ms unrolled by 2-8).
_POOL_UNROLL = 4
_POOL_MAX_UNROLLED_TAPS = 64


def _window_pool(sch: s_tir.Schedule) -> SBlockRV | None:
    """The one ``[n, c, y, x] x [ry, rx]`` reduction that is not a multiply-add, if any."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    reductions = [b for b in blocks if "R" in _iter_kinds(sch, b)]
    if len(reductions) != 1 or _is_mac(sch, reductions[0]):
        return None
    block = reductions[0]
    stmt = sch.get(block)
    if _iter_kinds(sch, block) != "SSSSRR" or stmt.init is None or len(stmt.writes) != 1:
        return None
    if len(stmt.writes[0].region) != 4:
        return None
    # a window that moves with the output pixel (not a global pooling: its "window" is the
    # whole plane, 160x160 taps in PP-OCRv4 det's squeeze-excitation means)
    y, x, ry, rx = (iv.var for iv in stmt.iter_vars[2:])
    out = stmt.writes[0].source
    windows = [
        r
        for r in stmt.reads
        if not r.source.same_as(out)
        and len(r.region) == 4
        and _uses_var(r.region[-1].min, x)
        and _uses_var(r.region[-1].min, rx)
        and _uses_var(r.region[-2].min, y)
        and _uses_var(r.region[-2].min, ry)
    ]
    if not windows:
        return None
    return block


def _schedule_pool(sch: s_tir.Schedule, main: SBlockRV, params: CpuScheduleParams) -> None:
    """One output row per step, channels in parallel, the padded input rows made per row.

    The padding block (``pad_temp``) is computed at the output row, so the window loop reads
    plain values instead of testing the border per element. A stride-1 window is vectorized
    along the row; a strided one is unrolled (its vector loads would be gathers).
    """
    main_name = sch.get(main).name_hint
    pads = [
        b
        for b in sch.get_producers(main)
        if "R" not in _iter_kinds(sch, b) and "pad" in sch.get(b).name_hint
    ]
    keep = {main_name} | {sch.get(b).name_hint for b in pads}
    _inline_injective(sch, keep=keep)
    main = sch.get_sblock(main_name)
    if len(sch.get_consumers(main)) > 1:
        raise ValueError("pool with several consumers")
    n, c, y, x, ry, rx = sch.get_loops(main)
    ext_n, ext_c, _ext_y, ext_x = _extents(sch, [n, c, y, x])
    stmt = sch.get(main)
    x_var = stmt.iter_vars[3].var
    stride = None
    for region in stmt.reads:
        if region.source.same_as(stmt.writes[0].source):
            continue
        coeffs = tvm.sym.detect_linear_equation(region.region[-1].min, [x_var])
        if len(coeffs) == 2 and isinstance(coeffs[0], tirx.IntImm):
            stride = int(coeffs[0].value)
    if stride is None:
        raise ValueError("pool window not linear in the output column")
    if stride == 1:
        inner = _vector_split(ext_x, params.lanes)
    else:
        inner = _largest_divisor_at_most(ext_x, _POOL_UNROLL)
    x_o, x_i = sch.split(x, factors=[None, inner])
    if stride == 1:
        sch.reorder(n, c, y, x_o, ry, rx, x_i)
    else:
        sch.reorder(n, c, y, x_o, x_i, ry, rx)
    outer = [n, c] if ext_n * ext_c >= 2 * params.num_cores else [n, c, y]
    fused = sch.fuse(*outer)
    row = fused if len(outer) == 3 else y
    consumers = sch.get_consumers(main)
    if consumers:  # the average's division, a fused activation
        sch.reverse_compute_at(consumers[0], row, preserve_unit_loops=True)
        last = sch.get_loops(consumers[0])[-1]
        cv = _vector_split(int(sch.get(last).extent), params.lanes)
        if cv >= 2:
            _, lane = sch.split(last, factors=[None, cv])
            sch.vectorize(lane)
    for pad in pads:
        sch.compute_at(sch.get_sblock(sch.get(pad).name_hint), row, preserve_unit_loops=True)
    if params.num_cores > 1:
        sch.parallel(fused)
    if stride == 1 and inner >= 2:
        sch.vectorize(x_i)  # the init stays inside: a lane-invariant branch
    elif math.prod(_extents(sch, [ry, rx])) <= _POOL_MAX_UNROLLED_TAPS:
        sch.unroll(ry)
        sch.unroll(rx)


# --------------------------------------------------------------------------------------------
# Contractions: conv2d, dense, matmul, batch_matmul


def _main_contraction(sch: s_tir.Schedule) -> SBlockRV | None:
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    macs = [b for b in blocks if _is_mac(sch, b)]
    if len(macs) != 1:
        return None
    return macs[0]


def _row_axis(
    sch: s_tir.Schedule, block: SBlockRV, vec: int, spatial: list[int], extents: list[int]
) -> int | None:
    """A spatial axis that the operand read along ``vec`` does not depend on (reuse axis)."""
    stmt = sch.get(block)
    vars_ = [iv.var for iv in stmt.iter_vars]
    out_buf = stmt.writes[0].source
    along_vec = [
        r
        for r in stmt.reads
        if not r.source.same_as(out_buf) and any(_uses_var(x.min, vars_[vec]) for x in r.region)
    ]
    candidates = [
        i
        for i in spatial
        if i != vec
        and extents[i] > 1
        and all(not any(_uses_var(x.min, vars_[i]) for x in r.region) for r in along_vec)
    ]
    if candidates:
        return candidates[-1]
    rest = [i for i in spatial if i != vec and extents[i] > 1]
    return rest[-1] if rest else None


# Accumulators of a grouped conv's tile (channels x rows x vectors): three quarters of the
# AVX-512 registers (the rest hold the input vectors and the broadcast weights).
_GROUP_TILE_ACCUMULATORS = 24


def _row_vector_cost(width: int, lanes: int) -> tuple[int, int]:
    """``(loads, shuffles)`` of loading ``width`` contiguous floats as one vector: one load per
    full register; a ragged width (14, 7) is assembled by LLVM from power-of-two pieces
    (14 = 8 + 4 + 2: three loads, two inserts)."""
    full, rest = divmod(width, lanes)
    pieces = bin(rest).count("1")
    return full + pieces, max(pieces - 1, 0)


def grouped_tile(
    v_ext: int, row_ext: int, group: int, lanes: int, budget: int = _GROUP_TILE_ACCUMULATORS
) -> tuple[int, int, int]:
    """Register tile ``(v_in, r_in, c_in)`` of a grouped conv (``_schedule_contraction``):
    ``v_in`` contiguous outputs (one register, or the ragged row as ``_vector_split`` gives
    it) x ``r_in`` rows (a divisor of ``row_ext``) x ``c_in`` output channels of one group (a
    divisor of ``group``), at most ``budget`` accumulator registers. Per reduction step the
    tile loads ``r_in`` input vectors (each ``_row_vector_cost``) and broadcasts ``c_in``
    weights for ``r_in * c_in`` vector FMAs; the tile with the least time per useful
    multiply-add wins, counting two FMAs, two loads and one shuffle per cycle.

    Measured on ShuffleNet's grouped 1x1 convs (one thread, GFLOP/s, the old tile -> this
    one): 272 channels in 4 groups at 14x14, 2 channels x 7 rows of 14 -> 17 channels x 1
    row, 67 -> 104; 544 in 4 at 7x7, 2 x 7 rows -> 17 x 1, 40 -> 62; 112 in 4 at 28x28 (plane
    flattened), 8 channels across groups x 16 -> 14 x 16, 119 -> 128; 136 in 4 at 28x28,
    67 -> 111. Wider tiles of the flat plane (2-7 registers of pixels x fewer channels) ran
    10-30 % slower than one register x more channels, so ``v_in`` stays one register."""
    v_in = lanes if v_ext % lanes == 0 else _vector_split(v_ext, lanes)
    vregs = -(-v_in // lanes)
    loads, shuffles = _row_vector_cost(v_in, lanes)
    best: tuple[float, int, int, int] | None = None
    for r_in in _divisors(row_ext):
        for c_in in _divisors(group):
            fmas = r_in * c_in * vregs
            if fmas > budget:
                continue
            cycles = max(fmas / 2, (r_in * loads + c_in) / 2, r_in * shuffles)
            key = (cycles / (r_in * c_in * v_in), -fmas, r_in, c_in)
            if best is None or key < best:
                best = key
    assert best is not None  # (1, 1) always fits
    return v_in, best[2], best[3]


def _group_axis(
    sch: s_tir.Schedule, block: SBlockRV, vec: int, row: int | None, spatial: list[int]
) -> tuple[int, int] | None:
    """``(axis, G)`` when a spatial axis reaches the operand read along ``vec`` only as
    ``floordiv(axis, G)`` (a grouped conv's output channel picking its group's inputs)."""
    stmt = sch.get(block)
    vars_ = [iv.var for iv in stmt.iter_vars]
    out_buf = stmt.writes[0].source
    along_vec = [
        r for r in stmt.reads
        if not r.source.same_as(out_buf) and any(_uses_var(x.min, vars_[vec]) for x in r.region)
    ]
    for i in spatial:
        if i in (vec, row) or int(stmt.iter_vars[i].dom.extent) < 2:
            continue
        groups: set[int] = set()
        ok = True
        for region in along_vec:
            for rng in region.region:
                if not _uses_var(rng.min, vars_[i]):
                    continue
                divs = _floordivs_of(rng.min, vars_[i])
                if divs is None:
                    ok = False
                groups |= divs or set()
        if ok and len(groups) == 1:
            group = groups.pop()
            if 1 < group < int(stmt.iter_vars[i].dom.extent):
                return i, group
    return None


def _floordivs_of(expr, var: tirx.Var) -> set[int] | None:
    """The constants ``G`` of every ``floordiv(var, G)`` in ``expr``; ``None`` when ``var``
    also appears outside one."""
    found: set[int] = set()
    bare = False

    def walk(node) -> None:  # a bare use is one not directly under such a FloorDiv
        nonlocal bare
        if isinstance(node, tirx.Var):
            if node.same_as(var):
                bare = True
            return
        if isinstance(node, tirx.FloorDiv) and isinstance(node.b, tirx.IntImm) \
                and isinstance(node.a, tirx.Var) and node.a.same_as(var):
            found.add(int(node.b.value))
            return
        for field in _CHILD_FIELDS:
            child = getattr(node, field, None)
            if child is not None and isinstance(child, tvm.ir.expr.Expr):
                walk(child)

    walk(expr)
    return None if bare else found


def _flatten_plane(
    sch: s_tir.Schedule, main: SBlockRV, epilogue: SBlockRV, lanes: int, force: bool = False
) -> None:
    """Merge the last two spatial axes into one when every buffer stores them as one plane.

    That is the case of a 1x1, stride-1 conv2d in NCHW: ``out[n, f, y, x]`` and
    ``in[n, c, y, x]`` are both contiguous over ``y * W + x``, so the vector loop can run over
    the whole plane in full registers instead of over a row whose width (56, 28, 14, 7) is no
    multiple of the vector width. The block iterators and the accumulator buffer are
    re-indexed (``transform_block_layout``, ``transform_layout``) so that a tile of the plane is
    an exact region and ``reverse_compute_at`` of the epilogue stays exact. Does nothing when
    the row is already a multiple of ``lanes`` or the accesses are not plain ``[.., y, x]``.
    """
    from tvm.sym.analyzer import Analyzer

    stmt = sch.get(main)
    ivs = list(stmt.iter_vars)
    kinds = _iter_kinds(sch, main)
    spatial = [i for i, k in enumerate(kinds) if k == "S"]
    if len(spatial) < 2 or spatial[-1] != spatial[-2] + 1:
        return
    a, b = spatial[-2], spatial[-1]
    ext_a, ext_b = int(ivs[a].dom.extent), int(ivs[b].dom.extent)
    if ext_a == 1 or (not force and (ext_b % lanes == 0 or (ext_a * ext_b) % lanes != 0)):
        return
    ana = Analyzer()
    for iv in ivs:
        if int(iv.dom.extent) == 1:
            ana.bind(iv.var, iv.dom)
    va, vb = ivs[a].var, ivs[b].var
    for region in [*stmt.reads, *stmt.writes]:
        idx = [r.min for r in region.region]
        if not any(_uses_var(e, va) or _uses_var(e, vb) for e in idx):
            continue
        shape = [int(d) for d in region.source.shape]
        if len(idx) < 2 or shape[-2:] != [ext_a, ext_b]:
            return
        if not (ana.simplify(idx[-1]).same_as(vb) and ana.simplify(idx[-2]).same_as(va)):
            return
        if any(_uses_var(e, va) or _uses_var(e, vb) for e in idx[:-2]):
            return
    epi_ivs = list(sch.get(epilogue).iter_vars)
    if len(epi_ivs) < 2 or [int(iv.dom.extent) for iv in epi_ivs[-2:]] != [ext_a, ext_b]:
        return
    if a != len(epi_ivs) - 2:
        return

    def merge(n: int):
        def fmap(*vs):
            return [*vs[:a], vs[a] * ext_b + vs[a + 1], *vs[a + 2 :]]

        return tirx.IndexMap.from_func(fmap, ndim=n)

    buffer_ndim = len(sch.get(main).writes[0].region)
    if buffer_ndim != a + 2:
        return
    sch.transform_layout(main, ("write", 0), merge(buffer_ndim))
    sch.transform_block_layout(main, merge(len(ivs)))
    sch.transform_block_layout(epilogue, merge(len(epi_ivs)))


def _single_epilogue(sch: s_tir.Schedule, main: SBlockRV) -> SBlockRV:
    """Everything after the contraction inlined into one block (a ``cache_write`` if none)."""
    consumers = sch.get_consumers(main)
    if not consumers:
        return sch.cache_write(main, 0, "global")
    if len(consumers) != 1:
        raise ValueError("contraction with several consumers")
    epilogue = consumers[0]
    while True:
        nxt = sch.get_consumers(epilogue)
        if not nxt:
            break
        if len(nxt) != 1:
            raise ValueError("epilogue with several consumers")
        sch.compute_inline(epilogue)  # raises if not inlinable
        epilogue = nxt[0]
    if "R" in _iter_kinds(sch, epilogue):
        raise ValueError("reduction after the contraction")
    return epilogue


def _epilogue_at(sch: s_tir.Schedule, epilogue: SBlockRV, loop: LoopRV) -> None:
    """``reverse_compute_at`` the epilogue into the tile under ``loop``, checking that it now
    covers that tile only.

    When the epilogue's indexing hides which part of the accumulator it reads (an int8 dense
    with 10 outputs read as ``acc[c // 16, c % 16]`` from 16 padded channels), TVM computes the
    whole epilogue in every tile: each of the parallel tiles would then read accumulators that
    another thread is still summing (a race: wrong outputs with two threads, right ones with
    one). That raises ``ValueError``, and the caller falls back to a schedule that keeps the
    epilogue whole, after the contraction.
    """
    sch.reverse_compute_at(epilogue, loop, preserve_unit_loops=True)
    loops = sch.get_loops(epilogue)
    index = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(loop)))
    above = math.prod(_extents(sch, loops[: index + 1]))
    inside = math.prod(_extents(sch, loops[index + 1 :]))
    whole = math.prod(int(iv.dom.extent) for iv in sch.get(epilogue).iter_vars)
    if above > 1 and inside >= whole:
        raise ValueError("the epilogue does not narrow to the tile (it would run whole per tile)")


def _schedule_contraction(sch: s_tir.Schedule, main: SBlockRV, params: CpuScheduleParams) -> None:
    main_name = sch.get(main).name_hint
    _inline_injective(sch, keep={main_name})
    main = sch.get_sblock(main_name)
    if not _loops_match_iters(sch, main):
        raise ValueError("loops of the contraction do not match its iterators")
    kinds = _iter_kinds(sch, main)
    if kinds != "S" * kinds.count("S") + "R" * kinds.count("R"):
        raise ValueError(f"unexpected iterator order {kinds}")

    epilogue = _single_epilogue(sch, main)
    _flatten_plane(sch, main, epilogue, params.lanes)
    kinds = _iter_kinds(sch, main)

    loops = sch.get_loops(main)
    extents = _extents(sch, loops)
    spatial = [i for i, k in enumerate(kinds) if k == "S"]
    reduce_ = [i for i, k in enumerate(kinds) if k == "R"]
    # unit iterators (a 1x1 kernel's, after _flatten_plane) are no candidates
    vec = next((i for i in reversed(spatial) if extents[i] > 1), spatial[-1])
    v_ext = extents[vec]
    lanes = params.lanes
    # A grouped conv's output channels share their input within a group: several of them
    # (a divisor of the group) join the tile, each input vector then serves them all.
    chan, c_in = None, 1
    grouped = _group_axis(sch, main, vec, None, spatial)
    if grouped is not None:
        chan, group = grouped
        row = _row_axis(sch, main, vec, [i for i in spatial if i != chan], extents)
        v_in, r_in, c_in = grouped_tile(v_ext, 1 if row is None else extents[row], group, lanes)
        if c_in < 2:
            chan, c_in = None, 1
    else:
        if v_ext % (2 * lanes) == 0 and v_ext >= 4 * lanes:
            v_in = 2 * lanes
        else:
            v_in = _vector_split(v_ext, lanes)
        vregs = math.ceil(v_in / lanes)
        row = _row_axis(sch, main, vec, spatial, extents)
        r_in = 1
        if row is not None:
            budget = max(params.accumulators // vregs, 1)
            r_in = _largest_divisor_at_most(extents[row], min(budget, 8))

    outer: list[LoopRV] = []
    inner: list[LoopRV] = []
    for i in spatial:
        if i == vec and grouped is not None and v_in > lanes:
            # several registers of a row: unrolled, one register per vector (a 112-wide
            # vector would be legalized into scalar code)
            o, k, n = sch.split(loops[i], factors=[None, v_in // lanes, lanes])
            outer.append(o)
            inner += [k, n]
        elif i == vec and v_in < v_ext:
            o, n = sch.split(loops[i], factors=[None, v_in])
            outer.append(o)
            inner.append(n)
        elif i == vec:
            inner.append(loops[i])
        elif i == row and 1 < r_in < extents[i]:
            o, n = sch.split(loops[i], factors=[None, r_in])
            outer.append(o)
            inner.insert(0, n)
        elif i == row and r_in == extents[i]:
            inner.insert(0, loops[i])
        elif i == chan:
            o, n = sch.split(loops[i], factors=[None, c_in])
            outer.append(o)
            inner.insert(0, n)
        else:
            outer.append(loops[i])
    red = [loops[i] for i in reduce_]
    sch.reorder(*outer, *red, *inner)

    if not outer:
        raise ValueError("the whole output fits one register tile")
    _epilogue_at(sch, epilogue, outer[-1])
    # Inner tile: unroll the row (and group channel) loops, vectorize the contiguous one.
    # Both before decompose_reduction (which copies the loop kinds to the init), as
    # MetaSchedule's postprocessors do: afterwards the update block is no longer a reduction.
    sch.vectorize(inner[-1])
    for loop in inner[:-1]:
        sch.unroll(loop)
    _parallelize(sch, outer, params)
    sch.decompose_reduction(main, red[0])
    epi_loops = sch.get_loops(epilogue)[len(outer) :]
    if epi_loops:
        sch.vectorize(epi_loops[-1])
    _pad_per_tile(sch, main)
    _schedule_root_blocks(sch, main, params)


# A padding producer computed inside the contraction's outermost loop may redo at most this
# fraction more work than computing it once (the halo rows of neighbouring tiles).
_PAD_PER_TILE_REDO = 1.25


def _pad_per_tile(sch: s_tir.Schedule, main: SBlockRV) -> None:
    """A depthwise conv's padding, computed per tile of the outermost (parallel) loop into a
    buffer that stays in L1, instead of for the whole tensor before the conv: each channel
    reads only its own input plane. Taken only when that redoes at most
    ``_PAD_PER_TILE_REDO`` of the padding's work (a dense conv's tile reads every channel).
    For a stride-2 conv the padded plane is also stored column-deinterleaved (even columns,
    then odd) and written in that order, one vector per half row, so each tap reads a
    contiguous vector instead of a stride-2 gather.

    Measured on ShuffleNet's NCHW depthwise 3x3 convs (one thread, the padding before the conv
    -> per channel): stride 2, 112 channels at 56x56 0.39 -> 0.18 ms (0.29 without the
    deinterleave), 136 at 28x28 0.099 -> 0.042, 272 at 14x14 0.049 -> 0.024 (0.147 with the
    deinterleaved plane written by scalars: vector loads right after scalar stores to the
    same lines stall); stride 1, 136 at 28x28 0.093 -> 0.044, 272 at 14x14 0.037 -> 0.028,
    544 at 7x7 0.033 -> 0.020. ShuffleNet's first conv (3 -> 24, stride 2, padding per row
    tile) stays at 0.38 ms."""
    loops = sch.get_loops(main)
    if not loops:
        return
    for pad in sch.get_producers(main):
        if not _is_padding(sch, pad) or not _is_root_level(sch, pad, main):
            continue
        total = math.prod(_extents(sch, sch.get_loops(pad)))
        trial = sch.copy()
        try:
            trial.compute_at(pad, loops[0])
        except _SCHEDULE_ERRORS:
            continue
        inside = trial.get_loops(pad)[1:]
        if math.prod(_extents(trial, inside)) * _extents(sch, loops[:1])[0] > (
            _PAD_PER_TILE_REDO * total
        ):
            continue
        stride, dilation = _column_step(sch, main)
        shape = sch.get(pad).writes[0].source.shape
        if stride == 2 and dilation == 1 and int(shape[-1]) % 2 == 0:
            split = tirx.IndexMap.from_func(
                lambda *i: [*i[:-1], i[-1] % 2, i[-1] // 2], ndim=len(shape)
            )
            sch.transform_layout(pad, ("write", 0), split)
            sch.transform_block_layout(pad, split)
        sch.compute_at(pad, loops[0])
        half_row = sch.get_loops(pad)[-1]
        if _extents(sch, [half_row])[0] <= 16:
            sch.vectorize(half_row)


# --------------------------------------------------------------------------------------------
# Convolutions with packed weights (``pack_conv_weights``): vectors over output channels

PACKED_CONV_ATTR = "tvmforge.packed_conv"

# Weights up to this size stay in the (per-core) L2 cache while the output is swept tile by
# tile; larger weights are swept once per block of output channels instead.
_WEIGHT_CACHE_BYTES = 1 << 20
# Outputs bigger than this are written a block of channels at a time (the weight-block
# order), by tiles of at most ``_STREAMED_TILE_BLOCKS`` vectors of channels: each channel is
# a separate write stream in NCHW, and the tile-by-tile order over every channel keeps 64-256
# streams open, more than the prefetchers follow. Measured (2 threads, output cold in cache
# as in a model): SqueezeNet's first conv (3->64, 3x3 stride 2, 64x111x111 out) 1.07 ->
# 0.60 ms, ResNet-50's 1x1 64->256 at 56x56 with its residual 0.89 -> 0.65 ms.
_STREAMED_OUTPUT_BYTES = 1 << 20
_STREAMED_TILE_BLOCKS = 2
# ... as long as the input, read once per block of channels, fits this (1x1 256->128 at
# 56x56, 3.2 MB of input: 0.85 -> 1.73 ms in that order).
_STREAMED_INPUT_BYTES = 1 << 20


def _column_iter(stmt: tirx.SBlock) -> tirx.IterVar:
    """A packed conv's output-column iterator ``x``: the 4th of ``n, f, y, x, rc, ry, rx``
    (NCHW) or ``n, f, y, x, v, rc, ry, rx`` (blocked), the 5th of a Winograd product's
    ``sample, point, f, y, x, v, rc, ry, rx``."""
    return stmt.iter_vars[4 if len(stmt.iter_vars) == 9 else 3]


def _input_read(sch: s_tir.Schedule, main: SBlockRV) -> int | None:
    """Index in the conv block's reads of its input: the buffer read along the output
    columns (not the accumulator, not the weights), NCHW, blocked ``[n, c/B, h, w, B]`` or a
    Winograd product's ``[sample, point, c/B, 1, tile, B]``."""
    stmt = sch.get(main)
    x_var = _column_iter(stmt).var
    out = stmt.writes[0].source
    for index, region in enumerate(stmt.reads):
        rank = len(region.region)
        if (
            rank in (4, 5, 6)
            and not region.source.same_as(out)
            and _uses_var(region.region[rank - 2 if rank == 6 else 3].min, x_var)
        ):
            return index
    return None


def _input_bytes(sch: s_tir.Schedule, main: SBlockRV) -> int:
    """Bytes of the conv's input (0 when it is not found)."""
    index = _input_read(sch, main)
    if index is None:
        return 0
    buf = sch.get(main).reads[index].source
    return math.prod(int(d) for d in buf.shape) * tvm.runtime.DataType(buf.dtype).bits // 8

# The same for a 1x1 stride-1 conv's channel tile, which then reads its input packed by tile
# columns (``_pack_input_columns``). Measured in ResNet-50 (in the model, 2 threads, AVX-512):
# 1x1 256->1024 at 14x14 (1 MiB of weights) 0.72 -> 0.49 ms, 1024->512 (2 MiB) 1.00 -> 0.81;
# without the packing, a 3x3 or a strided 1x1 gains nothing from the earlier switch (1x1
# 256->512 stride 2, 512 KiB: 1.00 -> 1.29 ms).
_PACKED_INPUT_WEIGHT_CACHE_BYTES = 128 << 10


def _packed_block(sch: s_tir.Schedule, block: SBlockRV) -> int | None:
    value = sch.get(block).annotations.get(PACKED_CONV_ATTR)
    return None if value is None else int(value)


def _packed_conv_blocks(
    sch: s_tir.Schedule, main: SBlockRV, kinds: str
) -> tuple[SBlockRV, int, SBlockRV]:
    """A packed conv's blocks after inlining its injective producers: the conv (its loops
    must bind its iterators in order, of the given kinds: ``SSSSRRR`` for NCHW,
    ``SSSSSRRR`` blocked, or with one more leading ``S``: a Winograd product's sample), its
    packing block size, and its single epilogue."""
    main_name = sch.get(main).name_hint
    block = _packed_block(sch, main)
    _inline_injective(sch, keep={main_name})
    main = sch.get_sblock(main_name)
    if not _loops_match_iters(sch, main) or _iter_kinds(sch, main) not in (kinds, "S" + kinds):
        raise ValueError(f"packed conv loops are not {kinds}")
    return main, block, _single_epilogue(sch, main)


def packed_conv_tile(
    channel_blocks: int,
    width: int,
    registers: int,
    kernel_w: int = 1,
    stride: int = 1,
    dilation: int = 1,
    max_blocks: int = 4,
    accumulators: int | None = None,
) -> tuple[int, int]:
    """Register tile ``(nf, xi)``: ``nf`` vectors of output channels by ``xi`` output columns.

    ``nf * xi`` accumulators take at most half the vector registers (the rest hold the weight
    vectors and the broadcast inputs; measured: 28 accumulators spill and run 30-50 % slower
    than 14-16). Among those tiles, the one with the fewest loads per FMA wins, then the wider
    one. Per ``(rc, ry)`` step a tile loads ``nf * kernel_w`` weight vectors and broadcasts
    the distinct input columns its ``xi`` outputs and ``kernel_w`` taps touch,
    ``(xi - 1) * stride + (kernel_w - 1) * dilation + 1`` (LLVM reuses a broadcast across
    taps), for ``nf * xi * kernel_w`` FMAs. ``nf`` divides the channel blocks and ``xi`` the
    output width, so no loop has a tail.
    """
    budget = max(registers // 2 if accumulators is None else min(registers // 2, accumulators), 1)
    best: tuple[float, int, int, int] | None = None
    for nf in _divisors(channel_blocks):
        for xi in _divisors(width):
            if nf * xi > budget or nf > max_blocks:
                continue
            columns = min(xi * kernel_w, (xi - 1) * stride + (kernel_w - 1) * dilation + 1)
            loads = nf * kernel_w + columns
            key = (loads / (nf * xi * kernel_w), -xi, nf, xi)
            if best is None or key < best:
                best = key
    return (1, 1) if best is None else (best[2], best[3])


def _column_step(sch: s_tir.Schedule, main: SBlockRV) -> tuple[int, int]:
    """``(stride, dilation)`` along the output width, read off the input access ``x*s + rx*d``."""
    stmt = sch.get(main)
    x_var, rx_var = _column_iter(stmt).var, stmt.iter_vars[-1].var
    for region in stmt.reads:
        index = region.region[-1].min
        if _uses_var(index, x_var) and _uses_var(index, rx_var):
            coeffs = tvm.sym.detect_linear_equation(index, [x_var, rx_var])
            if len(coeffs) == 3 and all(isinstance(c, tirx.IntImm) for c in coeffs[:2]):
                return int(coeffs[0].value), int(coeffs[1].value)
    return 1, 1


def packed_pixel_tile(block: int, plane_vectors: int, registers: int) -> tuple[int, int] | None:
    """Register tile ``(r, vp)`` of a 1x1 conv over the flattened plane, or ``None``.

    ``r`` output channels (a divisor of the packing block, so their weights are ``r``
    consecutive floats) by ``vp`` vectors of pixels (a divisor of the plane's vectors).
    Used only when it needs at most as many loads per FMA as an 8x2 tile, ``10/16``;
    otherwise the channel tile of ``packed_conv_tile`` is the better one.
    """
    budget = registers * 3 // 4
    best: tuple[float, int, int, int] | None = None
    for r in _divisors(block):
        for vp in _divisors(plane_vectors):
            if r < 2 or r * vp > budget:
                continue
            key = ((r + vp) / (r * vp), -vp, r, vp)
            if best is None or key < best:
                best = key
    if best is None or best[0] > 10 / 16:
        return None
    return best[2], best[3]


def _pack_input_columns(sch: s_tir.Schedule, main: SBlockRV, xi: int) -> None:
    """Copy a 1x1 conv's input to ``[n, y, x // xi, c, x % xi]`` (output pixels) first.

    The channel tile broadcasts ``xi`` input columns per reduction step; in NCHW those are
    ``xi`` floats of a different cache line every step (28 of 64 bytes for ``xi = 7``, fewer
    with a stride), so a 1x1 conv swept by weight blocks reads the input from L2 at line
    granularity. Packed, a tile's reduction streams ``xi * C`` consecutive floats. The copy
    (``reindex``: the input as the block's iterators see it, strides applied) is one pass
    over the input, next to ``C`` passes' worth of multiply-adds.
    """
    index = _input_read(sch, main)
    if index is None:
        return
    copy = sch.reindex(main, ("read", index))
    shape = [int(d) for d in sch.get(main).reads[index].source.shape]
    if len(shape) != 4 or shape[2] % xi:  # expected [n, y, x, c]
        return
    packed = tirx.IndexMap.from_func(lambda a, h, w, c: [a, h, w // xi, c, w % xi], ndim=4)
    sch.transform_layout(copy, ("write", 0), packed)
    sch.transform_block_layout(copy, packed)


def _schedule_packed_conv(sch: s_tir.Schedule, main: SBlockRV, params: CpuScheduleParams) -> None:
    """Direct convolution, NCHW in and out, weights ``[F/B, C, KH, KW, B]``.

    Channel tile (the general case): ``nf`` vectors of ``B`` output channels x ``xi`` output
    columns of one row, kept in registers (a ``local`` accumulator laid out ``[.., xi, B]`` so
    each accumulator is one vector) across the whole ``(rc, ry, rx)`` reduction; per reduction
    step ``nf`` weight vectors are loaded and ``xi`` input values broadcast. The epilogue
    (bias, activation, residual) runs on the tile, vectorized over the channels, and writes
    NCHW with a stride: a scatter, whose cost only matters when the reduction is short.
    Tiles run output-row by output-row with the weights held in cache, or, for weights too
    big for it, weight block by weight block; a 1x1 stride-1 conv then first packs its input
    by tile columns (``_pack_input_columns``).

    Pixel tile (1x1 stride-1 convs whose plane is a whole number of vectors, e.g. 56x56): ``r``
    output channels x ``vp`` vectors of the flattened ``y * W + x`` plane; the weights are
    broadcast (``r`` consecutive floats of the packed block) and the input and the epilogue
    are contiguous vectors, so no scatter.

    An epilogue that is not elementwise on the conv output (a squeeze-excitation gate
    multiplied into the whole feature map) is declined: the contraction recipe takes it.
    """
    main, block, epilogue = _packed_conv_blocks(sch, main, "SSSSRRR")
    n, f, y, x, rc, ry, rx = sch.get_loops(main)
    ext_f, ext_y, ext_x, ext_rc, ext_ry, ext_rx = _extents(sch, [f, y, x, rc, ry, rx])
    epi_ext, conv_ext = _extents(sch, sch.get_loops(epilogue)), _extents(sch, [n, f, y, x])
    cropped = (  # zero filters padded F to the vector width; the epilogue keeps the real ones
        len(epi_ext) == 4 and epi_ext[0] == conv_ext[0] and epi_ext[2:] == conv_ext[2:]
        and conv_ext[1] - block < epi_ext[1] < conv_ext[1]
    )
    if epi_ext != conv_ext and not cropped:
        # e.g. a squeeze-excitation gate: a conv on a 1x1 pooled map whose epilogue multiplies
        # it into the whole feature map. Computed at the tile, that epilogue would be the
        # whole map per tile (and unrolled: minutes of LLVM on PP-OCRv4 det).
        raise ValueError("the epilogue is not elementwise on the conv output")
    if ext_f % block:
        raise ValueError("output channels not a multiple of the packing block")
    weight_bytes = ext_f * ext_rc * ext_ry * ext_rx * 4
    # A big output is written channel block by channel block (a few write streams at a
    # time) rather than tile by tile across every channel (one stream per channel).
    # Only when the input stays in cache across the channel blocks: each block reads it all.
    big_output = (
        ext_f * ext_y * ext_x * 4 > _STREAMED_OUTPUT_BYTES
        and _input_bytes(sch, main) <= _STREAMED_INPUT_BYTES
    )
    # Pixel vectors only where the plane is a whole number of registers: vectors of 14 for
    # a 14x14 plane (LLVM splits them 8 + 4 + 2) lose to the channel tile with a packed
    # input (1x1 256->1024 at 14x14 with its residual: 0.51 against 0.44 ms).
    plane_vector = params.lanes if (ext_y * ext_x) % params.lanes == 0 else None
    pixel = None
    if ext_ry == ext_rx == 1 and plane_vector:
        pixel = packed_pixel_tile(block, ext_y * ext_x // plane_vector, params.vector_registers)
    if pixel is not None:
        _flatten_plane(sch, main, epilogue, plane_vector, force=True)
        if len(sch.get_loops(main)) != 6:
            pixel = None  # not a plain [.., y, x] access (stride, padding): channel tile
    if pixel is not None:
        r, vp = pixel
        n, f, plane, rc, ry, rx = sch.get_loops(main)
        f_o, f_i = sch.split(f, factors=[None, r])
        p_o, p_v, p_l = sch.split(plane, factors=[None, vp, plane_vector])
        if weight_bytes <= _WEIGHT_CACHE_BYTES and not big_output:
            outer = [n, p_o, f_o]
        else:
            outer = [n, f_o, p_o]
        sch.reorder(*outer, rc, ry, rx, f_i, p_v, p_l)
        _epilogue_at(sch, epilogue, outer[-1])
        sch.set_scope(main, 0, _ACC_SCOPE)
        sch.vectorize(p_l)
        sch.unroll(p_v)
        sch.unroll(f_i)
    else:
        stride, dilation = _column_step(sch, main)
        nf, xi = packed_conv_tile(
            ext_f // block, ext_x, params.vector_registers, ext_rx, stride, dilation,
            max_blocks=_STREAMED_TILE_BLOCKS if big_output else 4,
        )
        f_o, f_v = sch.split(f, factors=[None, block])
        f_oo, f_oi = sch.split(f_o, factors=[None, nf])
        x_o, x_i = sch.split(x, factors=[None, xi])
        pack = ext_ry == ext_rx == 1  # the input packed by tile columns
        limit = _PACKED_INPUT_WEIGHT_CACHE_BYTES if pack else _WEIGHT_CACHE_BYTES
        if weight_bytes <= limit and not big_output:
            outer = [n, y, x_o, f_oo]  # input tile reused across all output channels
        else:
            outer = [n, f_oo, y, x_o]  # a block of weights reused across the whole output
            if pack:
                _pack_input_columns(sch, main, xi)
        sch.reorder(*outer, rc, ry, rx, f_oi, x_i, f_v)
        _epilogue_at(sch, epilogue, outer[-1])
        sch.set_scope(main, 0, _ACC_SCOPE)
        sch.transform_layout(
            main,
            ("write", 0),
            tirx.IndexMap.from_func(lambda a, b, c, d: [a, b // block, c, d, b % block], ndim=4),
        )
        sch.vectorize(f_v)
        sch.unroll(x_i)
        sch.unroll(f_oi)
    fused = sch.fuse(*outer)
    if params.num_cores > 1:
        sch.parallel(fused)
    sch.decompose_reduction(main, rc)
    epi_loops = sch.get_loops(epilogue)[1:]
    if pixel is not None:
        e_n, e_f, e_p = epi_loops
        e_pv, e_pl = sch.split(e_p, factors=[None, plane_vector])
        sch.vectorize(e_pl)
        sch.unroll(e_pv)
        sch.unroll(e_f)
    else:
        e_n, e_f, e_y, e_x = epi_loops
        e_fo, e_fi = sch.split(e_f, factors=[None, block])
        sch.reorder(e_n, e_y, e_fo, e_x, e_fi)
        sch.vectorize(e_fi)
        sch.unroll(e_x)
        sch.unroll(e_fo)
    _schedule_root_blocks(sch, main, params)


# A 1x1 conv's channel block of weights re-read from L1 at every tile of the plane: at most
# this much (of a 48 KiB L1D).
_L1_WEIGHT_BLOCK_BYTES = 32 << 10


def _flat_conv_tile(
    channel_blocks: int, plane: int, registers: int, accumulators: int | None = None
) -> tuple[int, int] | None:
    """Register tile of a 1x1 stride-1 conv swept over the flattened plane block of channels
    by block: two vectors of channels by the largest divisor of the plane from 4 to 8 pixels
    (14-16 accumulators). Measured in ResNet-50 (1x1 256->1024 at 14x14 with its residual,
    x6, in the model): 2x7 by channel blocks 2.36 ms, the 4x4 input-tile order 2.86 ms."""
    limit = registers // 2 if accumulators is None else min(registers // 2, accumulators)
    pixels = [d for d in _divisors(plane) if 4 <= d <= 8 and 2 * d <= limit]
    if channel_blocks % 2 or not pixels:
        return None
    return 2, max(pixels)


# A K-blocked 1x1 conv re-reads a chunk of its input per block of output channels: only for
# inputs up to this size (measured up to ResNet-50's 512 x 28 x 28, 1.6 MB).
_K_BLOCKED_INPUT_BYTES = 2 << 20


def _merge_blocked_plane(
    sch: s_tir.Schedule, main: SBlockRV, epilogue: SBlockRV, width: int
) -> None:
    """``y, x`` -> one plane axis (``y * width + x``) in a blocked conv, its accumulator and
    its epilogue, so that a tile of the plane is an exact region (``reverse_compute_at``
    stays exact)."""

    def merge(ndim: int):
        return tirx.IndexMap.from_func(
            lambda *vs: [*vs[:2], vs[2] * width + vs[3], *vs[4:]], ndim=ndim
        )

    sch.transform_layout(main, ("write", 0), merge(5))
    sch.transform_block_layout(main, merge(8))
    sch.transform_block_layout(epilogue, merge(5))


# A block of weights that a flat conv's sweep re-reads over at most this many tiles is
# fetched (cold, from memory) at a rate its few tiles of compute cannot hide: such a conv
# runs K-blocked too, in chunks of at most _SHORT_SWEEP_CHUNK_BYTES of the block's weights.
# ResNet-50's Winograd product at 14x14 (256 -> 256 channels per point over 49 tiles: 7
# tiles of 7 per block of 32 KiB), two threads: cold weights 0.499 -> 0.432 ms (chunks of
# 128 channels 0.450, 32 0.430), warm 0.368 -> 0.346; at 28x28 (128 channels, 16 KiB
# blocks) chunking is slower (cold 0.244 -> 0.272), as for 1x1 256 -> 1024 at 14x14 (28
# tiles a block; cold 0.381 -> 0.432).
_SHORT_SWEEP_TILES = 8
_SHORT_SWEEP_CHUNK_BYTES = 8 << 10
_SHORT_SWEEP_MIN_BLOCK_BYTES = 32 << 10


def _short_sweep_chunk(
    channels: int, tile: tuple[int, int], plane: int, block: int
) -> int | None:
    """The reduction chunk for a flat conv whose weight block (``tile[0]`` vectors of
    ``block`` channels x ``channels``) is swept over at most ``_SHORT_SWEEP_TILES`` tiles of
    ``tile[1]`` pixels, or ``None`` when the sweep is long or the block small."""
    nf, xi = tile
    block_bytes = nf * block * channels * 4
    if _SHORT_SWEEP_TILES is None or plane // xi > _SHORT_SWEEP_TILES:
        return None
    if block_bytes < _SHORT_SWEEP_MIN_BLOCK_BYTES:
        return None
    return _largest_chunk(channels, _SHORT_SWEEP_CHUNK_BYTES // (nf * block * 4))


def _largest_chunk(channels: int, limit: int) -> int | None:
    """The largest proper divisor of ``channels`` that is a multiple of 16 and at most
    ``limit``, or ``None``."""
    fits = [d for d in _divisors(channels) if d <= limit and d % 16 == 0 and d < channels]
    return max(fits) if fits else None


def _reduction_chunk(
    channels: int, tile_channels: int, taps: int = 1, budget: int = _L1_WEIGHT_BLOCK_BYTES // 2
) -> int | None:
    """Input channels per reduction chunk of a K-blocked conv: the largest divisor of
    ``channels`` (a multiple of 16) whose weights for ``tile_channels`` output channels and
    ``taps`` window taps fit ``budget`` bytes (1x1: half of ``_L1_WEIGHT_BLOCK_BYTES``, 128
    channels for a tile of 32; 3x3: all of it, 16 channels); ``None`` when the whole
    reduction fits ``_L1_WEIGHT_BLOCK_BYTES`` (nothing to block) or no such divisor exists."""
    if tile_channels * channels * taps * 4 <= _L1_WEIGHT_BLOCK_BYTES:
        return None
    # (the whole reduction overflows the budget here, so a fitting chunk is a proper divisor)
    return _largest_chunk(channels, budget // (tile_channels * taps * 4))


def _schedule_flat_conv_k_blocked(
    sch: s_tir.Schedule,
    main: SBlockRV,
    epilogue: SBlockRV,
    tile: tuple[int, int],
    chunk: int,
    row: int | None,
    params: CpuScheduleParams,
) -> None:
    """A 1x1 stride-1 blocked conv whose channel block's weights overflow L1 (512 input
    channels and more): per block of ``tile[0]`` channel vectors (in parallel), the reduction
    runs in chunks of ``chunk`` input channels, each chunk's weights (16 KiB) held in L1 while
    the register tile sweeps the whole flattened plane, the block's partial sums kept in a
    buffer of one plane (L1/L2) between chunks; the epilogue runs on the block at the end.
    ``row``: the plane's width when ``y, x`` still need merging into one axis. Measured in
    ResNet-50 (2 threads, interleaved A/B, shipped logs): 29.11 -> 28.07 ms; per kernel on one
    thread, 1x1 1024->256 at 14x14 0.68 -> 0.63 ms, 2048->512 at 7x7 0.74 -> 0.69, 512->128 at
    28x28 0.68 -> 0.65 (the input-tile order streamed the whole weight once per plane tile).

    A windowed conv (3x3, any stride) whose weights stream and whose plane is small takes the
    same schedule over its ``y, x`` rows, a chunk's ``[c, ky, kx]`` innermost as its weights
    lie: ResNet-50's 3x3 512 at 7x7 (9.4 MB of weights), two threads, cold weights 1.01 ->
    0.81 ms; the model 26.28 -> 25.26 ms (the whole block's 576 KiB was fetched by the first
    row of tiles, then re-read from L2 by the next six)."""
    nf, xi = tile
    if row is not None:
        _merge_blocked_plane(sch, main, epilogue, row)
        n, f, plane, v, rc, ry, rx = sch.get_loops(main)
        rows = [plane]
    else:
        n, f, y, plane, v, rc, ry, rx = sch.get_loops(main)
        rows = [y, plane]
    block_elems = nf * math.prod(_extents(sch, [v, rc, ry, rx]))  # one block's weights
    p_o, x_i = sch.split(rows[-1], factors=[None, xi])
    f_o, f_i = sch.split(f, factors=[None, nf])
    rc_o, rc_i = sch.split(rc, factors=[None, chunk])
    if _extents(sch, [ry, rx]) == [1, 1]:
        sch.reorder(n, f_o, rc_o, *rows[:-1], p_o, ry, rx, rc_i, f_i, x_i, v)
    else:  # a chunk's weights [c, ky, kx, b] in the order they lie in memory
        sch.reorder(n, f_o, rc_o, *rows[:-1], p_o, rc_i, ry, rx, f_i, x_i, v)
    _epilogue_at(sch, epilogue, f_o)
    sch.vectorize(v)
    sch.unroll(x_i)
    sch.unroll(f_i)
    fused = sch.fuse(n, f_o)
    if params.num_cores > 1:
        sch.parallel(fused)
    sch.decompose_reduction(main, rc_o)
    sch.vectorize(sch.get_loops(epilogue)[-1])
    if _WEIGHT_PREFETCH:
        _prefetch_weights(
            sch,
            main,
            fused,
            p_o,
            block_elems=block_elems,
            rows=nf,
            chunks=_extents(sch, [rc_o])[0],
            steps_per_slice=math.prod(_extents(sch, [*rows[:-1], p_o])),
            distance=_K_BLOCKED_PREFETCH_DISTANCE,
        )
    _schedule_root_blocks(sch, main, params)


# Prefetch the next block of weights while a blocked conv computes with the current one
# (``weight_prefetch``). Measured on ResNet-50: see that module.
_WEIGHT_PREFETCH = True
# The register tile's accumulator buffer: "global", not "local". TVM's LowerTVMBuiltin puts
# a CPU buffer on the stack only when its scope is global and it is under 1 KiB; any other
# goes through TVMBackendAllocWorkspace, which the parallel body then calls (with a memset
# and a free) once per tile, and LLVM must store the accumulators to that memory. Global:
# an alloca that LLVM keeps in registers. ResNet-50 in the model, interleaved: 26.81 ->
# 26.55 ms; the Winograd product at 14x14 0.385 -> 0.376 ms.
_ACC_SCOPE = "global"
# ... and under 1 KiB (``kMaxStackAlloca``): a tile of 16 vectors of 16 floats is 1 KiB.
_STACK_TILES = True


def _stack_accumulators(block: int) -> int | None:
    """The most float32 accumulator vectors of ``block`` lanes that stay under TVM's stack
    limit (1 KiB: 15 of 16 lanes); ``None`` when tiles are not capped."""
    return (1024 - 1) // (block * 4) if _STACK_TILES else None
_K_BLOCKED_PREFETCH_DISTANCE = 2
_DIRECT_PREFETCH_DISTANCE = 1
_PREFETCH_WINOGRAD_PRODUCT = True
_K_BLOCKED_WINDOWS = True
# The K-blocked schedule keeps a block's partial sums over the whole plane between chunks:
# planes up to this size (two vectors of channels at 14x14: 25 KiB, L1/L2).
_K_BLOCKED_PLANE_BYTES = 32 << 10


def _prefetch_weights(
    sch: s_tir.Schedule,
    main: SBlockRV,
    outer: LoopRV,
    step: LoopRV,
    **layout,
) -> bool:
    """Mark a blocked conv's weight prefetch (``mark_weight_prefetch``'s ``layout``) when its
    weights are a float32 parameter: the last buffer the conv reads."""
    func = sch.mod["main"]
    weight = sch.get(main).reads[-1].source
    index = next((i for i, p in enumerate(func.params) if p.same_as(weight)), None)
    if index is None:
        return False
    return mark_weight_prefetch(sch, outer, step, weight=index, **layout)


def _is_padded(sch: s_tir.Schedule, main: SBlockRV) -> bool:
    """Whether a padding block produces one of the conv's inputs."""
    return any(_is_padding(sch, p) for p in sch.get_producers(main))


def _schedule_packed_conv_nchwc(
    sch: s_tir.Schedule, main: SBlockRV, params: CpuScheduleParams
) -> None:
    """Direct convolution with a blocked output ``[N, F/B, OH, OW, B]`` (``nchwc_layout``).

    The channel tile of ``_schedule_packed_conv`` (``nf`` vectors of ``B`` output channels x
    ``xi`` output columns in registers across the whole reduction, weight vectors loaded,
    inputs broadcast), but the tile *is* a block of the output: the accumulators, the
    epilogue (bias, activation, residual) and the store are contiguous vectors, with no
    scatter or gather. A 1x1 stride-1 conv runs its tile over the flattened plane (its
    input and output are ``[.., H * W, B]`` in memory), so ``xi`` divides ``H * W`` rather
    than a ragged row (14, 7). Tiles run output-row by output-row with the weights held in
    cache, or, for weights too big for it, weight block by weight block. A 1x1 conv sweeps the
    plane block by block of two channel vectors when that block's weights fit L1 and its input
    fits L2 (``_flat_conv_tile``). Measured in ResNet-50 (in the model, 2 threads, both orders
    interleaved): 1x1 256->1024 at 14x14 with its residual 2.86 -> 2.36 ms for the six,
    128->512 at 28x28 1.63 -> 1.52 ms for the four; with a 3 MB input the input-tile order
    stays faster (256->64 at 56x56: 0.72 against 1.18 ms). With 512 or more input channels (a
    block of 64 KiB) that sweep lost to the input-tile order (512->128 at 28x28: 1.44 against
    1.07 ms); such convs split their reduction into chunks whose weights fit L1 instead
    (``_schedule_flat_conv_k_blocked``).
    """
    main, block, epilogue = _packed_conv_blocks(sch, main, "SSSSSRRR")
    winograd_product = len(sch.get_loops(main)) == 9
    if winograd_product:  # its sample and point are the batch
        if _extents(sch, sch.get_loops(epilogue)) != _extents(sch, sch.get_loops(main)[:6]):
            raise ValueError("the epilogue is not elementwise on the Winograd product")
        sch.fuse(*sch.get_loops(main)[:2])
        sch.fuse(*sch.get_loops(epilogue)[:2])
    n, f, y, x, v, rc, ry, rx = sch.get_loops(main)
    ext_f, ext_y, ext_x, ext_v, ext_rc, ext_ry, ext_rx = _extents(sch, [f, y, x, v, rc, ry, rx])
    if ext_v != block or _extents(sch, sch.get_loops(epilogue)) != _extents(
        sch, [n, f, y, x, v]
    ):
        raise ValueError("the epilogue is not elementwise on the conv output")
    stride, dilation = _column_step(sch, main)
    weight_bytes = ext_f * block * ext_rc * ext_ry * ext_rx * 4
    flat = ext_ry == ext_rx == 1 and stride == 1 and not _is_padded(sch, main)
    width = ext_y * ext_x if flat else ext_x
    stack = _stack_accumulators(block)
    nf, xi = packed_conv_tile(
        ext_f, width, params.vector_registers, 1 if flat else ext_rx, stride, dilation,
        accumulators=stack,
    )
    weight_outer = weight_bytes > _WEIGHT_CACHE_BYTES
    if flat:
        # Swept block of channels by block of channels, a tile's weights are re-read at every
        # tile of the plane: from L1 when they fit it, and the input (re-read per block) from
        # L2 when it fits that. Otherwise the input tile stays put and the weights stream.
        flat_tile = _flat_conv_tile(ext_f, width, params.vector_registers, stack)
        if (
            flat_tile is not None
            and flat_tile[0] * block * ext_rc * 4 <= _L1_WEIGHT_BLOCK_BYTES
            and _input_bytes(sch, main) <= _STREAMED_INPUT_BYTES
        ):
            chunk = _short_sweep_chunk(ext_rc, flat_tile, width, block)
            if chunk is not None:
                _schedule_flat_conv_k_blocked(
                    sch, main, epilogue, flat_tile, chunk, ext_x if ext_y > 1 else None, params
                )
                return
            nf, xi = flat_tile
            weight_outer = True
        elif flat_tile is not None and _input_bytes(sch, main) <= _K_BLOCKED_INPUT_BYTES:
            chunk = _reduction_chunk(ext_rc, flat_tile[0] * block)
            if chunk is not None:
                _schedule_flat_conv_k_blocked(
                    sch, main, epilogue, flat_tile, chunk, ext_x if ext_y > 1 else None, params
                )
                return
    if (
        _K_BLOCKED_WINDOWS
        and not flat
        and not winograd_product
        and weight_outer
        and ext_f % 2 == 0
        and 2 * ext_y * ext_x * block * 4 <= _K_BLOCKED_PLANE_BYTES
    ):
        # a windowed conv whose weights stream (3x3 with 256-512 channels at 7x7-14x14): the
        # same chunked reduction, each chunk's weights re-read from L1 over the whole plane
        chunk = _reduction_chunk(
            ext_rc, 2 * block, ext_ry * ext_rx, budget=_L1_WEIGHT_BLOCK_BYTES
        )
        tile = packed_conv_tile(
            ext_f, ext_x, params.vector_registers, ext_rx, stride, dilation, max_blocks=2,
            accumulators=stack,
        )
        if chunk is not None and tile[0] == 2:
            _schedule_flat_conv_k_blocked(sch, main, epilogue, tile, chunk, None, params)
            return
    merged = flat and ext_y > 1  # a plane of one row (Winograd's tiles) is flat already
    if merged:
        _merge_blocked_plane(sch, main, epilogue, ext_x)
        n, f, plane, v, rc, ry, rx = sch.get_loops(main)
        p_o, x_i = sch.split(plane, factors=[None, xi])
        rows = [p_o]
    else:
        x_o, x_i = sch.split(x, factors=[None, xi])
        rows = [y, x_o]
    f_o, f_i = sch.split(f, factors=[None, nf])
    if not weight_outer:
        outer = [n, *rows, f_o]  # an input tile reused across all output channels
    else:
        outer = [n, f_o, *rows]  # a block of weights reused across the whole output
    sch.reorder(*outer, rc, ry, rx, f_i, x_i, v)
    _epilogue_at(sch, epilogue, outer[-1])
    sch.set_scope(main, 0, _ACC_SCOPE)
    sch.vectorize(v)
    sch.unroll(x_i)
    sch.unroll(f_i)
    iters_per_slice = math.prod(_extents(sch, rows)) if weight_outer else 1
    fused = sch.fuse(*outer)
    if params.num_cores > 1:
        sch.parallel(fused)
    sch.decompose_reduction(main, rc)
    if _WEIGHT_PREFETCH and (_PREFETCH_WINOGRAD_PRODUCT or not winograd_product):
        # the next block of weights, a share per output tile of the current block; skipped
        # (too many lines a tile) for the 3x3 convs whose block is re-read over few tiles:
        # spreading those over chunks of the reduction measured slower (3x3 512 at 7x7,
        # 0.77 -> 0.84 ms warm, no gain cold).
        _prefetch_weights(
            sch,
            main,
            fused,
            fused,
            block_elems=nf * block * ext_rc * ext_ry * ext_rx,
            rows=nf,
            steps_per_slice=iters_per_slice,
            distance=_DIRECT_PREFETCH_DISTANCE,
        )
    epi_loops = sch.get_loops(epilogue)
    inner = epi_loops[-3:] if merged else epi_loops[-4:]  # the tile's [f, (y,) x, b]
    sch.vectorize(inner[-1])
    for loop in inner[:-1]:
        sch.unroll(loop)
    _schedule_root_blocks(sch, main, params)


# --------------------------------------------------------------------------------------------
# Matmuls with packed weights (``pack_dense_weights``): panels of columns, panels outermost

PACKED_DENSE_ATTR = "tvmforge.packed_dense"

# Rows of the register tile at most: 8 rows x 2 vectors = 16 accumulators. Measured on
# [128, 768] x [768, 3072], one thread: 8 x 32 148 GFLOP/s, 16 x 32 (32 accumulators, all
# the registers) 60, 16 x 16 63, 4 x 64 69.
_DENSE_TILE_ROWS = 8


def _schedule_packed_dense(sch: s_tir.Schedule, main: SBlockRV, params: CpuScheduleParams) -> None:
    """Matmul ``x[.., M, K] x Wp[N/B, K, B]``: ``m_r`` rows x ``B`` columns in registers.

    Loop order ``[panel] [batch] [row tile] (k) [m_r (unrolled)] [B (vectorized)]``: the panel
    loop is outermost so one panel (``K * B`` floats, contiguous) stays in cache while every
    row tile streams through it, and the parallel threads split the panels. Per ``k`` the
    tile loads ``B / lanes`` weight vectors and broadcasts ``m_r`` inputs. The fused epilogue
    (bias, GELU, residual) runs on the tile. Measured on BERT's ``[128, 768] x [768, 3072]``,
    one thread: rows outermost (the contraction recipe's order) 59 GFLOP/s, panels outermost
    148.
    """
    main_name = sch.get(main).name_hint
    block = int(sch.get(main).annotations[PACKED_DENSE_ATTR])
    _inline_injective(sch, keep={main_name})
    main = sch.get_sblock(main_name)
    kinds = _iter_kinds(sch, main)
    if not _loops_match_iters(sch, main) or not kinds.endswith("SSR") or kinds.count("R") != 1:
        raise ValueError(f"packed matmul loops are not [.., m, n, k] ({kinds})")
    epilogue = _single_epilogue(sch, main)
    *lead, m, n, k = sch.get_loops(main)
    ext_m, ext_n = _extents(sch, [m, n])
    *epi_outer, epi_n = _extents(sch, sch.get_loops(epilogue))
    # the epilogue may slice off the zero columns that pad the panels (``pack_dense_weights``)
    if epi_outer != _extents(sch, [*lead, m]) or not ext_n - block < epi_n <= ext_n:
        raise ValueError("the epilogue is not elementwise on the matmul output")
    if ext_n % block:
        raise ValueError("columns not a multiple of the panel width")
    vregs = max(block // params.lanes, 1)
    rows = _largest_divisor_at_most(ext_m, min(params.accumulators // vregs, _DENSE_TILE_ROWS))
    n_o, n_i = sch.split(n, factors=[None, block])
    m_o, m_i = sch.split(m, factors=[None, rows])
    outer = [n_o, *lead, m_o]
    sch.reorder(*outer, k, m_i, n_i)
    _epilogue_at(sch, epilogue, outer[-1])
    sch.set_scope(main, 0, _ACC_SCOPE)
    sch.vectorize(n_i)
    if rows > 1:
        sch.unroll(m_i)
    _parallelize(sch, outer, params)
    sch.decompose_reduction(main, k)
    epi_loops = sch.get_loops(epilogue)[len(outer) :]
    if epi_loops:
        sch.vectorize(epi_loops[-1])
    _schedule_root_blocks(sch, main, params)


def _schedule_root_blocks(sch: s_tir.Schedule, main: SBlockRV, params: CpuScheduleParams) -> None:
    """The generic schedule for every block beside a scheduled contraction that has its own
    loop nest (a padding or packing producer); one that does not fit stays serial."""
    for other in sch.get_child_blocks(sch.get_sblock("root")):
        if _is_root_level(sch, other, main):
            try:
                _schedule_block_generic(sch, other, params)
            except _SCHEDULE_ERRORS as err:
                log.debug("producer %s left serial: %s", sch.get(other).name_hint, err)


def _is_root_level(sch: s_tir.Schedule, block: SBlockRV, main: SBlockRV) -> bool:
    """Whether the block has its own loop nest (not the contraction's tile)."""
    loops = sch.get_loops(block)
    if not loops:
        return False
    main_loops = sch.get_loops(main)
    if main_loops and sch.get(main_loops[0]).same_as(sch.get(loops[0])):
        return False
    return _loops_match_iters(sch, block)


# --------------------------------------------------------------------------------------------
# The pass


def _winograd_transform(sch: s_tir.Schedule) -> SBlockRV | None:
    """The block of a Winograd input or output transform (``passes/winograd.py``), if any."""
    from .winograd import WINOGRAD_ATTR

    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if WINOGRAD_ATTR in sch.get(block).annotations:
            return block
    return None


def schedule_prim_func(func: tirx.PrimFunc, params: CpuScheduleParams) -> tirx.PrimFunc | None:
    """Schedule one fused kernel; ``None`` when neither recipe applies without error.

    Parameters
    ----------
    func:
        An unscheduled PrimFunc from ``FuseTIR``.
    params:
        The CPU's vector width and core count.
    """
    from .batch_outer import has_symbolic_batch, schedule_batch_outer

    if has_symbolic_batch(func):  # a dynamic batch: a loop over the batch-1 kernel, if separable
        outer = schedule_batch_outer(func, params, schedule_prim_func)
        if outer is not None:
            return outer
    sch = s_tir.Schedule(func)
    main = _main_contraction(sch)
    transform = _winograd_transform(sch)
    if transform is not None:
        from .winograd import schedule_transform

        try:
            schedule_transform(sch, transform, params)
            return sch.mod["main"]
        except _SCHEDULE_ERRORS as err:
            log.debug("Winograd transform schedule failed, using the generic ones: %s", err)
            sch = s_tir.Schedule(func)
            main = _main_contraction(sch)
    if main is not None and PACKED_DENSE_ATTR in sch.get(main).annotations:
        try:
            _schedule_packed_dense(sch, main, params)
            return sch.mod["main"]
        except _SCHEDULE_ERRORS as err:
            log.debug("packed matmul schedule failed, using the contraction one: %s", err)
            sch = s_tir.Schedule(func)
            main = _main_contraction(sch)
    if main is not None and _packed_block(sch, main) is not None:
        try:
            if len(sch.get(main).iter_vars) in (8, 9):  # 9: a Winograd product
                _schedule_packed_conv_nchwc(sch, main, params)
                return insert_weight_prefetches(sch.mod["main"])
            _schedule_packed_conv(sch, main, params)
            return sch.mod["main"]
        except _SCHEDULE_ERRORS as err:
            log.debug("packed conv schedule failed, using the contraction one: %s", err)
            sch = s_tir.Schedule(func)
            main = _main_contraction(sch)
    pool = _window_pool(sch) if main is None else None
    if pool is not None:
        try:
            _schedule_pool(sch, pool, params)
            return sch.mod["main"]
        except _SCHEDULE_ERRORS as err:
            log.debug("pool schedule failed, using the generic one: %s", err)
            sch = s_tir.Schedule(func)
    if main is not None:
        try:
            _schedule_contraction(sch, main, params)
            return sch.mod["main"]
        except _SCHEDULE_ERRORS as err:
            log.debug("contraction schedule failed, using the generic one: %s", err)
            sch = s_tir.Schedule(func)
    try:
        _schedule_generic(sch, params, row_reductions=True)
        return sch.mod["main"]
    except _SCHEDULE_ERRORS as err:
        log.debug("row-reduction schedule failed, using the generic one: %s", err)
        sch = s_tir.Schedule(func)
    try:
        _schedule_generic(sch, params)
    except _SCHEDULE_ERRORS as err:
        log.debug("generic schedule failed, kernel left as is: %s", err)
        return None
    return sch.mod["main"]


def _is_scheduled(func: tirx.PrimFunc) -> bool:
    attrs = func.attrs
    return attrs is not None and SCHEDULED_ATTR in attrs and bool(attrs[SCHEDULED_ATTR])


def schedule_cpu_default(target: tvm.target.Target | None = None) -> tvm.transform.Pass:
    """The default CPU schedules as a module pass.

    Parameters
    ----------
    target:
        An ``llvm`` target; ``None`` reads ``tvm.target.Target.current()`` when the pass runs.

    Returns
    -------
    tvm.transform.Pass
        A module pass that schedules every PrimFunc not yet marked ``tirx.is_scheduled``.
    """

    @tvm.transform.module_pass(opt_level=0, name="ScheduleCpuDefault")
    def _pass(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        tgt = target if target is not None else tvm.target.Target.current(allow_none=False)
        params = CpuScheduleParams.from_target(tgt)
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            if _is_scheduled(func):
                # a tuning record replaying a default schedule carries its prefetch marks
                marked = insert_weight_prefetches(func)
                if not marked.same_as(func):
                    updates[gvar] = marked
                continue
            try:
                scheduled = schedule_prim_func(func, params)
            except Exception as err:
                log.debug("%s: scheduling failed, left as is: %s", gvar.name_hint, err)
                scheduled = None
            if scheduled is not None:
                updates[gvar] = scheduled.with_attr(SCHEDULED_ATTR, True)
        if not updates:
            return mod
        mod = mod.clone()  # never edit the caller's module in place
        for gvar, func in updates.items():
            mod.update_func(gvar, func)
        return mod

    return _pass
