"""Tensor intrinsics, one module per instruction family (``vnni``, ``sdot``, ``avx2``), and the
one place that picks the family for a target from its ``CpuFeatures``.

Adding a family (AMX tiles, say) is a module here and a row in ``INT8_FAMILIES``.
"""

from __future__ import annotations

from typing import Any

from tvmforge.targets.features import features_of

__all__ = ["INT8_FAMILIES", "int8_family"]

# CpuFeatures.int8_dot -> the int8 kernel family that runs it. AMX CPUs also have AVX-512
# VNNI, which runs their int8 kernels until tile kernels exist; AVX-VNNI (256-bit) has no
# kernels yet. "avx2" is the key of an AVX2 CPU without AVX-512 and without a dot product
# (int8_dot "none": AMD Zen 2/3, Intel client CPUs before Alder Lake): ``vpmaddubsw`` +
# ``vpmaddwd``, exact with 7-bit weights (intrinsics/avx2.py). AVX-512 CPUs without VNNI
# (Skylake-SP) keep the int32 kernels: their 32 zmm registers want a 512-bit variant.
INT8_FAMILIES: dict[str, str] = {"vnni": "vnni", "amx": "vnni", "sdot": "sdot", "avx2": "avx2"}


def _family_key(features) -> str:
    """The ``INT8_FAMILIES`` key of a CPU: its ``int8_dot``, or ``avx2`` for an AVX2 CPU
    (8 fp32 lanes, no AVX-512) without a dot-product instruction."""
    if features.int8_dot == "none" and features.avx2 and features.lanes == 8:
        return "avx2"
    return features.int8_dot


def int8_family(target: Any) -> str | None:
    """``vnni``, ``sdot``, ``avx2`` or ``None`` (no int8 kernels of a family: the plain int32
    ones) for a TVM target."""
    features = features_of(target)
    if features is None:
        return None
    return INT8_FAMILIES.get(_family_key(features))
