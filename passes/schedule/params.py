"""What the CPU schedule rules know about the CPU (``CpuScheduleParams``, read off the
target's ``CpuFeatures``) and the attribute and errors they share."""

from __future__ import annotations

from dataclasses import dataclass

import tvm

from tvmforge.targets.features import CpuFeatures, features_of

__all__ = ["SCHEDULED_ATTR", "CpuScheduleParams", "current_cpu_lanes"]

SCHEDULED_ATTR = "tirx.is_scheduled"

# What a schedule primitive raises on an illegal step (ScheduleError and TVM's internal errors
# are RuntimeErrors); ValueError is this module's own "recipe does not fit".
_SCHEDULE_ERRORS = (RuntimeError, ValueError)


@dataclass(frozen=True)
class CpuScheduleParams:
    """What the schedules need to know about the CPU.

    Attributes
    ----------
    lanes:
        fp32 lanes in one vector register (16 for AVX-512, 8 for AVX2, 4 for SSE/NEON).
    vector_registers:
        Architectural vector registers (32 for AVX-512 and AArch64, 16 otherwise).
    num_cores:
        Worker threads the parallel loops are sized for.
    """

    lanes: int = 4
    vector_registers: int = 16
    num_cores: int = 1

    @property
    def accumulators(self) -> int:
        """Vector registers the register tile may use for accumulators."""
        return self.vector_registers * 3 // 4

    @classmethod
    def from_features(cls, features: CpuFeatures) -> CpuScheduleParams:
        return cls(
            lanes=features.lanes,
            vector_registers=features.vector_registers,
            num_cores=max(features.cores, 1),
        )

    @classmethod
    def from_target(cls, target: tvm.target.Target) -> CpuScheduleParams:
        """The target's ``CpuFeatures``; parallel loops sized for its ``num-cores`` (1 when
        the target sets none)."""
        features = features_of(target)
        if features is None:
            raise ValueError(f"not a CPU target: {target}")
        cores = int(target.attrs.get("num-cores", 0) or 0) or 1
        return cls(features.lanes, features.vector_registers, cores)


def current_cpu_lanes() -> int | None:
    """fp32 lanes of the current target when it is an ``llvm`` CPU, else ``None`` (the graph
    passes that lay data out for the vector width do nothing then)."""
    features = features_of(tvm.target.Target.current(allow_none=True))
    return None if features is None else features.lanes
