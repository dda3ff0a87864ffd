"""Pack constant matmul weights into column panels, so the CPU kernel streams them contiguously.

The layout
----------
A ``relax.matmul(x, W)`` with ``x[..., M, K]`` and a constant ``W[K, N]`` (a ``nn.Linear`` as
PyTorch exports it, or a ``Gemm`` after its transpose is folded) becomes a ``call_tir`` to a
TE matmul that reads the weight as panels of ``B`` columns:

    Wp[no, k, ni] = W[k, no * B + ni]        (B = two fp32 vector registers, 32 on AVX-512)
    out[..., m, n] = sum_k x[..., m, k] * Wp[n // B, k, n % B]

One panel, ``K * B`` floats, is one contiguous run: the kernel's inner step loads ``B``
consecutive weights per ``k`` (two vectors) where the unpacked weight would load them
``N`` floats apart, one page per ``k`` for BERT's ``[768, 3072]``. The matmul block carries
the annotation ``tvmforge.packed_dense = B``; ``schedule_cpu_default`` gives it a register
tile of ``m_r`` rows x ``B`` columns and sweeps the panels in the outer loop, so one panel
stays in cache while every row tile uses it (``_schedule_packed_dense``).

Measured on Emerald Rapids, one thread, ``[128, 768] x [768, 3072]`` (GFLOP/s, best of 5,
same process): unpacked, rows outer (the contraction recipe) 35.6; packed, panels outer,
8 x 32 tile 148.5 (ONNX Runtime's MatMul: 143.0). Tiles of 16 x 32 (all 32 registers as
accumulators) 60, 4 x 64 69, 16 x 16 63; 48-wide panels are no power of two and LLVM
scalarizes them (2.6).

Whole models, interleaved A/B in one process, 2 threads (median ms, with / without this
pass): BERT-base encoder 680 / 1785 and, in a quieter minute, 214 / 583 (0.37x); AlexNet
37.1 / 53.7 (0.69x; its fully connected layers are matrix-vector products, which the
contiguous panels stream); VGG-19 311 / 335 (0.93x).

What it rewrites
----------------
``relax.matmul`` with float32 operands and output, static shapes (a dynamic batch aside),
``x`` of rank >= 2, a constant rank-2 weight and ``N`` a multiple of ``B`` (or of one
register, ``B/2``, when it is not a multiple of two). Other ``N`` (a classifier's 1000) are
padded with zero columns to a multiple of one register when that adds at most an eighth, and
the product's extra columns are sliced off (the slice fuses into the kernel as its epilogue):
ResNet-50's ``[1, 2048] x [2048, 1000]``, two threads, cold weights, 0.552 -> 0.245 ms.
Anything else is left to ``LegalizeOps``.

Where it sits
-------------
In the graph stage, after constant folding (a ``Gemm``'s ``transB`` becomes a folded
transpose first), next to ``pack_conv_weights``. Only for ``llvm`` CPU targets (the current
target or the block size passed in); elsewhere the module is returned unchanged.
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax, te

from tvmforge.passes.graph._mutator import WeightPacker, cpu_lanes, mutator_pass
from tvmforge.passes.graph._shapes import static_but_batch

log = logging.getLogger(__name__)

__all__ = ["PACKED_DENSE_ATTR", "pack_dense_weights", "pack_kn"]

# Block annotation on the packed matmul's reduction block: its value is the panel width B.
PACKED_DENSE_ATTR = "tvmforge.packed_dense"


def pack_kn(weight: np.ndarray, block: int) -> np.ndarray:
    """``W[K, N]`` -> ``Wp[N/block, K, block]``."""
    k, n = weight.shape
    return np.ascontiguousarray(weight.reshape(k, n // block, block).transpose(1, 0, 2))


# Columns that are no multiple of a vector (a classifier's 1000) are padded with zero columns
# up to one, and the product's extra columns sliced off, when that adds at most this share of
# the weight: unpacked, such a matrix-vector product read 10 columns per row, 4000 bytes
# apart, into an accumulator in memory.
_MAX_PADDING = 1 / 8


def _padded_columns(n: int, block: int) -> int | None:
    """``n`` rounded up to a multiple of one vector (``block // 2``), or ``None`` when that
    pads more than ``_MAX_PADDING`` of ``n``."""
    half = max(block // 2, 1)
    padded = -(-n // half) * half
    return padded if padded - n <= n * _MAX_PADDING else None


def matmul_packed(data: te.Tensor, weight: te.Tensor) -> te.Tensor:
    """The TE definition: ``data[..., M, K]``, packed ``weight[N/B, K, B]``, ``out[..., M, N]``."""
    shape = [v if isinstance(v, tvm.tirx.Var) else int(v) for v in data.shape]
    no, k_ext, block = (int(v) for v in weight.shape)
    k = te.reduce_axis((0, k_ext), "k")

    def body(*idx):
        *lead, n = idx
        return te.sum(data[(*lead, k)] * weight[n // block, k, n % block], axis=k)

    return te.compute(
        (*shape[:-1], no * block),
        body,
        name="matmul_packed",
        attrs={PACKED_DENSE_ATTR: block},
    )


@relax.expr_functor.mutator
class _Packer(WeightPacker):
    def panel(self, call: relax.Call) -> int | str:
        """The panel width for this matmul, or the reason it is left alone."""
        dtypes = {str(call.args[0].ty.dtype), str(call.args[1].ty.dtype), str(call.ty.dtype)}
        if dtypes != {"float32"}:
            return f"dtypes {sorted(dtypes)}"
        shape = static_but_batch(call.args[0])
        if shape is None or static_but_batch(call) is None:
            return "symbolic shape"
        if len(shape) < 2:
            return "a vector operand"
        weight = self._weight(call.args[1])
        if weight is None or weight.ndim != 2:
            return "the weight is not a constant matrix"
        n = weight.shape[1]
        for block in (self.block, self.block // 2):
            if block >= 1 and n % block == 0:
                return block
        padded = _padded_columns(n, self.block)
        if padded is None:
            return f"{n} columns, not a multiple of {self.block // 2}"
        return self.block if padded % self.block == 0 else self.block // 2

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.matmul"):
            return call
        block = self.panel(call)
        if isinstance(block, str):
            log.debug("matmul not packed: %s", block)
            return call
        weight = self._weight(call.args[1]).astype(np.float32)
        n = weight.shape[1]
        padded = -(-n // block) * block
        if padded != n:  # zero columns; the output's are sliced off
            weight = np.pad(weight, ((0, 0), (0, padded - n)))
        self.packed += 1
        out = self.builder_.call_te(
            matmul_packed,
            call.args[0],
            relax.const(pack_kn(weight, block), "float32"),
            primfunc_name_hint="matmul_packed",
        )
        if padded == n:
            return out
        rank = len(call.ty.shape)
        return relax.op.strided_slice(out, axes=[rank - 1], begin=[0], end=[n])


def pack_dense_weights(block: int | None = None) -> tvm.transform.Pass:
    """Rewrite eligible matmuls to read their constant weights in column panels.

    Parameters
    ----------
    block:
        Panel width (``B``). ``None``: two fp32 vector registers of the current target, and
        nothing is rewritten when there is no current target or it is not a CPU.

    Returns
    -------
    tvm.transform.Pass
        A Relax module pass (it adds one PrimFunc per packed matmul shape).
    """

    return mutator_pass(
        "PackDenseWeights",
        _Packer,
        lambda: block if block is not None else cpu_lanes(2),
        count="packed",
        logger=log,
        message="packed %d matmul weights in panels of %d",
    )
