"""The rule table: which rule schedules which kernel, that a rule which does not apply leaves
the kernel to the next, and that tuning records the same default the pass applies."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm_ffi
from onnx import TensorProto, helper, numpy_helper

from onnx_builders import conv_relu_model, make_model
from tvmforge.driver.pipeline import to_kernels
from tvmforge.frontend import importer as frontend
from tvmforge.passes.schedule.rules import RULES, CpuScheduleParams, first_rule
from tvmforge.tuning import tune as tuning

X86 = {"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2}


def _kernels(model) -> dict[str, tvm.tirx.PrimFunc]:
    loaded = frontend.load(model)
    target = tvm.target.Target(X86)
    mod = to_kernels(frontend.to_relax(loaded, frontend.resolve_inputs(loaded, {})), target)
    return {g.name_hint: f for g, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


def _rule_names(model) -> dict[str, str]:
    params = CpuScheduleParams.from_target(tvm.target.Target(X86))
    names = {}
    for name, func in _kernels(model).items():
        found = first_rule(func, params)
        names[name] = found[0].name if found else "none"
    return names


def _pool_matmul_softmax():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 48)).astype(np.float32), "w")
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "w"], ["m"]),
        helper.make_node("Softmax", ["m"], ["y"], axis=-1),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 48])],
        [w],
    )


def test_rule_names_are_unique_and_generic_is_last():
    names = [r.name for r in RULES]
    assert len(set(names)) == len(names)
    assert names[-1] == "generic"
    assert names[0] == "int8_kernel"  # before any float rule could take an int8 kernel


def test_a_small_conv_model_gets_contraction_and_reduction_rules():
    # channels below a vector: the conv stays NCHW (no blocked layout), a plain contraction
    names = _rule_names(conv_relu_model())
    assert names == {
        "fused_conv2d_add_relu": "contraction",
        "matmul": "contraction",
        "mean": "row_reduction",
        "reshape": "row_reduction",
    }


def test_pool_matmul_and_softmax_get_their_rules():
    names = set(_rule_names(_pool_matmul_softmax()).values())
    assert {"pool", "packed_dense", "row_reduction"} <= names, names


def test_a_rule_that_does_not_apply_passes_the_kernel_on():
    params = CpuScheduleParams.from_target(tvm.target.Target(X86))
    pool = next(f for n, f in _kernels(_pool_matmul_softmax()).items() if "pool" in n)
    by_name = {r.name: r for r in RULES}
    assert by_name["contraction"].apply(pool, params) is None
    assert by_name["nchwc_conv"].apply(pool, params) is None
    rule, _ = first_rule(pool, params, [by_name["contraction"], by_name["generic"]])
    assert rule.name == "generic"


@pytest.mark.parametrize("model", [conv_relu_model, _pool_matmul_softmax])
def test_tuning_records_the_default_the_pass_applies(model):
    from tvmforge.passes.schedule.rules import schedule_prim_func

    target = tvm.target.Target(X86)
    params = CpuScheduleParams.from_target(target)
    for name, func in _kernels(model()).items():
        want = schedule_prim_func(func, params)
        sch = tuning._traced_default_schedule(tvm.IRModule({"main": func}), target)
        assert sch is not None, name
        replayed = tvm.s_tir.Schedule(tvm.IRModule({"main": func}))
        sch.trace.apply_to_schedule(replayed, remove_postproc=False)
        from tvmforge.passes.schedule.weight_prefetch import insert_weight_prefetches

        got = insert_weight_prefetches(replayed.mod["main"])
        assert tvm_ffi.structural_equal(
            got.without_attr("global_symbol"), want.without_attr("global_symbol")
        ), name
