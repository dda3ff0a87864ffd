"""ARM dot product (Armv8.2 ``+dotprod``): the same ``16 x 4`` block as the VNNI intrinsic,
as four NEON ``sdot`` instructions (each ``4 x 4``: 4 channels x 4 inputs, 16 contiguous bytes
of the packed weight). ``sdot`` multiplies s8 by s8: the kernels feed it ``x_q - 128``.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

__all__ = ["SDOT_INTRIN"]

SDOT_INTRIN = "tvmforge_dot_16x4_i8i8i32_sdot"


def _sdot_intrin(scope: str):
    """``C[16] += A[4] . B[16, 4]^T`` (s8 x s8 -> s32) as four NEON ``sdot`` (4 x 4 each)."""

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((4,), "int8", offset_factor=1),
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
        A: T.Buffer((4,), "int8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1, scope=scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            # the input's 4 bytes inline in each call, not named (see _vnni_intrin); LLVM
            # computes the broadcast once
            for j in T.unroll(0, 4):
                C[T.ramp(j * 4, 1, 4)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
                    C.vload([j * 4], dtype="int32x4"),
                    T.reinterpret(
                        T.broadcast(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"), 4),
                        dtype="int8x16",
                    ),
                    B.vload([j * 4, 0], dtype="int8x16"),
                    dtype="int32x4",
                )

    return desc, impl


TensorIntrin.register(SDOT_INTRIN, *_sdot_intrin("local"), override=True)
