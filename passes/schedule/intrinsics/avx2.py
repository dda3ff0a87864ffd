"""AVX2 without a dot-product instruction (AMD Zen 2/3, Intel client CPUs before Alder Lake):
the VNNI block ``C[16] += A[4] . B[16, 4]^T`` (u8 x s8 -> s32) as ``vpmaddubsw`` +
``vpmaddwd`` + ``vpaddd`` on 256-bit registers, exact for 7-bit weights.

One ``16 x 4`` block is two halves of 8 channels (32 contiguous bytes of the packed weight,
one ``ymm``). Per half::

    p = vpmaddubsw(broadcast(A[0:4]) as u8 x 32, B[half] as s8 x 32)   # s16 x 16, saturating
    q = vpmaddwd(p, ones as s16 x 16)                                   # s32 x 8
    C[half] += q

``vpmaddubsw`` sums two u8 x s8 products into an s16 with saturation: ``a0 w0 + a1 w1`` is
exact when it stays in ``[-32768, 32767]``. With ``|w| <= 64`` it is at most
``2 * 255 * 64 = 32640``: ``quantize_int8`` gives this family 7-bit weights (codes in
``[-64, 64]``, ONNX Runtime's ``reduce_range``; oneDNN halves the weights on such CPUs alike).
``vpmaddwd`` with ones then adds the two s16 pairs of a channel exactly into s32, so the block
is the integer dot product, bit for bit.

Registered twice, by accumulator scope, as the VNNI intrinsics are: :data:`AVX2_INTRIN`
(``local``) and :data:`AVX2_STACK_INTRIN` (``global``: a register tile under 1 KiB that TVM
0.27 puts on the stack, where LLVM keeps it in registers).

LLVM's operand types (TVM 0.27's LLVM): ``llvm.x86.avx2.pmadd.ub.sw`` is
``<16 x i16> (<32 x i8>, <32 x i8>)`` (the first operand unsigned), ``llvm.x86.avx2.pmadd.wd``
is ``<8 x i32> (<16 x i16>, <16 x i16>)``.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

__all__ = ["AVX2_INTRIN", "AVX2_STACK_INTRIN", "AVX2_WEIGHT_MAX"]

AVX2_INTRIN = "tvmforge_dot_16x4_u8i8i32_avx2"
AVX2_STACK_INTRIN = "tvmforge_dot_16x4_u8i8i32_avx2_stack"

# The largest weight magnitude for which a ``vpmaddubsw`` pair never saturates:
# 2 * 255 * 64 = 32640 <= 32767 (and -32640 >= -32768).
AVX2_WEIGHT_MAX = 64


def _avx2_intrin(scope: str):
    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1, scope=scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1, scope=scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            # one expression per half, the input's 4 bytes inline (see vnni.py: a named
            # intermediate becomes a local buffer); LLVM computes the broadcast once
            for h in T.unroll(0, 2):
                C[T.ramp(h * 8, 1, 8)] = C.vload([h * 8], "int32x8") + T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                    T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
                        T.reinterpret(
                            T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 8),
                            dtype="int8x32",
                        ),
                        B.vload([h * 8, 0], dtype="int8x32"),
                        dtype="int16x16",
                    ),
                    T.broadcast(T.int16(1), 16),
                    dtype="int32x8",
                )

    return desc, impl


TensorIntrin.register(AVX2_INTRIN, *_avx2_intrin("local"), override=True)
TensorIntrin.register(AVX2_STACK_INTRIN, *_avx2_intrin("global"), override=True)
