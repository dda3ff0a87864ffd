"""What tvmforge's Relax rewrites share: running one ``PyExprMutator`` over every Relax
function of a module (the module pass they all are), the vector width CPU-only passes are sized
for, and reading a constant through the bindings."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant

__all__ = ["WeightPacker", "bound_constant", "cpu_lanes", "mutator_pass"]


def cpu_lanes(scale: int = 1) -> int | None:
    """``scale`` times the fp32 lanes of the current target when it is a CPU, else ``None``
    (the CPU-only passes then rewrite nothing)."""
    from tvmforge.passes.schedule.params import current_cpu_lanes

    lanes = current_cpu_lanes()
    return None if lanes is None else scale * lanes


def bound_constant(mutator: relax.PyExprMutator, expr: relax.Expr) -> np.ndarray | None:
    """The value of ``expr`` when it is a constant, directly or through a binding."""
    if isinstance(expr, relax.Var):
        bound = mutator.lookup_binding(expr)
        expr = expr if bound is None else bound
    if isinstance(expr, Constant) and hasattr(expr, "value"):
        return expr.value.numpy()
    return None


class WeightPacker(relax.PyExprMutator):
    """The base of the passes that pack constant weights in blocks (``pack_conv_weights``,
    ``pack_dense_weights``): the block size, a count of the weights packed, and a weight's
    value through the bindings. Subclasses are ``@relax.expr_functor.mutator`` classes."""

    def __init__(self, mod: tvm.IRModule, block: int) -> None:
        super().__init__(mod)
        self.block = block
        self.packed = 0

    def _weight(self, expr: relax.Expr) -> np.ndarray | None:
        return bound_constant(self, expr)


def mutator_pass(
    name: str,
    make: Callable[[tvm.IRModule, int], relax.PyExprMutator],
    size: Callable[[], int | None],
    *,
    count: str,
    prune_unused: bool = True,
    logger: logging.Logger | None = None,
    message: str = "",
) -> tvm.transform.Pass:
    """A module pass that runs ``make(mod, size())`` over every Relax function.

    Parameters
    ----------
    name:
        The pass's name.
    make:
        Builds the mutator for a module and the size the pass works with (a block, a panel).
    size:
        Called when the pass runs; ``None`` leaves the module as it is (no CPU target).
    count:
        The mutator attribute that counts its rewrites; none leaves the module as it is.
    prune_unused:
        Drop the bindings a rewrite left unused.
    logger, message:
        ``message % (count, size)`` logged at debug level after a rewrite.
    """

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        value = size()
        if value is None:
            return mod
        mutator = make(mod, value)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                new = mutator.visit_expr(func)
                if prune_unused:
                    new = relax.analysis.remove_all_unused(new)
                mutator.builder_.update_func(gvar, new)
        done = getattr(mutator, count)
        if not done:
            return mod
        if logger is not None and message:
            logger.debug(message, done, value)
        return mutator.builder_.get()

    return _pass
