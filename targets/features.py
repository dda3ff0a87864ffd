"""What a CPU can do, as one value: ``CpuFeatures``.

Every fact a pass or a schedule rule needs about a CPU (vector lanes and registers, which int8
dot product and which bf16 instruction it has, caches, cores) lives here, detected once from
the host's CPUID flags (``/proc/cpuinfo`` on Linux) or read off a named CPU's LLVM features
for a preset or a cross target. Nothing outside ``targets/`` branches on a target kind, an
architecture or a CPU feature flag: passes ask ``features_of(target)``.

Why CPUID and not LLVM's CPU name: the wheel's LLVM names some CPUs wrongly (an Intel Xeon
with AMX is called ``rocketlake``, whose LLVM feature list has no AMX, bf16 or fp16), so for
the host the kernel's own flags are the truth.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CpuFeatures",
    "cpu_quota",
    "detect_host",
    "features_of",
    "from_flags",
    "host_arch",
]

# int8 dot-product instruction families, weakest to strongest on x86; ``sdot`` on ARM.
INT8_DOT_KINDS = ("none", "avx-vnni", "vnni", "amx", "sdot")
BF16_KINDS = ("none", "avx512-bf16", "amx")


@dataclass(frozen=True)
class CpuFeatures:
    """A CPU's facts as the compiler uses them.

    Attributes
    ----------
    arch:
        ``x86_64`` or ``aarch64``.
    lanes:
        fp32 lanes in one vector register (16 AVX-512, 8 AVX2, 4 SSE/NEON).
    vector_registers:
        Architectural vector registers (32 for AVX-512 and AArch64, 16 otherwise).
    int8_dot:
        The int8 dot-product instruction: ``none``, ``avx-vnni`` (256-bit VEX), ``vnni``
        (AVX-512 VNNI), ``amx`` (AMX-INT8 tiles; such CPUs also have AVX-512 VNNI),
        ``sdot`` (ARM dot product).
    bf16:
        The bf16 instruction: ``none``, ``avx512-bf16`` (``vdpbf16ps``), ``amx``.
    fp16:
        Native fp16 arithmetic (AVX512-FP16, ARM fp16).
    l1d_bytes, l2_bytes, l3_bytes:
        Data cache sizes per core (L3: the whole cache); 0 where unknown.
    cores:
        CPUs this process may run on (its affinity mask).
    model_name:
        The CPU's marketing name where known (``AMD EPYC 7B13``), else the LLVM CPU name.
    flags:
        The raw feature flags the facts were read from (CPUID or LLVM names).
    """

    arch: str = "x86_64"
    lanes: int = 4
    vector_registers: int = 16
    int8_dot: str = "none"
    bf16: str = "none"
    fp16: bool = False
    l1d_bytes: int = 0
    l2_bytes: int = 0
    l3_bytes: int = 0
    cores: int = 1
    model_name: str = ""
    flags: frozenset[str] = field(default_factory=frozenset, repr=False, compare=False)

    @property
    def amx(self) -> bool:
        """AMX tiles of any kind."""
        return self.int8_dot == "amx" or self.bf16 == "amx"

    @property
    def avx2(self) -> bool:
        """256-bit integer SIMD (AVX2: ``vpmaddubsw``, ``vpmaddwd`` on ``ymm``), whatever else
        the CPU has; not in ``describe()`` or the tuning key (``x86_level`` says ``avx2``
        already for such CPUs without AVX-512)."""
        return self.arch == "x86_64" and "avx2" in self.flags

    @property
    def x86_level(self) -> str:
        """The x86 ISA level (a tuning key's suffix): ``generic``, ``avx2``, ``avx512``,
        ``avx512-vnni``; ``""`` on other architectures."""
        if self.arch != "x86_64":
            return ""
        if self.lanes >= 16:
            return "avx512-vnni" if self.int8_dot in ("vnni", "amx") else "avx512"
        if self.lanes >= 8:
            return "avx2"
        return "generic"

    def describe(self) -> dict[str, Any]:
        """The facts as JSON-able data (``tvmforge targets --json``, the manifest)."""
        data = asdict(self)
        data.pop("flags")
        data["amx"] = self.amx
        return data


def from_flags(
    flags: frozenset[str] | set[str],
    *,
    arch: str,
    cores: int = 1,
    model_name: str = "",
    caches: tuple[int, int, int] = (0, 0, 0),
) -> CpuFeatures:
    """Facts from a set of feature flags, in either spelling: Linux's ``/proc/cpuinfo``
    (``avx512_vnni``, ``amx_int8``, ``asimddp``) or LLVM's (``avx512vnni``, ``amx-int8``,
    ``dotprod``)."""
    f = {x.replace("-", "_").lower() for x in flags}

    def has(*names: str) -> bool:
        return any(n in f for n in names)

    if arch == "aarch64":
        lanes, regs = 4, 32
        int8 = "sdot" if has("asimddp", "dotprod") else "none"
        bf16 = "none"  # ARM bf16 (bfmmla) is not used by any kernel yet
        fp16 = has("fphp", "fullfp16", "asimdhp")
    else:
        avx512 = has("avx512f") and has("avx512bw") and has("avx512vl")
        if avx512:
            lanes, regs = 16, 32
        elif has("avx2", "avx"):
            lanes, regs = 8, 16
        else:
            lanes, regs = 4, 16
        if has("amx_int8") and has("amx_tile"):
            int8 = "amx"
        elif avx512 and has("avx512_vnni", "avx512vnni"):
            int8 = "vnni"
        elif has("avx_vnni", "avxvnni"):
            int8 = "avx-vnni"
        else:
            int8 = "none"
        if has("amx_bf16") and has("amx_tile"):
            bf16 = "amx"
        elif has("avx512_bf16", "avx512bf16"):
            bf16 = "avx512-bf16"
        else:
            bf16 = "none"
        fp16 = has("avx512_fp16", "avx512fp16")
    l1, l2, l3 = caches
    return CpuFeatures(
        arch=arch,
        lanes=lanes,
        vector_registers=regs,
        int8_dot=int8,
        bf16=bf16,
        fp16=fp16,
        l1d_bytes=l1,
        l2_bytes=l2,
        l3_bytes=l3,
        cores=cores,
        model_name=model_name,
        flags=frozenset(f),
    )


def host_arch() -> str:
    """This machine's architecture in the names targets use (``x86_64``, ``aarch64``)."""
    return platform.machine().replace("arm64", "aarch64").replace("AMD64", "x86_64")


