"""com.microsoft ``MatMulNBits`` (ONNX Runtime's block-wise 4-bit weight-only matmul, what
``onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer`` writes).

The op: ``Y = A @ dequant(B)^T [+ bias]`` with ``B`` uint8 ``[N, K/G, G/2]`` (two 4-bit codes per
byte, the lower ``k`` in the low nibble), ``scales [N, K/G]`` (or flat), optional
``zero_points`` (uint8 ``[N, ceil(K/G / 2)]``, packed the same way, or float ``[N, K/G]``;
absent: 8) and ``dequant(B)[n, k] = (q[n, k] - zp[n, k/G]) * scale[n, k/G]``; ``K`` padded
to ``K/G`` whole blocks. ``accuracy_level`` (how ORT may quantize ``A`` internally) is ignored:
``A`` stays fp32, so we compute what level 0/1 asks for. ``g_idx`` (deprecated act-order
groups) is refused; ``bits`` other than 4 too.

Lowering: ``A`` is reshaped to ``[M, K]`` and the constants go, as they are, into
``call_dps_packed("tvmforge.matmul_nbits", [A2d, B, scales, zero_points?])`` ``-> [M, N]``;
``bias`` is an add after it. The frontend may not import the passes (where the kernel lives,
``passes/schedule/int4_kernels.py``), so the graph pass ``lower_matmul_nbits``
(``passes/quantize/int4.py``) replaces that call with the int4 kernel, its constants
rearranged into the kernel's layout at compile time (the same codes: nothing is re-quantized).

How close to ONNX Runtime: the same dequantized weights; the kernel accumulates each block's
``sum x * q`` in fp32 and applies scale and zero point per block, so the sums differ from
ORT's (MLAS dequantizes, then runs an fp32 GEMM) by float reassociation only.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from tvmforge.errors import CompileError
from tvmforge.frontend.converters import register

# The extern name ``lower_matmul_nbits`` (passes/quantize/int4.py, ``MATMUL_NBITS``) lowers.
MATMUL_NBITS = "tvmforge.matmul_nbits"


def _name(attr) -> str:
    return attr.get("tvm_custom", {}).get("name", "") or "<unnamed>"


def _refuse(attr, what: str, hint: str) -> CompileError:
    return CompileError(f"node {_name(attr)} (MatMulNBits): {what} is not supported", hint=hint)


def _value(expr: relax.Expr | None) -> np.ndarray | None:
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


@register("MatMulNBits")
class MatMulNBits(onnx_frontend.OnnxOpConverter):
    """``A @ dequant(B)^T [+ bias]`` (see the module docstring)."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        a, b, scales = inputs[0], inputs[1], inputs[2]
        zp = inputs[3] if len(inputs) > 3 else None
        g_idx = inputs[4] if len(inputs) > 4 else None
        bias = inputs[5] if len(inputs) > 5 else None
        k, n = int(attr["K"]), int(attr["N"])
        bits, block = int(attr.get("bits", 4)), int(attr["block_size"])
        if bits != 4:
            raise _refuse(attr, f"bits={bits}", "quantize the model with bits=4")
        if g_idx is not None:
            raise _refuse(attr, "g_idx (act-order groups)",
                          "quantize without act-order (GPTQ desc_act=False)")
        if block < 16 or block & (block - 1) or block > 128:
            raise _refuse(attr, f"block_size={block}", "use a block size of 16, 32, 64 or 128")
        bv, sv = _value(b), _value(scales)
        zv = _value(zp) if zp is not None else None
        if bv is None or sv is None or (zp is not None and zv is None):
            raise _refuse(attr, "a B, scales or zero_points input that is not an initializer",
                          "store the quantized weights as initializers")
        blocks = -(-k // block)
        if bv.size != n * blocks * block // 2 or sv.size != n * blocks:
            raise _refuse(attr, f"B {list(bv.shape)} / scales {list(sv.shape)} for K={k}, "
                          f"N={n}, block_size={block}", "check the model's MatMulNBits shapes")
        a = bb.normalize(a)
        if str(a.ty.dtype) != "float32":
            raise _refuse(attr, f"an input A of type {a.ty.dtype}", "use a float32 model")
        shape = list(a.ty.shape.values)
        lead = shape[:-1]
        rows = lead[0]
        for d in lead[1:]:
            rows = rows * d
        a2 = a if len(lead) == 1 else bb.emit(relax.op.reshape(a, [rows, k]))
        args = [a2, relax.const(bv.reshape(n, blocks, block // 2), "uint8"),
                relax.const(sv.astype(np.float32).reshape(n, blocks), "float32")]
        if zv is not None:
            if np.issubdtype(zv.dtype, np.floating):
                args.append(relax.const(zv.astype(np.float32).reshape(n, blocks), "float32"))
            else:
                args.append(relax.const(zv.astype(np.uint8).reshape(n, -1), "uint8"))
        y = bb.emit(relax.call_dps_packed(MATMUL_NBITS, relax.Tuple(args),
                                          relax.TensorType([rows, n], "float32")))
        if len(lead) != 1:
            y = bb.emit(relax.op.reshape(y, [*lead, n]))
        if bias is not None:
            y = relax.op.add(y, bias)
        return y
