"""``CpuFeatures``: detection from CPUID flags (``/proc/cpuinfo``) and from a named CPU's LLVM
features, and what a target's features say to the passes."""

from __future__ import annotations

import pytest
import tvm

from tvmforge.targets import features as F

# /proc/cpuinfo excerpts of real machines (first processor, trimmed to the lines read)
EPYC_MILAN = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 vaes vpclmulqdq
"""
XEON_AMX = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8581C CPU @ 2.30GHz
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 \
amx_bf16 avx512_fp16 amx_tile amx_int8 avx_vnni
"""
CASCADE = """model name\t: Intel(R) Xeon(R) CPU @ 2.80GHz
flags\t\t: avx avx2 fma avx512f avx512bw avx512vl avx512cd avx512_vnni
"""
NEOVERSE_N1 = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
"""


def _from_cpuinfo(text: str, arch: str) -> F.CpuFeatures:
    flags, model = F._cpuinfo(text)
    return F.from_flags(flags, arch=arch, model_name=model)


@pytest.mark.parametrize(
    ("text", "arch", "lanes", "regs", "int8", "bf16", "level"),
    [
        (EPYC_MILAN, "x86_64", 8, 16, "none", "none", "avx2"),
        (XEON_AMX, "x86_64", 16, 32, "amx", "amx", "avx512-vnni"),
        (CASCADE, "x86_64", 16, 32, "vnni", "none", "avx512-vnni"),
        (NEOVERSE_N1, "aarch64", 4, 32, "sdot", "none", ""),
    ],
)
def test_cpuinfo_flags_become_facts(text, arch, lanes, regs, int8, bf16, level):
    f = _from_cpuinfo(text, arch)
    assert (f.lanes, f.vector_registers, f.int8_dot, f.bf16) == (lanes, regs, int8, bf16)
    assert f.x86_level == level


def test_model_name_and_amx_are_read():
    f = _from_cpuinfo(XEON_AMX, "x86_64")
    assert f.model_name.startswith("Intel(R) Xeon(R) Platinum")
    assert f.amx and f.fp16
    assert not _from_cpuinfo(CASCADE, "x86_64").amx


def test_avx_vnni_without_avx512_is_its_own_kind():
    f = F.from_flags({"avx", "avx2", "fma", "avx_vnni"}, arch="x86_64")
    assert (f.lanes, f.int8_dot) == (8, "avx-vnni")


def test_cache_sizes_parse():
    assert F._size("48K") == 48 << 10
    assert F._size("2048K") == 2 << 20
    assert F._size("32M") == 32 << 20
    assert F._size("") == 0


def test_host_detection_reads_this_machines_flags():
    host = F.detect_host()
    text = open("/proc/cpuinfo").read()
    assert host.cores >= 1
    assert ("avx2" in text.split()) == (host.lanes >= 8) or host.arch != "x86_64"
    assert host.describe()["lanes"] == host.lanes


@pytest.mark.parametrize(
    ("target", "lanes", "int8"),
    [
        ({"kind": "llvm", "mcpu": "skylake-avx512"}, 16, "none"),
        ({"kind": "llvm", "mcpu": "cascadelake"}, 16, "vnni"),
        ({"kind": "llvm", "mcpu": "haswell"}, 8, "none"),
        ({"kind": "llvm"}, 4, "none"),  # LLVM compiles a bare target for generic x86-64
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]}, 4,
         "sdot"),
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}, 4, "none"),
    ],
)
def test_a_named_cpu_gets_the_facts_it_is_compiled_for(target, lanes, int8):
    f = F.features_of(tvm.target.Target(target))
    assert (f.lanes, f.int8_dot) == (lanes, int8)


def test_num_cores_comes_from_the_target_and_gpus_have_no_cpu_features():
    f = F.features_of(tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 3}))
    assert f.cores == 3
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_80"}, host={"kind": "llvm"})
    assert F.features_of(cuda) is None