def _cpuinfo(text: str) -> tuple[frozenset[str], str]:
    """Feature flags and model name from ``/proc/cpuinfo`` (x86 ``flags``, ARM
    ``Features``), first processor only."""
    flags: frozenset[str] = frozenset()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
        elif key == "model name" and not model:
            model = value.strip()
    return flags, model


def _size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text.rstrip("KMG")
    return int(digits) * scale if digits.isdigit() else 0


def _caches(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> tuple[int, int, int]:
    """L1d, L2, L3 sizes from sysfs; zeros where it is not readable."""
    sizes = {1: 0, 2: 0, 3: 0}
    for index in sorted(root.glob("index*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = _size((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified") and level in sizes:
            sizes[level] = size
    return sizes[1], sizes[2], sizes[3]


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _cgroup_paths(proc_cgroup: str) -> tuple[str | None, str | None]:
    """This process's cgroup v2 path and its v1 ``cpu`` controller path (``/proc/self/cgroup``)."""
    v2 = v1 = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def cpu_quota(
    root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """The CPUs a container's CPU quota grants this process (``1.5`` for a quota of 150 ms per
    100 ms period), from cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``/``cfs_period_us``,
    looked up along this process's cgroup path and its parents; ``None`` when no quota binds.
    """
    try:
        v2, v1 = _cgroup_paths(proc_cgroup.read_text())
    except OSError:
        v2 = v1 = None
    candidates: list[tuple[Path, str]] = []
    for rel, kind in ((v2, "v2"), (v1, "v1")):
        rel = (rel or "/").strip("/")
        parts = rel.split("/") if rel else []
        bases = [root] if kind == "v2" else [root / "cpu", root / "cpu,cpuacct"]
        for base in bases:
            for depth in range(len(parts), -1, -1):  # this cgroup, then its parents
                candidates.append((base.joinpath(*parts[:depth]), kind))
    quotas = []
    for folder, kind in candidates:
        try:
            if kind == "v2":
                quota, period = (folder / "cpu.max").read_text().split()[:2]
                if quota != "max":
                    quotas.append(int(quota) / int(period))
            else:
                quota = int((folder / "cpu.cfs_quota_us").read_text())
                period = int((folder / "cpu.cfs_period_us").read_text())
                if quota > 0 and period > 0:
                    quotas.append(quota / period)
        except (OSError, ValueError):
            continue
    return min(quotas) if quotas else None


@functools.cache
def detect_host() -> CpuFeatures:
    """This machine's CPU, from its CPUID flags (read once per process).

    On a system without ``/proc/cpuinfo`` the flags come from LLVM's view of the host CPU.
    """
    arch = host_arch()
    try:
        flags, model = _cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        flags, model = frozenset(), ""
    if not flags:
        cpu, llvm_flags = llvm_cpu_features(host_llvm_cpu())
        flags, model = llvm_flags, model or cpu
    return from_flags(flags, arch=arch, cores=_usable_cpus(), model_name=model, caches=_caches())


@functools.cache
def host_llvm_cpu() -> str:
    """LLVM's name for this machine's CPU (what ``mcpu`` is set to for ``native``)."""
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


@functools.cache
def llvm_cpu_features(
    mcpu: str | None, mtriple: str = "", mattr: tuple[str, ...] = ()
) -> tuple[str, frozenset[str]]:
    """LLVM's feature set of a named CPU (``None``: the generic CPU of the triple, what LLVM
    compiles a target without ``mcpu`` for), with ``mattr`` applied."""
    import tvm
    from tvm.target import codegen

    cpu = mcpu or "generic"
    spec: dict[str, Any] = {"kind": "llvm"}
    if mcpu:
        spec["mcpu"] = mcpu
    if mtriple:
        spec["mtriple"] = mtriple
    if mattr:
        spec["mattr"] = list(mattr)
    with tvm.target.Target(spec):
        features = set(codegen.llvm_get_cpu_features())
    for attr in mattr:  # "+avx512f" adds, "-avx512f" removes
        name = attr.lstrip("+-")
        (features.discard if attr.startswith("-") else features.add)(name)
    return cpu, frozenset(features)


def features_of(target: Any) -> CpuFeatures | None:
    """The CPU facts of a TVM target; ``None`` for a target that is not an LLVM CPU.

    The host's own CPU (an ``llvm`` target for this machine's architecture whose ``mcpu`` is
    LLVM's name for the host, as ``x86``/``x86:native`` resolve it) gets the detected CPUID
    facts; any other CPU (a preset, a cross target, a JSON target naming a CPU, a bare
    ``llvm`` target, which LLVM compiles for the generic CPU of its triple) gets the facts of
    LLVM's feature list for that CPU and ``mattr``: what the code will be compiled for.
    ``cores`` is the target's ``num-cores`` where it sets one.
    """
    if target is None or target.kind.name != "llvm":
        return None
    attrs = target.attrs
    triple = str(attrs.get("mtriple", "") or "")
    arch = "aarch64" if triple.startswith(("aarch64", "arm64")) else "x86_64"
    mcpu = str(attrs.get("mcpu", "") or "")
    mattr = tuple(str(a) for a in (attrs.get("mattr", None) or ()))
    cores = int(attrs.get("num-cores", 0) or 0)
    if arch == host_arch() and not mattr and mcpu and mcpu == host_llvm_cpu():
        found = detect_host()
    else:
        cpu, flags = llvm_cpu_features(mcpu or None, triple, mattr)
        found = from_flags(flags, arch=arch, model_name=cpu)
    if cores:
        from dataclasses import replace

        found = replace(found, cores=cores)
    return found
