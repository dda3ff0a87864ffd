"""Pre-quantized (QDQ) models: which kernels ``precision`` picks, the chains the int8 kernels take
across the model's own Q/DQ points, and the float kernels that round at them.

The QDQ models are made by ONNX Runtime's real ``quantize_static`` (QDQ, per-channel int8
weights, uint8 activations) from a small residual CNN with seeded weights whose BatchNorm is
written as a per-channel Mul and Add after the conv (what ORT keeps apart from the conv, with
a Q/DQ pair between them). ORT without graph optimizations evaluates the QDQ graph as written
(dequantize, float op, quantize): the reference for both builds.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_builders import make_model
from tvmforge.driver.build import build_model
from tvmforge.driver.calibration import resolve_precision
from tvmforge.errors import InputError
from tvmforge.frontend import importer as frontend
from tvmforge.targets import resolve

f32 = np.float32


def _residual_cnn(seed: int = 0) -> onnx.ModelProto:
    """x[1,8,12,12] -> conv3x3 -> Mul/Add (BN) -> Relu -> conv3x3 + bias -> Add(x) -> Relu ->
    conv1x1 -> GlobalAveragePool -> Flatten."""
    rng = np.random.default_rng(seed)

    def init(name, shape, scale=0.2):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(f32), name)

    inits = [init("w1", (8, 8, 3, 3)), init("g1", (1, 8, 1, 1), 0.5), init("b1", (1, 8, 1, 1)),
             init("w2", (8, 8, 3, 3)), init("c2", (8,)), init("w3", (16, 8, 1, 1))]
    inits[1] = numpy_helper.from_array(np.abs(numpy_helper.to_array(inits[1])) + f32(0.5), "g1")
    node = helper.make_node
    nodes = [
        node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        node("Mul", ["c1", "g1"], ["m1"], name="bn_scale"),
        node("Add", ["m1", "b1"], ["a1"], name="bn_shift"),
        node("Relu", ["a1"], ["r1"], name="relu1"),
        node("Conv", ["r1", "w2", "c2"], ["c2o"], pads=[1, 1, 1, 1], name="conv2"),
        node("Add", ["c2o", "x"], ["s"], name="skip"),
        node("Relu", ["s"], ["r2"], name="relu2"),
        node("Conv", ["r2", "w3"], ["c3"], name="conv3"),
        node("GlobalAveragePool", ["c3"], ["p"], name="pool"),
        node("Flatten", ["p"], ["y"], name="flatten"),
    ]
    return make_model(nodes,
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], inits,
                      opset=13)


def _samples(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((1, 8, 12, 12)) * 0.8).astype(f32) for _ in range(n)]


@functools.cache
def _qdq_model(fmt: str = "QDQ") -> bytes:
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"x": s} for s in _samples(8, 1))

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        onnx.save(_residual_cnn(), str(src))
        quantize_static(str(src), str(dst), Reader(), quant_format=getattr(QuantFormat, fmt),
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
        return dst.read_bytes()


def _ort_as_written(proto: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


def _run(built, x: np.ndarray) -> np.ndarray:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _loaded_qdq():
    return frontend.load(onnx.load_from_string(_qdq_model()))


# ---- the policy --------------------------------------------------------------------------


@pytest.mark.parametrize("target, kernels", [
    ("x86:avx512-vnni", "int8"),   # vpdpbusd
    ("arm:neoverse-n1", "int8"),   # sdot
    ("arm:cortex-a72", "fp32"),    # no int8 dot product: float kernels are faster
])
def test_auto_picks_integer_kernels_where_the_cpu_has_int8_dot_products(target, kernels):
    model = _loaded_qdq()
    inputs = frontend.resolve_inputs(model, {})
    quantize, note = resolve_precision(model, inputs, resolve(target).tvm_target(), None)
    assert note["model"] == "qdq" and note["kernels"] == kernels
    assert quantize == ("int8" if kernels == "int8" else None)
    assert note["reason"]


def test_forced_precisions_and_their_contradictions():
    model = _loaded_qdq()
    inputs = frontend.resolve_inputs(model, {})
    vnni = resolve("x86:avx512-vnni").tvm_target()
    assert resolve_precision(model, inputs, vnni, None, "fp32")[0] is None
    assert resolve_precision(model, inputs, resolve("arm:cortex-a72").tvm_target(), None,
                             "int8")[0] == "int8"
    with pytest.raises(InputError, match="contradict"):
        resolve_precision(model, inputs, vnni, "int8", "fp32")
    with pytest.raises(InputError, match="--precision"):
        resolve_precision(model, inputs, vnni, None, "bf8")
    float_model = frontend.load(_residual_cnn())
    with pytest.raises(InputError, match="no QuantizeLinear"):
        resolve_precision(float_model, frontend.resolve_inputs(float_model, {}), vnni, None,
                          "int8")
    # a float model: precision changes nothing
    assert resolve_precision(float_model, frontend.resolve_inputs(float_model, {}), vnni,
                             None)[1]["model"] == "float"


def test_a_dynamic_input_keeps_float_kernels_with_the_reason():
    proto = onnx.load_from_string(_qdq_model())
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    model = frontend.load(proto)
    inputs = frontend.resolve_inputs(model, {}, dynamic_batch=True)
    quantize, note = resolve_precision(model, inputs, resolve("x86:avx512-vnni").tvm_target(),
                                       None)
    assert quantize is None and note["kernels"] == "fp32" and "--input-shape" in note["reason"]


# ---- the builds --------------------------------------------------------------------------


def test_integer_kernels_take_the_chains_across_the_models_q_dq_points():
    proto = _qdq_model()
    built = build_model(onnx.load_from_string(proto), "x86", threads=2, precision="int8")
    report = built.quantization["report"]
    fused = {tuple(layer["fused"]) for layer in report["layers"]}
    # conv -> Q/DQ -> Mul -> Add (-> Relu, folded by ORT into the Q) : one kernel
    assert any("qdq" in f and "mul" in f and "add" in f for f in fused), fused
    # conv + bias -> Q/DQ -> Add(skip) -> Relu : one kernel, the skip read as uint8
    assert any(f[:3] == ("bias", "qdq", "add") for f in fused), fused
    assert report["observed_tensors"] == 0  # every range is the model's own
    manifest = built.manifest()
    assert manifest["precision"]["kernels"] == "int8"
    assert manifest["precision"]["reason"] == "--precision int8"
    for seed in range(3):
        x = _samples(1, 100 + seed)[0]
        ref = _ort_as_written(proto, x)
        err = np.abs(_run(built, x) - ref).max()
        # the model's integers but where a sum lands on a rounding tie; on an AVX2 CPU the
        # int8 kernels round the weights to 7 bits (exact vpmaddubsw), a few output steps
        assert err <= 0.02 * np.abs(ref).max(), err


def test_float_kernels_round_at_the_q_dq_points_like_the_model():
    proto = _qdq_model()
    built = build_model(onnx.load_from_string(proto), "x86", threads=2, precision="fp32")
    assert built.quantization is None
    assert built.manifest()["precision"]["kernels"] == "fp32"
    for seed in range(3):
        x = _samples(1, 200 + seed)[0]
        ref = _ort_as_written(proto, x)
        err = np.abs(_run(built, x) - ref).max()
        assert err <= 0.005 * np.abs(ref).max(), err  # exact here; a tie may flip


# ---- QOperator models --------------------------------------------------------------------


def test_a_qoperator_model_gets_the_same_int8_kernels_where_they_pay():
    proto = _qdq_model("QOperator")
    ops = {n.op_type for n in onnx.load_from_string(proto).graph.node}
    assert {"QLinearConv", "QLinearAdd", "QuantizeLinear"} <= ops
    model = frontend.load(onnx.load_from_string(proto))
    inputs = frontend.resolve_inputs(model, {})
    q, note = resolve_precision(model, inputs, resolve("x86:avx512-vnni").tvm_target(), None)
    assert q == "int8" and note["model"] == "qoperator"
    q, note = resolve_precision(model, inputs, resolve("arm:cortex-a72").tvm_target(), None)
    assert q is None and note["kernels"] == "int32"  # the exact lowering

    exact = build_model(onnx.load_from_string(proto), "x86", threads=2, precision="fp32")
    assert exact.quantization is None
    built = build_model(onnx.load_from_string(proto), "x86", threads=2, precision="int8")
    report = built.quantization["report"]
    assert len(report["layers"]) == 3 and report["observed_tensors"] == 0
    # QLinearAdd in the QDQ form: the residual add is the second conv's epilogue
    assert any("add" in layer["fused"] for layer in report["layers"])
    for seed in range(3):
        x = _samples(1, 300 + seed)[0]
        ref = _run(exact, x)
        # the same integers but for the requantization multiplier's last bit and ties
        assert np.abs(_run(built, x) - ref).max() <= 0.03 * np.abs(ref).max()
