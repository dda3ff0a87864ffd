"""The int8 kernels' schedules and intrinsics: the dot-product family picked per CPU, the
instructions in the built code (checked by cross-building, on any machine), and the kernel a
CPU without a dot product runs (the float rule table) against integer arithmetic."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tvm
from tvm import te

from onnx_builders import cpu_target
from tvmforge.passes.schedule import int8_kernels as K
from tvmforge.passes.schedule.intrinsics import int8_family
from tvmforge.passes.schedule.rules import CpuScheduleParams, first_rule

CASCADELAKE = {"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2}
NEOVERSE_N1 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-n1",
               "mattr": ["+neon", "+dotprod"], "num-cores": 2}


@pytest.mark.parametrize(
    ("target", "family"),
    [
        (CASCADELAKE, "vnni"),
        ({"kind": "llvm", "mcpu": "sapphirerapids"}, "vnni"),  # AMX CPUs run the VNNI kernels
        ({"kind": "llvm", "mcpu": "skylake-avx512"}, None),
        ({"kind": "llvm", "mcpu": "alderlake"}, None),  # AVX-VNNI (256-bit): no kernels yet
        (NEOVERSE_N1, "sdot"),
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}, None),
    ],
)
def test_the_dot_product_family_follows_the_cpu(target, family):
    assert int8_family(tvm.target.Target(target)) == family


def _conv(oc: int = 32, c: int = 16, hw: int = 8, signed: bool = False):
    x = te.placeholder((1, hw, hw, c), "uint8", "x")
    w = te.placeholder(K.pack_weight_vnni(np.zeros((oc, c, 3, 3), np.int8)).shape, "int8", "w")
    ocp = -(-oc // 16) * 16
    bias = te.placeholder((ocp,), "int32", "bias")
    mult = te.placeholder((ocp,), "float32", "mult")
    out = K.qconv2d_nhwc(x, w, bias, mult, spec=K.ConvSpec(kernel=(3, 3), padding=(1, 1, 1, 1)),
                         epi=K.Epilogue(), x_zero_point=7, out_channels=oc, signed=signed)
    return te.create_prim_func([x, w, bias, mult, out])


def test_the_vnni_schedule_emits_vpdpbusd_when_cross_built():
    func = K.schedule_vnni(_conv(), 2)
    ex = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(CASCADELAKE))
    assert ex.mod.inspect_source("asm").count("vpdpbusd") > 0


def test_the_sdot_schedule_emits_sdot_when_cross_built():
    func = K.schedule_sdot(_conv(signed=True), 2)
    ex = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(NEOVERSE_N1))
    assert ex.mod.inspect_source("asm").count("sdot\t") > 0


@pytest.mark.parametrize("flat", [False, True], ids=["blocked-acc", "flat-acc"])
def test_an_int8_dense_without_dot_products_is_exact_under_the_rule_table(flat):
    """A dense layer read back as ``acc[c // 16, c % 16]`` over 16 padded lanes: the
    contraction rule split its tile across two threads so that each thread's share of the
    epilogue overlapped the other's (digits MLP int8 on an AVX2 CPU: 36 % top-1). Whatever rule
    takes it now, the result is the integer arithmetic's."""
    rng = np.random.default_rng(0)
    k, n = 64, 128
    x = te.placeholder((1, 1, 1, k), "uint8", "x")
    w_oi = rng.integers(-127, 128, (n, k, 1, 1)).astype(np.int8)
    packed = K.pack_weight_vnni(w_oi)
    w = te.placeholder(packed.shape, "int8", "w")
    bias = te.placeholder((n,), "int32", "bias")
    mult = te.placeholder((n,), "float32", "mult")
    fn = functools.partial(K.qconv2d_nhwc, spec=K.ConvSpec(kernel=(1, 1)),
                           epi=K.Epilogue(lower=0.0), x_zero_point=0, out_channels=n, flat=flat)
    func = te.create_prim_func([x, w, bias, mult, fn(x, w, bias, mult)])
    host = tvm.target.Target(cpu_target(cores=2))
    found = first_rule(func, CpuScheduleParams.from_target(host))
    assert found is not None
    if flat:  # what CPUs without a dot product get: the contraction rule's register tile
        assert found[0].name == "contraction"
    scheduled = found[1].mod["main"] if hasattr(found[1], "mod") else found[1]
    lib = tvm.tirx.build(tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")}),
                         target=host)
    xs = rng.integers(0, 256, (1, 1, 1, k)).astype(np.uint8)
    b = rng.integers(-2000, 2000, n).astype(np.int32)
    m = (rng.random(n) * 1e-3).astype(np.float32)
    out = tvm.runtime.empty((1, 1, 1, n), "uint8")
    lib["main"](*[tvm.runtime.tensor(a) for a in (xs, packed, b, m)], out)
    acc = xs.reshape(1, k).astype(np.int64) @ w_oi.reshape(n, k).T.astype(np.int64) + b
    t = np.maximum(acc.astype(np.float32) * m, np.float32(0))
    want = np.clip(np.round(t), 0, 255).astype(np.uint8).reshape(1, 1, 1, n)
    np.testing.assert_array_equal(out.numpy(), want)
