"""Block analysis and loop helpers the schedule rules share: what a block computes (MAC, padding,
injective), its loops and bindings, vector splits, inlining and parallelizing."""

from __future__ import annotations

import itertools
import logging
import math

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.schedule import LoopRV, SBlockRV

from tvmforge.passes.schedule.params import _SCHEDULE_ERRORS, CpuScheduleParams

log = logging.getLogger(__name__)


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
        i
        for i, iv in enumerate(stmt.iter_vars)
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


# A loop nest with fewer iterations than this (vector lanes counted) runs on one thread: waking
# the pool's workers and joining them costs more than the work (the per-step gate split of an
# LSTM, a classifier's 128-wide LayerNorm: microseconds each).
PARALLEL_MIN_WORK = 8192


def _work(stmt) -> int:
    """Iterations of the loop nest ``stmt`` (every loop's extent; sequences added)."""
    if isinstance(stmt, tirx.For):
        extent = stmt.extent
        return (int(extent) if isinstance(extent, tirx.IntImm) else 1 << 20) * _work(stmt.body)
    if isinstance(stmt, tirx.SeqStmt):
        return sum(_work(s) for s in stmt.seq)
    if isinstance(stmt, s_tir.SBlockRealize):
        return _work(stmt.block.body)
    if isinstance(stmt, s_tir.SBlock):
        return _work(stmt.body)
    return 1


def _parallelize(
    sch: s_tir.Schedule, outer_loops: list[LoopRV], params: CpuScheduleParams
) -> LoopRV | None:
    """Fuse leading loops until they give every core enough work, and run them in parallel;
    a nest of under ``PARALLEL_MIN_WORK`` iterations stays on one thread."""
    if not outer_loops or params.num_cores <= 1:
        return None
    if _work(sch.get(outer_loops[0])) < PARALLEL_MIN_WORK:
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


def _column_iter(stmt: tirx.SBlock) -> tirx.IterVar:
    """A packed conv's output-column iterator ``x``: the 4th of ``n, f, y, x, rc, ry, rx``
    (NCHW) or ``n, f, y, x, v, rc, ry, rx`` (blocked), the 5th of a Winograd product's
    ``sample, point, f, y, x, v, rc, ry, rx``."""
    return stmt.iter_vars[4 if len(stmt.iter_vars) == 9 else 3]


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
