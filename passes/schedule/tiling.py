"""What the blocked conv rules share: where register-tile accumulators live (on the stack, under
TVM's 1 KiB limit), weight prefetch distances, and the K-blocked plane bound."""

from __future__ import annotations

import logging

from tvm import s_tir
from tvm.s_tir.schedule import LoopRV, SBlockRV

from tvmforge.passes.schedule.analysis import _is_padding
from tvmforge.passes.schedule.weight_prefetch import (
    mark_weight_prefetch,
)

log = logging.getLogger(__name__)


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
