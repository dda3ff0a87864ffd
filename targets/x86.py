"""x86-64 CPUs: the host's own CPU (``native``) or a named ISA level.

``native`` asks LLVM for the host CPU and its features (``mcpu: native`` is rejected by the
wheel's LLVM, STACK.md). The tuning key names the ISA level, not the CPU model, so tuning
records are shared between CPUs with the same vector and dot-product instructions and never
applied to one that lacks them.
"""

from __future__ import annotations

import functools
import os

from .base import Capability, ResolvedTarget

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


@functools.cache
def host_cpu() -> tuple[str, frozenset[str]]:
    """The host CPU's LLVM name and feature set."""
    import tvm
    from tvm.target import codegen

    cpu = codegen.llvm_get_system_cpu()
    with tvm.target.Target({"kind": "llvm", "mcpu": cpu}):
        features = frozenset(codegen.llvm_get_cpu_features())
    return cpu, features


def isa_level(features: frozenset[str]) -> str:
    """The best ISA level (a preset name) that a feature set supports."""
    if {"avx512f", "avx512bw", "avx512vl"} <= features:
        return "avx512-vnni" if "avx512vnni" in features else "avx512"
    if {"avx2", "fma"} <= features:
        return "avx2"
    return "generic"


def resolve(preset: str | None, threads: int | None) -> ResolvedTarget:
    preset = preset or default_preset
    if preset not in _LEVELS:
        raise KeyError(preset)
    if preset == "native":
        mcpu, features = host_cpu()
        level = isa_level(features)
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
