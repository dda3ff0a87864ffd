"""Shape-fixing values fed at run time (``tvmforge.frontend.value_inputs``) are refused with the
node, the input and the ``--freeze`` that fixes them; once frozen, the model compiles. Ops
whose run-time values Relax compiles (Slice) are left alone; string tensors are refused with
the reason."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import tvmforge
from onnx_builders import make_model
from tvmforge.errors import CompileError, InputError


def _reduce_model():
    return make_model(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="sum", keepdims=0)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4]),
         helper.make_tensor_value_info("axes", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        opset=18,
    )


def test_a_run_time_axes_input_is_refused_naming_the_freeze():
    with pytest.raises(InputError, match=r"node sum \(ReduceSum\) takes its axes from graph "
                       r"input 'axes'.*--freeze axes="):
        tvmforge.build_model(_reduce_model(), "x86")


def test_a_value_computed_from_inputs_names_every_input_to_freeze():
    model = make_model(
        [helper.make_node("Add", ["a", "b"], ["k"]),
         helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8]),
         helper.make_tensor_value_info("a", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("b", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("i", TensorProto.INT64, None)],
    )
    with pytest.raises(InputError, match=r"topk \(TopK\) takes its k from a value computed "
                       r"at run time .*'a', 'b'|'b', 'a'"):
        tvmforge.build_model(model, "x86")


def test_frozen_axes_compile_and_match_numpy(cli, tmp_model):
    path = tmp_model(_reduce_model())
    result = cli("compile", path, "--freeze", "axes=1", "-o", "m.tar")
    assert result.exit_code == 0, result.output
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    out = tvmforge.load("m.tar")(x=x)["y"]
    np.testing.assert_allclose(out, x.sum(axis=1), rtol=1e-5)


def test_the_cli_refusal_is_one_line_with_exit_2(cli, tmp_model):
    result = cli("compile", tmp_model(_reduce_model()), "-o", "m.tar")
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--freeze axes=" in lines[0]


def test_a_string_input_is_refused_with_the_reason():
    model = make_model(
        [helper.make_node("Equal", ["s", "t"], ["y"], name="eq")],
        [helper.make_tensor_value_info("s", TensorProto.STRING, [2]),
         helper.make_tensor_value_info("t", TensorProto.STRING, [2])],
        [helper.make_tensor_value_info("y", TensorProto.BOOL, [2])],
    )
    with pytest.raises(CompileError, match=r"use string tensors \[Equal\(string\)\]: eq"):
        tvmforge.build_model(model, "x86")
