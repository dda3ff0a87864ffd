"""Vectorizable polynomial ``exp``, ``erf``, ``tanh``, ``sigmoid`` and ``softmax`` on CPUs.

LLVM has no vector ``exp``/``erf`` without a vector math library: ``llvm.exp.v16f32`` is
split into sixteen calls to libm's ``expf`` and ``erff`` is always a scalar call. The
transcendental then dominates the kernel it sits in. This pass replaces them, on ``llvm``
targets only, by TVM's polynomial forms (``topi.fast_exp``, ``fast_erf``, ``fast_tanh``,
``nn.fast_softmax``; a sigmoid becomes ``1 / (1 + fast_exp(-x))``), which are plain
arithmetic that the default schedules vectorize. ONNX Runtime's CPU kernels use the same kind
of approximation (MLAS's polynomial ``exp``/``erf``/``tanh``). Measured against float64 on
[-20, 20]: ``fast_exp`` relative error 1.1e-6 (clamped to [-88.4, 88.4]), ``fast_erf`` and
``fast_tanh`` 4e-7.

Measured on BERT-base (interleaved whole-model A/B in one process, 2 threads, Emerald
Rapids, median ms with / without): 356 / 472 (0.75x) and, in another run, 214 / 400; before
it, its GELU matmul kernel spent more time in ``erff`` than in the matmul (24.0 ms against
13.4 for the same-sized matmul without GELU), and softmax over ``[12, 128, 128]`` took
2.8 ms of scalar ``expf``. PP-OCRv4 det (one sigmoid at the end): 71.2 / 72.2 ms.

Only float32 calls are rewritten; other dtypes and other targets are left alone. Like
``relax.transform.FastMathTransform`` (which it follows), but it skips calls whose callee is
not an operator and never touches a non-CPU target.
"""

from __future__ import annotations

import tvm
from tvm import relax, te, topi

from tvmforge.passes.graph._mutator import cpu_lanes, mutator_pass

__all__ = ["fast_math_cpu"]


def _sigmoid(x: te.Tensor) -> te.Tensor:
    e = topi.fast_exp(topi.negative(x))
    return te.compute(x.shape, lambda *i: 1.0 / (1.0 + e(*i)), name="fast_sigmoid")


def _softmax(x: te.Tensor, axis: int, lanes: int | None = None) -> te.Tensor:
    """``topi.nn.fast_softmax``; over a last axis whose length is not a multiple of the vector
    (a 18385-token vocabulary, ViT's 197 patches, CLIP's 77 tokens), the max and the exp-sum
    run over the row padded to one: the default schedule vectorizes a row reduction only when
    the vector divides it, and left such rows scalar (PP-OCRv5 rec's 40 x 18385 softmax:
    2.5 ms against ONNX Runtime's 0.44). The padding is read as the lowest float and masked out
    of the sum, so the result is that of the unpadded row."""
    ndim = len(x.shape)
    axis %= ndim
    n = x.shape[axis]
    if (
        lanes is None
        or axis != ndim - 1
        or not isinstance(n, tvm.tirx.IntImm)
        or int(n) % lanes == 0
        or int(n) < 2 * lanes
    ):
        return topi.nn.fast_softmax(x, axis)
    n = int(n)
    padded = -(-n // lanes) * lanes
    lead = tuple(x.shape[:-1])
    lowest = tvm.tirx.const(-3.4028234663852886e38, "float32")

    def read(*i):  # the row, then the lowest float (the index clamped: never out of bounds)
        inside = x[(*i[:-1], te.min(i[-1], n - 1))]
        return tvm.tirx.Select(i[-1] < n, inside, lowest)

    k1 = te.reduce_axis((0, padded), name="k")
    max_elem = te.compute(
        lead, lambda *i: te.max(read(*i, k1), axis=k1), name="T_softmax_maxelem"
    )
    delta = te.compute(
        (*lead, padded), lambda *i: read(*i) - max_elem[i[:-1]], name="T_softmax_delta"
    )
    exp = topi.math.fast_exp(delta)
    k2 = te.reduce_axis((0, padded), name="k")
    zero = tvm.tirx.const(0.0, "float32")
    expsum = te.compute(
        lead,
        lambda *i: te.sum(tvm.tirx.Select(k2 < n, exp[(*i, k2)], zero), axis=k2),
        name="T_softmax_expsum",
    )
    return te.compute(
        x.shape,
        lambda *i: exp[i] / expsum[i[:-1]],
        name="T_softmax_norm",
        attrs={"axis": axis},
    )


_REWRITES = {
    "relax.exp": topi.fast_exp,
    "relax.erf": topi.fast_erf,
    "relax.tanh": topi.fast_tanh,
    "relax.sigmoid": _sigmoid,
}


@relax.expr_functor.mutator
class _FastMath(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, lanes: int | None = None) -> None:
        super().__init__(mod)
        self.rewritten = 0
        self.lanes = lanes  # the fp32 vector width softmax rows are padded to

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if not isinstance(call.op, tvm.ir.Op):
            return call
        ty = call.ty
        if not isinstance(ty, relax.TensorType) or str(ty.dtype) != "float32":
            return call
        name = call.op.name
        if name in _REWRITES:
            self.rewritten += 1
            hint = "fast_" + name.rsplit(".", 1)[-1]
            return self.builder_.call_te(_REWRITES[name], call.args[0], primfunc_name_hint=hint)
        if name == "relax.nn.softmax":
            self.rewritten += 1
            return self.builder_.call_te(
                _softmax, call.args[0], int(call.attrs.axis), self.lanes,
                primfunc_name_hint="fast_softmax",
            )
        return call


def fast_math_cpu(force: bool = False) -> tvm.transform.Pass:
    """Rewrite float32 ``exp``/``erf``/``tanh``/``sigmoid``/``softmax`` into polynomial forms.

    Parameters
    ----------
    force:
        Rewrite whatever the target; by default only when the current target is ``llvm``.

    Returns
    -------
    tvm.transform.Pass
        A Relax module pass.
    """

    return mutator_pass(
        "FastMathCpu",
        lambda mod, lanes: _FastMath(mod, lanes or None),
        lambda: 0 if force else cpu_lanes(),
        count="rewritten",
        prune_unused=False,
    )
