"""x86-64 CPUs: the host's own CPU (``native``) or a named ISA level.

``native`` compiles for LLVM's name of the host CPU (``mcpu: native`` is rejected by the
wheel's LLVM); its ISA level comes from the host's CPUID flags (``features.detect_host``).
The tuning key names the ISA level, not the CPU model, so tuning records are shared between
CPUs with the same vector and dot-product instructions and never applied to one that lacks
them.
"""

from __future__ import annotations

import os

from tvmforge.targets.base import Capability, ResolvedTarget
from tvmforge.targets.features import detect_host, host_llvm_cpu

key = "x86"
summary = "x86-64 CPU (LLVM); runs on this machine"

# preset -> (mcpu, description). ``native`` is filled in from the host at resolve time.
_LEVELS: dict[str, tuple[str, str]] = {
    "native": ("", "this machine's CPU, detected"),
    "avx2": ("haswell", "AVX2 + FMA (Haswell and later, Zen 1-3)"),
    "avx512": ("skylake-avx512", "AVX-512 F/BW/DQ/VL (Skylake-SP)"),
    "avx512-vnni": ("cascadelake", "AVX-512 with VNNI int8 dot products (Cascade Lake, Zen 4+)"),
}
presets = {name: desc for name, (_, desc) in _LEVELS.items()}
default_preset = "native"


LEVELS = ("generic", "avx2", "avx512", "avx512-vnni")  # weakest first


def level_at_least(have: str, need: str) -> bool:
    """Whether a CPU at ISA level ``have`` runs code built for level ``need``."""
    if have not in LEVELS or need not in LEVELS:
        return have == need
    return LEVELS.index(have) >= LEVELS.index(need)


def resolve(preset: str | None, threads: int | None) -> ResolvedTarget:
    preset = preset or default_preset
    if preset not in _LEVELS:
        raise KeyError(preset)
    if preset == "native":
        mcpu = host_llvm_cpu()
        level = detect_host().x86_level
    else:
        mcpu, level = _LEVELS[preset][0], preset
    target: dict = {"kind": "llvm", "mcpu": mcpu}
    cores = threads or os.cpu_count() or 1
    target["num-cores"] = cores
    return ResolvedTarget(
        key=key,
        preset=preset,
        target=target,
        host=None,
        device="cpu",
        arch="x86_64",
        tuning_key=f"x86-{level}",
        threads=threads,
    )


def can_build() -> Capability:
    return Capability(True)


def can_run() -> Capability:
    import platform

    if platform.machine() in ("x86_64", "AMD64"):
        return Capability(True)
    return Capability(False, f"this machine is {platform.machine()}, not x86-64")
