"""aarch64 Linux CPUs (NEON), cross-compiled with ``aarch64-linux-gnu-gcc``.

Presets name the core, since the core decides which extensions the code may use: a build for
``cortex-a76`` uses the dot-product instructions (``+dotprod``) that a Cortex-A72 lacks and
would die on with SIGILL. On an x86 machine an ARM artifact runs under qemu user emulation
(``targets/qemu.py``), with ``QEMU_CPU`` set to the preset's core so that qemu refuses the
same instructions the real core would.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

from tvmforge.targets.base import Capability, ResolvedTarget

key = "arm"
summary = "aarch64 Linux CPU (LLVM, NEON), cross-compiled; runs here under qemu"

CROSS_CC = "aarch64-linux-gnu-gcc"

# preset -> (mattr, qemu cpu, description)
_CORES: dict[str, tuple[list[str], str, str]] = {
    "cortex-a72": (["+neon"], "cortex-a72", "Armv8.0-A, NEON (Raspberry Pi 4, AWS A1)"),
    "cortex-a76": (
        ["+neon", "+dotprod"],
        "cortex-a76",
        "Armv8.2-A, NEON + int8 dot product (Raspberry Pi 5)",
    ),
    "neoverse-n1": (
        ["+neon", "+dotprod"],
        "neoverse-n1",
        "Armv8.2-A, NEON + int8 dot product (AWS Graviton2, Ampere Altra)",
    ),
}
presets = {name: desc for name, (_, _, desc) in _CORES.items()}
default_preset = "cortex-a72"


def qemu_cpu(preset: str) -> str:
    """The ``QEMU_CPU`` value that emulates exactly the preset's core."""
    return _CORES[preset][1]


def resolve(preset: str | None, threads: int | None) -> ResolvedTarget:
    preset = preset or default_preset
    if preset not in _CORES:
        raise KeyError(preset)
    mattr = _CORES[preset][0]
    target = {
        "kind": "llvm",
        "mtriple": "aarch64-linux-gnu",
        "mcpu": preset,
        "mattr": list(mattr),
    }
    if threads:
        target["num-cores"] = threads
    level = "dotprod" if "+dotprod" in mattr else "neon"
    return ResolvedTarget(
        key=key,
        preset=preset,
        target=target,
        host=None,
        device="cpu",
        arch="aarch64",
        export_cc=CROSS_CC,
        tuning_key=f"arm-{preset}-{level}",
        threads=threads,
    )


def can_build() -> Capability:
    if not shutil.which(CROSS_CC):
        return Capability(False, f"{CROSS_CC} not found (apt-get install gcc-aarch64-linux-gnu)")
    # The compiler alone cannot link a shared library: the arm64 crt files come with libc6-dev
    # (a package gcc-aarch64-linux-gnu only recommends).
    crti = subprocess.run(
        [CROSS_CC, "-print-file-name=crti.o"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not crti or not Path(crti).is_absolute() or not Path(crti).exists():
        return Capability(False, f"{CROSS_CC} cannot link (apt-get install libc6-dev-arm64-cross)")
    return Capability(True)


def can_run() -> Capability:
    if platform.machine() in ("aarch64", "arm64"):
        return Capability(True)
    from tvmforge.targets import qemu

    return qemu.available()
