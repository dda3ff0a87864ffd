"""``conv_transpose_direct``: kernel-equals-stride transposed convs as a 1x1 conv plus
depth-to-space, checked against ONNX Runtime, and the transposed convs it must leave alone."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from onnx_builders import make_model


def _model(cin: int, cout: int, k: int, stride: int, hw: int, pads=(0, 0, 0, 0), act="Relu"):
    rng = np.random.default_rng(cin * 7 + cout + k)
    weights = {
        "w": rng.standard_normal((cin, cout, k, k)).astype(np.float32) * 0.3,
        "b": rng.standard_normal(cout).astype(np.float32),
    }
    out = (hw - 1) * stride - pads[0] - pads[2] + k
    nodes = [
        helper.make_node(
            "ConvTranspose", ["x", "w", "b"], ["c"], strides=[stride] * 2, pads=list(pads)
        ),
        helper.make_node(act, ["c"], ["y"]),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, out, out])],
        [numpy_helper.from_array(v, name) for name, v in weights.items()],
    )



@pytest.mark.parametrize(
    ("cin", "cout", "k", "stride", "pads", "act", "rewritten"),
    [
        pytest.param(24, 24, 2, 2, (0, 0, 0, 0), "Relu", True, id="2x2s2-24to24"),
        pytest.param(24, 1, 2, 2, (0, 0, 0, 0), "Sigmoid", True, id="2x2s2-24to1-sigmoid"),
        pytest.param(8, 5, 3, 3, (0, 0, 0, 0), "Relu", True, id="3x3s3-odd-channels"),
        pytest.param(8, 16, 4, 2, (1, 1, 1, 1), "Relu", False, id="4x4s2-padded-left-alone"),
    ],
)
def test_matches_onnxruntime(cin, cout, k, stride, pads, act, rewritten, caplog):
    import onnxruntime as ort

    from tvmforge import build_model

    model = _model(cin, cout, k, stride, 10, pads, act)
    x = np.random.default_rng(2).standard_normal((1, cin, 10, 10)).astype(np.float32)
    with caplog.at_level(logging.DEBUG, logger="tvmforge.passes.graph.conv_transpose_direct"):
        built = build_model(model, "x86", threads=2)
    assert ("computed 1 conv2d_transpose directly" in caplog.text) == rewritten
    out = relax.VirtualMachine(built.executable, tvm.cpu())["main"](tvm.runtime.tensor(x))
    ours = (out if hasattr(out, "numpy") else out[0]).numpy()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(ref))))
