"""Batch-outer schedules: a kernel with a dynamic batch runs as a loop over batch-1 kernels.

The default CPU schedules (``schedule_cpu_default``) need static loop extents, so a fused
kernel whose buffers carry the symbolic batch ``n`` of a dynamic-batch model (``[n, 64, 55,
55]``) would stay a naive loop nest, tens of times slower than the same kernel with a fixed
batch. Most kernels of a vision model treat every sample on its own, though; for those this
module builds::

    for b in range(n):                      # serial: the batch-1 kernel is parallel itself
        x_1 = view of x[b]  (shape [1, ...], one per batch buffer)
        <the batch-1 kernel, scheduled with the normal static recipe, on the views>

How
---
1. ``batch_var``: the function's one symbolic var ``n``, the leading dim of some buffer
   params and nowhere else in the signature (weights carry no ``n``).
2. ``check_batch_separable``: every block that iterates over ``n`` does so with one spatial
   iterator ``v`` bound to an ``n``-extent loop, indexes the ``n`` dim of every batch buffer
   (params and allocated intermediates such as a stack's ``[2, n, ...]``) with ``v`` (or, as
   reshapes legalize, an index that simplifies to ``v % n``), uses ``v`` nowhere else and
   writes only batch buffers; no other block touches a batch buffer; ``n`` itself appears
   only as a loop extent, an iterator extent or a buffer dim.
   Anything else (a reduction over the batch, a reshape that mixes the batch into rows, an
   expression the checker does not know) is declined and the kernel keeps today's handling.
3. ``PrimFunc.specialize`` maps every batch param to a ``[1, ...]`` buffer, which binds
   ``n = 1`` in the whole function (intermediates shrink to one sample), and the caller's
   recipe schedules that static function.
4. ``wrap_batch_outer``: a function with the original params whose root block runs the
   scheduled body once per sample; each batch-1 param is re-declared (``DeclBuffer``) on the
   address of sample ``b`` of the original buffer, so the scheduled body is kept as it is.

A kernel declined as not batch-separable is reported to ``collect_declined`` (the build
warns with the count).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir import TensorLoad
from tvm.sym.analyzer import Analyzer

from tvmforge.passes.schedule.rule import ScheduleRule

log = logging.getLogger(__name__)

__all__ = [
    "BatchOuterDeclined",
    "batch_var",
    "check_batch_separable",
    "collect_declined",
    "has_symbolic_batch",
    "schedule_batch_outer",
    "specialize_one_sample",
    "wrap_batch_outer",
]


class BatchOuterDeclined(ValueError):
    """The kernel is not batch-separable (or not in a form this module proves it is)."""


# Active collectors of declined kernels (``collect_declined``); a stack, innermost last.
_COLLECTORS: list[list[str]] = []


@contextlib.contextmanager
def collect_declined() -> Iterator[list[str]]:
    """Collect a line per dynamic-batch kernel that ``schedule_batch_outer`` leaves to the
    static recipes (which then leave it unscheduled), while the context is open."""
    found: list[str] = []
    _COLLECTORS.append(found)
    try:
        yield found
    finally:
        _COLLECTORS.remove(found)


def _declined(func: tirx.PrimFunc, reason: str) -> None:
    name = _first_block_name(func)
    line = f"{name}: {reason}"
    log.debug("batch-outer declined %s", line)
    for found in _COLLECTORS:
        found.append(line)


def _first_block_name(func: tirx.PrimFunc) -> str:
    stack = [func.body]
    while stack:
        node = stack.pop()
        if isinstance(node, s_tir.SBlockRealize):
            if node.block.iter_vars:
                return node.block.name_hint
            stack.append(node.block.body)
        elif isinstance(node, tirx.For):
            stack.append(node.body)
        elif isinstance(node, tirx.SeqStmt):
            stack.extend(reversed(list(node.seq)))
    return "kernel"


# --------------------------------------------------------------------------------------------
# The signature


def _is_const(expr) -> bool:
    return isinstance(expr, tirx.IntImm)


def has_symbolic_batch(func: tirx.PrimFunc) -> bool:
    """Whether some buffer param of ``func`` has a dimension that is not a constant."""
    for param in func.params:
        if tirx.is_buffer_var(param) and any(not _is_const(d) for d in param.shape):
            return True
    return False


def batch_var(func: tirx.PrimFunc) -> tirx.Var:
    """The symbolic batch ``n``: the one var of the signature, the leading dim of some buffer
    params and of no other dim.

    Raises
    ------
    BatchOuterDeclined
        when the signature has another form.
    """
    found = None
    for param in func.params:
        if not tirx.is_buffer_var(param):
            raise BatchOuterDeclined(f"scalar param {param.name}")
        if list(param.strides) or not (
            _is_const(param.elem_offset) and int(param.elem_offset) == 0
        ):
            raise BatchOuterDeclined(f"param {param.name} is strided or offset")
        for axis, dim in enumerate(param.shape):
            if _is_const(dim):
                continue
            if not isinstance(dim, tirx.Var) or axis != 0:
                raise BatchOuterDeclined(f"param {param.name} has dim {axis} = {dim}")
            if found is None:
                found = dim
            elif not found.same_as(dim):
                raise BatchOuterDeclined(f"two symbolic dims, {found} and {dim}")
    if found is None:
        raise BatchOuterDeclined("no symbolic batch")
    return found


# --------------------------------------------------------------------------------------------
# Batch separability


class _Checker:
    """Walks a PrimFunc body and raises ``BatchOuterDeclined`` at the first thing that may
    carry data across samples (or that it does not know)."""

    def __init__(self, n: tirx.Var):
        self.n = n
        self.batch_axis: dict = {}  # buffer var -> the axis of n in its shape
        self.batch_loops: set = set()  # loop vars of n-extent loops
        self.ana = None  # an analyzer with the current block's iterator domains

    # -- helpers

    def _is_n(self, expr) -> bool:
        return isinstance(expr, tirx.Var) and expr.same_as(self.n)

    def _register(self, buf, kind: str) -> None:
        axes = []
        for axis, dim in enumerate(buf.shape):
            if self._is_n(dim):
                axes.append(axis)
            elif not _is_const(dim):
                raise BatchOuterDeclined(f"{kind} {buf.name} has dim {axis} = {dim}")
        if len(axes) > 1:
            raise BatchOuterDeclined(f"{kind} {buf.name} has the batch twice")
        if axes:
            self.batch_axis[buf] = axes[0]

    def _axis(self, buf) -> int | None:
        return self.batch_axis.get(buf)

    # -- expressions

    def expr(self, node, biv) -> None:
        """Check an expression inside a block whose batch iterator is ``biv`` (or None)."""
        stack = [node]
        while stack:
            cur = stack.pop()
            if cur is None:
                continue
            if isinstance(cur, (list, tuple, tvm_ffi.Array)):
                stack.extend(cur)
            elif isinstance(cur, tirx.Var):
                if self._is_n(cur):
                    raise BatchOuterDeclined("the batch size is used in an expression")
                if biv is not None and cur.same_as(biv):
                    raise BatchOuterDeclined(f"batch iterator {biv} used outside the batch dim")
                if any(cur.same_as(v) for v in self.batch_loops):
                    raise BatchOuterDeclined(f"batch loop {cur} used in an expression")
            elif isinstance(cur, (tirx.IntImm, tirx.FloatImm, tvm.ir.StringImm, tvm.ir.Op)):
                continue
            elif isinstance(cur, TensorLoad):
                stack.extend(self._access(cur.source, cur.indices, biv, store=False))
            elif isinstance(cur, tvm.ir.expr.Call):
                stack.extend(cur.args)
            elif isinstance(
                cur,
                (
                    tvm.ir.prim.expr.BinaryOpExpr,
                    tvm.ir.prim.expr.CmpExpr,
                    tvm.ir.prim.expr.LogicalExpr,
                ),
            ):
                stack.extend(getattr(cur, f, None) for f in ("a", "b"))
            elif isinstance(cur, tvm.ir.prim.expr.BitwiseNot):
                stack.append(cur.a)
            elif isinstance(cur, tirx.Cast):
                stack.append(cur.value)
            elif isinstance(cur, tirx.Select):
                stack.extend([cur.condition, cur.true_value, cur.false_value])
            elif isinstance(cur, tirx.Let):
                stack.extend([cur.value, cur.body])
            elif isinstance(cur, tirx.Broadcast):
                stack.append(cur.value)
            elif isinstance(cur, tirx.Ramp):
                stack.extend([cur.base, cur.stride])
            else:
                raise BatchOuterDeclined(f"unknown expression {type(cur).__name__}")

    def _access(self, buf, indices, biv, store: bool) -> list:
        """Check one load/store; return the index expressions still to check."""
        axis = self._axis(buf)
        rest = list(indices)
        if axis is None:
            if store and biv is not None:
                raise BatchOuterDeclined(f"a batch block writes {buf.name}, which has no batch")
            return rest
        if biv is None:
            raise BatchOuterDeclined(f"{buf.name} is accessed outside a batch iterator")
        if axis >= len(rest) or not self._is_batch_index(rest[axis], biv):
            raise BatchOuterDeclined(f"{buf.name} is not indexed by the batch iterator")
        del rest[axis]
        return rest

    def _is_batch_index(self, index, biv) -> bool:
        """Whether ``index`` equals ``biv`` over the block's iteration domain: ``biv`` itself,
        or what a reshape legalizes to, ``(v1 // 2048 + biv) % n`` (which simplifies to
        ``biv % n``, and ``biv < n``; TVM's analyzer does not take that last step)."""
        if isinstance(index, tirx.Var) and index.same_as(biv):
            return True
        if self.ana is None:
            return False
        index = self.ana.simplify(index)
        if isinstance(index, tirx.Var):
            return index.same_as(biv)
        return (
            isinstance(index, (tirx.FloorMod, tirx.Mod))
            and isinstance(index.a, tirx.Var)
            and index.a.same_as(biv)
            and self._is_n(index.b)
        )

    # -- statements

    def stmt(self, node, biv, in_block: bool) -> None:
        if isinstance(node, tirx.SeqStmt):
            for s in node.seq:
                self.stmt(s, biv, in_block)
        elif isinstance(node, tirx.For):
            if node.thread_binding is not None or node.step is not None:
                raise BatchOuterDeclined("bound or stepped loop")
            if not _is_const(node.min):
                raise BatchOuterDeclined("loop with a symbolic start")
            if self._is_n(node.extent):
                if in_block:
                    raise BatchOuterDeclined("batch loop inside a block")
                self.batch_loops.add(node.loop_var)
            elif not _is_const(node.extent):
                raise BatchOuterDeclined(f"loop extent {node.extent}")
            self.stmt(node.body, biv, in_block)
        elif isinstance(node, s_tir.SBlockRealize):
            if in_block:
                raise BatchOuterDeclined("nested block")
            self.block(node)
        elif isinstance(node, tirx.BufferStore):
            self.expr(self._access(node.buffer, node.indices, biv, store=True), biv)
            self.expr(node.value, biv)
        elif isinstance(node, tirx.IfThenElse):
            self.expr(node.condition, biv)
            self.stmt(node.then_case, biv, in_block)
            if node.else_case is not None:
                self.stmt(node.else_case, biv, in_block)
        elif isinstance(node, tirx.Evaluate):
            self.expr(node.value, biv)
        elif isinstance(node, tirx.Bind):  # TVM 0.27's flat let: ``var = value`` to the end
            if any(v.same_as(biv) for v in tirx.analysis.undefined_vars(node.value)):
                raise BatchOuterDeclined("a let binding of the batch index")
            self.expr(node.value, biv)
        else:
            raise BatchOuterDeclined(f"unknown statement {type(node).__name__}")

    def block(self, realize: s_tir.SBlockRealize) -> None:
        block = realize.block
        if not (_is_const(realize.predicate) and int(realize.predicate) == 1):
            raise BatchOuterDeclined(f"block {block.name_hint} has a predicate")
        if list(block.match_buffers):
            raise BatchOuterDeclined(f"block {block.name_hint} matches buffers")
        for buf in block.alloc_buffers:
            self._register(buf, "intermediate")
        biv = None
        for iv, value in zip(block.iter_vars, realize.iter_values, strict=True):
            dom = iv.dom
            if not _is_const(dom.min):
                raise BatchOuterDeclined(f"block {block.name_hint}: symbolic iterator start")
            if self._is_n(dom.extent):
                if iv.iter_type != tirx.IterVar.DataPar:
                    raise BatchOuterDeclined(f"block {block.name_hint} reduces over the batch")
                if biv is not None:
                    raise BatchOuterDeclined(f"block {block.name_hint}: two batch iterators")
                if not (
                    isinstance(value, tirx.Var) and any(value.same_as(v) for v in self.batch_loops)
                ):
                    raise BatchOuterDeclined(f"block {block.name_hint}: batch binding {value}")
                biv = iv.var
            else:
                if not _is_const(dom.extent):
                    raise BatchOuterDeclined(f"block {block.name_hint}: extent {dom.extent}")
                self.expr(value, None)
        if not block.iter_vars:  # the root block: loops and blocks
            self.stmt(block.body, None, in_block=False)
            return
        self.ana = Analyzer()
        for iv in block.iter_vars:
            self.ana.bind(iv.var, iv.dom)
        if block.init is not None:
            self.stmt(block.init, biv, in_block=True)
        self.stmt(block.body, biv, in_block=True)


def check_batch_separable(func: tirx.PrimFunc) -> tirx.Var:
    """The batch var of ``func`` when each sample's outputs depend on that sample alone.

    Raises
    ------
    BatchOuterDeclined
        with the reason, when that is not proven.
    """
    n = batch_var(func)
    checker = _Checker(n)
    for param in func.params:
        checker._register(param, "param")
    if not isinstance(func.body, s_tir.SBlockRealize):
        raise BatchOuterDeclined("no root block")
    checker.block(func.body)
    return n


# --------------------------------------------------------------------------------------------
# Rewrite


def specialize_one_sample(func: tirx.PrimFunc, n: tirx.Var) -> tirx.PrimFunc:
    """``func`` at batch 1: every batch param becomes a ``[1, ...]`` buffer (``n = 1``
    everywhere, intermediates included)."""
    one = tirx.IntImm(n.ty.dtype, 1)
    mapping = {}
    for param in func.params:
        if param.shape and isinstance(param.shape[0], tirx.Var):
            mapping[param] = tirx.decl_buffer(
                (one, *param.shape[1:]),
                param.dtype,
                param.name,
                scope=param.scope(),
                layout=param.layout,
            )
    return func.specialize(mapping)


def wrap_batch_outer(func: tirx.PrimFunc, n: tirx.Var, one: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func``'s signature around ``one`` (``func`` specialized to batch 1, then scheduled):
    ``for b in range(n)``, the batch-1 params declared on sample ``b`` of the real ones."""
    b = tirx.Var("b", n.ty.dtype)
    zero = tirx.IntImm(n.ty.dtype, 0)
    decls = []
    for param, sample in zip(func.params, one.params, strict=True):
        if param.shape and isinstance(param.shape[0], tirx.Var):
            first = tirx.BufferLoad(param, [b] + [zero] * (len(param.shape) - 1))
            decls.append(tirx.DeclBuffer(sample, data=tirx.address_of(first)))
    loop = tirx.For(b, zero, n, tirx.ForKind.SERIAL, tirx.SeqStmt([*decls, one.body]))
    root = s_tir.SBlockRealize([], True, s_tir.SBlock([], [], [], "root", loop))
    return tirx.PrimFunc(func.params, root, ret_type=func.ret_type, attrs=one.attrs)


def schedule_batch_outer(
    func: tirx.PrimFunc,
    params,
    schedule: Callable[[tirx.PrimFunc, object], tirx.PrimFunc | None],
) -> tirx.PrimFunc | None:
    """Schedule a dynamic-batch kernel as a loop over its batch-1 kernel.

    Parameters
    ----------
    func:
        An unscheduled PrimFunc whose buffers carry a symbolic batch.
    params:
        Passed on to ``schedule``.
    schedule:
        The static recipe (``schedule_prim_func``): batch-1 PrimFunc -> scheduled or None.

    Returns
    -------
    The batch-outer function, or None where the kernel is not batch-separable or the recipe
    does not schedule its batch-1 form (the caller then goes on as without this module).
    """
    try:
        n = check_batch_separable(func)
    except BatchOuterDeclined as err:
        _declined(func, str(err))
        return None
    one = specialize_one_sample(func, n)
    scheduled = schedule(one, params)
    if scheduled is None:  # as with a fixed batch: no recipe fits
        log.debug("%s: the batch-1 kernel got no schedule", _first_block_name(func))
        return None
    return wrap_batch_outer(func, n, scheduled)


class BatchOuter(ScheduleRule):
    """A dynamic-batch kernel that treats each sample on its own: a loop over its batch-1
    kernel, which the rest of the table schedules. Its result wraps the kernel in a new loop,
    not a trace of the kernel, so tuning records no default for it."""

    name = "batch_outer"
    traceable = False

    def apply(self, func, params):
        if not has_symbolic_batch(func):
            return None
        from tvmforge.passes.schedule.rules import schedule_prim_func

        return schedule_batch_outer(func, params, schedule_prim_func)
