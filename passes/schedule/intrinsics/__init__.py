"""Tensor intrinsics, one module per instruction family (``vnni``, ``sdot``), and the one
place that picks the family for a target from its ``CpuFeatures``.

Adding a family (AMX tiles, say) is a module here and a row in ``INT8_FAMILIES``.
"""

from __future__ import annotations

from typing import Any

from tvmforge.targets.features import features_of

__all__ = ["INT8_FAMILIES", "int8_family"]

# CpuFeatures.int8_dot -> the int8 kernel family that runs it. AMX CPUs also have AVX-512
# VNNI, which runs their int8 kernels until tile kernels exist; AVX-VNNI (256-bit) has no
# kernels yet.
INT8_FAMILIES: dict[str, str] = {"vnni": "vnni", "amx": "vnni", "sdot": "sdot"}


def int8_family(target: Any) -> str | None:
    """``vnni``, ``sdot`` or ``None`` (no int8 dot-product kernels) for a TVM target."""
    features = features_of(target)
    if features is None:
        return None
    return INT8_FAMILIES.get(features.int8_dot)
