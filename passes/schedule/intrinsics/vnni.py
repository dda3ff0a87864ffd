"""AVX-512 VNNI: ``vpdpbusd`` as a TVM tensor intrinsic, ``C[16] += A[4] . B[16, 4]^T``
(u8 x s8 -> s32), one instruction on a 512-bit register.

Registered twice, by accumulator scope: ``VNNI_INTRIN`` (``local``, the tuning space's) and
``VNNI_STACK_INTRIN`` (``global``: the default schedule's register tile, which TVM 0.27 puts on
the stack when it is under 1 KiB; a ``local`` tile went through TVMBackendAllocWorkspace, with
a memset and a free, once per tile).

TVM's own ``dot_16x4_vnni`` does not build with the LLVM in TVM 0.27 (the LLVM 22 ``vpdpbusd``
intrinsic takes ``<64 x i8>`` operands, TVM passes ``<16 x i32>``); this one has the operand
types LLVM wants.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

__all__ = ["VNNI_INTRIN", "VNNI_STACK_INTRIN"]

VNNI_INTRIN = "tvmforge_dot_16x4_u8i8i32_vnni"
VNNI_STACK_INTRIN = "tvmforge_dot_16x4_u8i8i32_vnni_stack"


def _vnni_intrin(scope: str):
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
            # one expression: TVM 0.27 turns a named intermediate (``a = ...``) into a local
            # buffer, a workspace allocation per tile
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                T.reinterpret(
                    T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16),
                    dtype="int8x64",
                ),
                B.vload([0, 0], dtype="int8x64"),
                dtype="int32x16",
            )

    return desc, impl


TensorIntrin.register(VNNI_INTRIN, *_vnni_intrin("local"), override=True)
TensorIntrin.register(VNNI_STACK_INTRIN, *_vnni_intrin("global"), override=True)
