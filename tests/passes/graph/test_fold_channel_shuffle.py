"""``fold_channel_shuffle``: a depthwise conv reads a channel shuffle's input in place.

The shuffle pattern is recognised (and what is not one is left alone), ShuffleNet-style units
built through the whole x86 pipeline lose their shuffle kernels and match ONNX Runtime
(stride 1 and 2, a fixed and a dynamic batch), a shuffle with a second consumer stays for it,
and non-CPU targets are left unchanged.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import tirx

from onnx_builders import dynamic_batch, make_model
from tvmforge import build_model
from tvmforge.driver.pipeline import to_kernels
from tvmforge.frontend import importer as frontend
from tvmforge.passes.graph.fold_channel_shuffle import fold_channel_shuffle, shuffle_groups
from tvmforge.runtime.executor import LocalVM

X86 = {"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2}  # structure: 16 lanes


@pytest.mark.parametrize(
    ("shape_in", "shape_mid", "axes", "expect"),
    [
        pytest.param((1, 272, 14, 14), (1, 4, 68, 14, 14), [0, 2, 1, 3, 4], 4, id="shufflenet"),
        pytest.param(("$n", 12, 5, 5), ("$n", 3, 4, 5, 5), [0, 2, 1, 3, 4], 3, id="dynamic"),
        pytest.param((1, 272, 14, 14), (1, 4, 68, 14, 14), [0, 1, 2, 3, 4], None, id="no-swap"),
        pytest.param((1, 272, 14, 14), (1, 4, 68, 7, 28), [0, 2, 1, 3, 4], None, id="plane"),
        pytest.param((1, 8, 14, 14), (1, 8, 1, 14, 14), [0, 2, 1, 3, 4], None, id="one-per-group"),
    ],
)
def test_shuffle_pattern(shape_in, shape_mid, axes, expect):
    assert shuffle_groups(shape_in, shape_mid, axes, shape_in) == expect


def _unit(channels: int, groups: int, hw: int, stride: int, second_use: bool = False):
    """A ShuffleNet unit's middle: grouped 1x1 conv + ReLU, channel shuffle, depthwise 3x3
    (with bias), ReLU; with ``second_use`` the shuffled tensor is also an output."""
    rng = np.random.default_rng(channels + stride)
    per = channels // groups
    inits = [
        numpy_helper.from_array(
            (rng.standard_normal((channels, per, 1, 1)) / np.sqrt(per)).astype(np.float32), "g"
        ),
        numpy_helper.from_array(rng.standard_normal((channels, 1, 3, 3)).astype(np.float32), "d"),
        numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "db"),
        numpy_helper.from_array(np.array([1, groups, per, hw, hw], np.int64), "s5"),
        numpy_helper.from_array(np.array([1, channels, hw, hw], np.int64), "s4"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "g"], ["gc"], group=groups),
        helper.make_node("Relu", ["gc"], ["r"]),
        helper.make_node("Reshape", ["r", "s5"], ["r5"]),
        helper.make_node("Transpose", ["r5"], ["t5"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t5", "s4"], ["sh"]),
        helper.make_node(
            "Conv", ["sh", "d", "db"], ["dw"], group=channels, pads=[1, 1, 1, 1],
            strides=[stride, stride],
        ),
        helper.make_node("Relu", ["dw"], ["y"]),
    ]
    out = -(-hw // stride)
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, out, out])]
    if second_use:
        outputs.append(
            helper.make_tensor_value_info("sh", TensorProto.FLOAT, [1, channels, hw, hw])
        )
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, hw, hw])],
        outputs,
        inits,
    )


def _calls(model: onnx.ModelProto, dynamic: bool = False) -> list[str]:
    loaded = frontend.load(model)
    inputs = frontend.resolve_inputs(loaded, {}, dynamic_batch=dynamic)
    mod = to_kernels(frontend.to_relax(loaded, inputs), tvm.target.Target(X86))
    return re.findall(r"R\.call_tir\((\w+),", mod["main"].script())


def _check_against_onnxruntime(model: onnx.ModelProto, tmp_path, batches=(1,)) -> None:
    built = build_model(model, "x86", threads=2)
    built.executable.export_library(str(tmp_path / "lib.so"))
    vm = LocalVM(tmp_path / "lib.so", "cpu")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal((batch, *shape[1:])).astype(np.float32)
        ours = vm.run([x])
        refs = sess.run(None, {"x": x})
        assert len(ours) == len(refs)
        for a, r in zip(ours, refs, strict=True):
            np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4 * float(np.abs(r).max()))


@pytest.mark.parametrize(
    ("channels", "groups", "hw", "stride"),
    [
        pytest.param(48, 4, 14, 1, id="stride-1"),
        pytest.param(112, 4, 28, 2, id="stride-2-shufflenet-first"),
        pytest.param(36, 3, 7, 1, id="3-groups-7x7"),
    ],
)
def test_shuffle_is_read_by_the_depthwise_conv(channels, groups, hw, stride, tmp_path):
    model = _unit(channels, groups, hw, stride)
    calls = _calls(model)
    assert any(c.startswith("fused_depthwise_conv2d_shuffled") for c in calls), calls
    assert not any("transpose" in c for c in calls), calls  # no shuffle kernel left
    _check_against_onnxruntime(model, tmp_path)


def test_dynamic_batch_shuffle_is_folded_and_runs_per_sample(tmp_path):
    model = dynamic_batch(_unit(48, 4, 14, 1))
    calls = _calls(model, dynamic=True)
    assert any(c.startswith("fused_depthwise_conv2d_shuffled") for c in calls), calls
    assert not any("transpose" in c for c in calls), calls
    _check_against_onnxruntime(model, tmp_path, batches=(1, 3))


def test_a_shuffle_read_elsewhere_too_stays_for_that_reader(tmp_path):
    model = _unit(48, 4, 14, 1, second_use=True)
    calls = _calls(model)
    assert any(c.startswith("fused_depthwise_conv2d_shuffled") for c in calls), calls
    assert any("transpose" in c for c in calls), calls  # the returned shuffle is still computed
    _check_against_onnxruntime(model, tmp_path)


def test_other_targets_are_left_alone():
    loaded = frontend.load(_unit(48, 4, 14, 1))
    mod = frontend.to_relax(loaded, frontend.resolve_inputs(loaded, {}))
    with tvm.target.Target({"kind": "cuda", "arch": "sm_90"}):
        after = fold_channel_shuffle()(mod)
    assert after["main"].script() == mod["main"].script()
    with tvm.target.Target(X86):
        after = fold_channel_shuffle()(mod)
    text = after["main"].script()
    assert "permute_dims" not in text and "depthwise_conv2d_shuffled" in text
    assert not any(isinstance(f, tirx.PrimFunc) for _g, f in mod.functions_items())
