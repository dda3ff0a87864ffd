"""LayerNormalization (every axis, with its Mean/InvStdDev outputs), RMSNormalization at axis 0
and BatchNormalization in training mode, built for x86 and compared with ONNX Runtime."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnx_builders import assert_close, run_both


def _model(nodes, inputs, outputs, inits=(), opset=23):
    graph = helper.make_graph(nodes, "norm", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=10)


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def test_layer_norm_every_axis_with_statistics_and_rms_norm_at_axis_0():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    inits, nodes, outputs = [], [], []
    for axis in (0, 1, -1):
        shape = list(x.shape[axis:])
        inits += [
            numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), f"s{axis}"),
            numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), f"b{axis}"),
        ]
        outs = [f"y{axis}", f"mean{axis}", f"inv{axis}"]
        nodes.append(helper.make_node("LayerNormalization", ["x", f"s{axis}", f"b{axis}"], outs,
                                      axis=axis, epsilon=1e-3))
        outputs += [_vi(outs[0], list(x.shape))] + [_vi(o, None) for o in outs[1:]]
    # the one-output form stays Relax's fused layer_norm
    nodes.append(helper.make_node("LayerNormalization", ["x", "s-1", "b-1"], ["y_only"]))
    outputs.append(_vi("y_only", list(x.shape)))
    inits.append(numpy_helper.from_array(rng.standard_normal(x.shape).astype(np.float32), "r"))
    nodes.append(helper.make_node("RMSNormalization", ["x", "r"], ["rms"], axis=0))
    outputs.append(_vi("rms", list(x.shape)))
    model = _model(nodes, [_vi("x", list(x.shape))], outputs, inits)
    ours, ref = run_both(model, {"x": x})
    assert ours[1].shape == (1, 1, 1) and ours[4].shape == (2, 1, 1)
    assert_close(ours, ref)


def test_batch_norm_in_training_mode_uses_the_batch_statistics():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32) * 3 + 1
    c = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in (
        ("scale", rng.standard_normal(3)), ("bias", rng.standard_normal(3)),
        ("mean", rng.standard_normal(3)), ("var", rng.random(3) + 0.5))]
    node = helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"],
                            ["y", "running_mean", "running_var"], training_mode=1,
                            momentum=0.8, epsilon=1e-2)
    model = _model([node], [_vi("x", list(x.shape))],
                   [_vi("y", list(x.shape)), _vi("running_mean", [3]), _vi("running_var", [3])],
                   c, opset=15)
    ours, ref = run_both(model, {"x": x})
    assert_close(ours, ref)
