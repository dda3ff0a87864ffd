"""NVIDIA GPUs through TVM's CUDA code generator.

Kernels get TVM's GPU default schedules (dlight: ``gpu.Matmul``, ``GEMV``, ``Reduction``,
``GeneralReduction``, ``Fallback``; applied by TVM's CUDA backend pipeline), without which a
CUDA module is not even valid (unbound loops). Building needs no GPU: the device code is
generated here and carried inside the exported library as CUDA C, which TVM's CUDA runtime
compiles when the library is loaded (``prepare_runtime``); running needs a GPU and NVRTC
(``cuda-bindings``) or nvcc there.
"""

from __future__ import annotations

import functools
import shutil

from tvmforge.targets.base import Capability, ResolvedTarget

key = "cuda"
summary = "NVIDIA GPU (CUDA); builds here without a GPU"

presets = {
    "sm_75": "Turing (T4, RTX 20xx)",
    "sm_80": "Ampere (A100, A30)",
    "sm_86": "Ampere (A10, RTX 30xx)",
    "sm_89": "Ada (L4, L40, RTX 40xx)",
    "sm_90": "Hopper (H100, H200)",
}
default_preset = "sm_80"


@functools.cache
def local_gpu_arch() -> str | None:
    """``sm_XY`` of this machine's first GPU, or ``None`` without one."""
    import tvm

    dev = tvm.cuda(0)
    if not dev.exist:
        return None
    return "sm_" + dev.compute_version.replace(".", "")


def resolve(preset: str | None, threads: int | None) -> ResolvedTarget:
    preset = preset or local_gpu_arch() or default_preset
    if preset not in presets:
        raise KeyError(preset)
    return ResolvedTarget(
        key=key,
        preset=preset,
        target={"kind": "cuda", "arch": preset},
        # Generic x86-64 host code: the host side is only the VM's glue, and a GPU server's
        # CPU is not this build machine's.
        host={"kind": "llvm"},
        device="cuda",
        arch="x86_64",
        tuning_key=f"cuda-{preset}",
        threads=threads,
    )


def can_build() -> Capability:
    return Capability(True)


def prepare_runtime() -> None:
    """Make this process able to load a CUDA artifact's kernels.

    TVM 0.27 stores a CUDA module's kernels as CUDA C (format ``cuda``) and compiles them when
    the library is loaded, through the Python callback ``tvm_callback_cuda_compile``: NVRTC when
    the ``cuda-bindings`` package is there, else nvcc (``TVM_CUDA_COMPILE_MODE=nvcc``).
    """
    import importlib.util
    import os

    import tvm.support.nvcc  # noqa: F401  (registers tvm_callback_cuda_compile)

    if importlib.util.find_spec("cuda.bindings") is None and shutil.which("nvcc"):
        os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")


def can_run() -> Capability:
    try:
        arch = local_gpu_arch()
    except Exception as err:  # the CUDA runtime itself may be missing
        return Capability(False, f"no CUDA runtime ({err})")
    if arch is None:
        return Capability(False, "no NVIDIA GPU on this machine")
    return Capability(True, f"GPU {arch}")
