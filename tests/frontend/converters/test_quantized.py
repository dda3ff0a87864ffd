"""tvmforge's quantized-op converters (``frontend/converters/quantized.py``) against ONNX Runtime.

Each small graph is built here, compiled with ``tvmforge.build_model(..., "x86")`` and run in
TVM's VM; ONNX Runtime (CPU) runs the same graph. Integer outputs of the exact lowerings must
match bit for bit; float-emulated ops (QLinearAdd, QLinearAveragePool, QLinearSigmoid) may
differ by one unit in at most 1% of the elements (ties of x.5 rounded the other way). The
end-to-end tests quantize a float CNN and SqueezeNet with ``quantize_static`` and compare
ORT's and our outputs of the same quantized model in units of the output's scale.
"""

from __future__ import annotations

import collections
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from tvm import relax

import tvmforge
from tvmforge.frontend import converters, zoo
from tvmforge.frontend import importer as frontend
from tvmforge.targets import features

IR_VERSION = 9  # onnxruntime 1.31 reads IR <= 13
U8, S8 = np.uint8, np.int8
UNIFORM_STD = 74.0  # std of a uniform 8-bit code, for picking output scales that do not saturate

# Outputs are declared without shapes (the op computes them); onnx.checker warns about that.
pytestmark = pytest.mark.filterwarnings("ignore:Field 'shape' of 'type' is required:UserWarning")


# ---------------------------------------------------------------- helpers


def _model(nodes, inputs, outputs, initializers=(), *, opset: int = 19) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "quantized", inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def _input(name: str, array: np.ndarray) -> onnx.ValueInfoProto:
    elem = helper.np_dtype_to_tensor_dtype(array.dtype)
    return helper.make_tensor_value_info(name, elem, array.shape)


def _output(name: str, dtype) -> onnx.ValueInfoProto:
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return helper.make_tensor_value_info(name, elem, None)


def _consts(**arrays) -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(np.asarray(v), k) for k, v in arrays.items()]


def _run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def _run_tvm(model: onnx.ModelProto, feeds: dict[str, np.ndarray],
             precision: str = "fp32") -> list[np.ndarray]:
    # fp32: the exact lowering of every QOperator op (what these tests check); the int8
    # kernels a QOperator model gets by default where they pay are tested in
    # tests/driver/test_precision.py
    built = tvmforge.build_model(model, "x86", precision=precision)
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(feeds[i.name]) for i in built.inputs])
    outs = [out] if hasattr(out, "numpy") else list(out)
    return [o.numpy() for o in outs]


# ONNX Runtime's u8 x s8 kernels on an x86 CPU without a VNNI instruction add pairs of
# products in int16 with saturation (``vpmaddubsw``; ORT's quantizer offers ``reduce_range``
# for it), so on such a CPU ORT is not exact for full-range codes. There, the ONNX package's
# own reference implementation (exact integer arithmetic, as the spec reads) is the oracle
# where ORT disagrees.
ORT_INT8_EXACT = (
    features.detect_host().arch != "x86_64" or features.detect_host().int8_dot != "none"
)


def _spec_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray] | None:
    """The ONNX reference implementation's outputs, or None where it lacks an op."""
    from onnx.reference import ReferenceEvaluator

    try:
        return list(ReferenceEvaluator(model).run(None, feeds))
    except Exception:  # an op of the com.microsoft domain, which the reference lacks
        return None


def _compare(model: onnx.ModelProto, feeds: dict[str, np.ndarray], *, exact: bool) -> None:
    """Our outputs equal ORT's (``exact``), or differ by <= 1 unit in <= 1% of elements.

    Where ORT is not exact on this CPU (``ORT_INT8_EXACT``) and disagrees, the spec's
    reference outputs take its place.
    """
    refs = _run_ort(model, feeds)
    ours = _run_tvm(model, feeds)
    assert len(ours) == len(refs)
    spec = None if ORT_INT8_EXACT else _spec_outputs(model, feeds)
    for i, (got, ref) in enumerate(zip(ours, refs, strict=True)):
        assert got.shape == ref.shape
        assert got.dtype == ref.dtype
        if ref.dtype.kind == "f":
            np.testing.assert_array_equal(got, ref)
            continue
        assert len(np.unique(ref)) >= 16, "test data too degenerate to tell anything"
        if spec is not None and not np.array_equal(got, ref):
            ref = spec[i]  # ORT saturated; the spec decides
        if exact:
            np.testing.assert_array_equal(got, ref)
            continue
        diff = np.abs(got.astype(np.int64) - ref.astype(np.int64))
        assert diff.max() <= 1
        assert np.count_nonzero(diff) <= int(np.ceil(0.01 * diff.size))


def _codes(rng: np.random.Generator, dtype, shape) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(dtype)


def _activations(rng: np.random.Generator, dtype, shape) -> np.ndarray:
    """Activation codes for ops the ONNX reference cannot check: full range, or, where ORT's
    u8 x s8 kernels saturate (``ORT_INT8_EXACT`` false), 7-bit u8 codes, with which a pair of
    products fits int16 (what ORT's ``reduce_range`` is for)."""
    if dtype == np.uint8 and not ORT_INT8_EXACT:
        return rng.integers(0, 128, shape).astype(dtype)
    return _codes(rng, dtype, shape)


def _zero_point(rng: np.random.Generator, dtype, shape=()) -> np.ndarray:
    """A zero point near the middle of the range (uint8 ~128, int8 ~0)."""
    low, high = (100, 156) if dtype == np.uint8 else (-20, 20)
    return rng.integers(low, high, shape).astype(dtype)


def _f32(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


# ---------------------------------------------------------------- op by op

CONV_CASES = {
    # id: (x dtype, w dtype, per-channel w, group, attributes)
    "u8s8-per-tensor-pad1": (U8, S8, False, 1, {"pads": [1, 1, 1, 1]}),
    "u8u8-per-channel-zp-s2-pads": (U8, U8, True, 1, {"strides": [2, 2], "pads": [0, 1, 2, 1]}),
    "s8s8-per-channel-g2-d2": (S8, S8, True, 2, {"pads": [2, 2, 2, 2], "dilations": [2, 2]}),
    "u8s8-depthwise-same-upper": (U8, S8, True, 8, {"auto_pad": "SAME_UPPER"}),
    "s8s8-s2-same-lower": (S8, S8, False, 1, {"strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    "u8s8-valid-1x1": (U8, S8, True, 1, {"auto_pad": "VALID", "kernel_shape": [1, 1]}),
}


@pytest.mark.parametrize("case", CONV_CASES, ids=list(CONV_CASES))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_qlinearconv_matches_ort_exactly(case: str, bias: bool):
    xt, wt, per_channel, group, attrs = CONV_CASES[case]
    rng = np.random.default_rng(zlib.crc32(f"{case}/{bias}".encode()))
    channels, filters = 8, 8
    k = attrs.get("kernel_shape", [3, 3])[0]
    x = _codes(rng, xt, (1, channels, 9, 9))
    w = _codes(rng, wt, (filters, channels // group, k, k))
    x_scale = _f32(0.02)
    w_scale = _f32(rng.uniform(0.002, 0.01, filters) if per_channel else 0.005)
    w_zp = _zero_point(rng, wt, (filters,) if per_channel else ())
    fan_in = channels // group * k * k
    y_scale = _f32(x_scale * w_scale.max() * UNIFORM_STD**2 * np.sqrt(fan_in) / 50)
    params = _consts(
        xs=x_scale,
        xz=_zero_point(rng, xt),
        w=w,
        ws=w_scale,
        wz=w_zp,
        ys=y_scale,
        yz=_zero_point(rng, xt),
        B=rng.integers(-3000, 3000, filters).astype(np.int32),
    )
    inputs = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"] + (["B"] if bias else [])
    node = helper.make_node("QLinearConv", inputs, ["y"], group=group, **attrs)
    model = _model([node], [_input("x", x)], [_output("y", xt)], params)
    _compare(model, {"x": x}, exact=True)


def test_qlinearconv_1d_matches_ort_exactly():
    rng = np.random.default_rng(1)
    x = _activations(rng, U8, (1, 4, 20))  # the reference evaluator's 1-d QLinearConv is wrong
    w = _codes(rng, S8, (6, 4, 3))
    params = _consts(
        xs=_f32(0.02),
        xz=_zero_point(rng, U8),
        w=w,
        ws=_f32(rng.uniform(0.002, 0.01, 6)),
        wz=np.zeros(6, S8),
        ys=_f32(0.02 * 0.01 * UNIFORM_STD**2 * np.sqrt(12) / 50),
        yz=_zero_point(rng, U8),
    )
    node = helper.make_node(
        "QLinearConv",
        ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"],
        ["y"],
        pads=[1, 1],
        strides=[2],
    )
    model = _model([node], [_input("x", x)], [_output("y", U8)], params)
    _compare(model, {"x": x}, exact=True)


@pytest.mark.parametrize(
    "xt, wt, with_zero_points",
    [(U8, U8, True), (S8, S8, True), (U8, U8, False)],
    ids=["u8u8", "s8s8", "u8u8-no-zero-points"],
)
def test_convinteger_matches_ort_exactly(xt, wt, with_zero_points: bool):
    rng = np.random.default_rng(2)
    x = _codes(rng, xt, (1, 4, 7, 7))
    w = _codes(rng, wt, (6, 4, 3, 3))
    inputs = ["x", "w"] + (["xz", "wz"] if with_zero_points else [])
    params = _consts(
        w=w,
        **({"xz": _zero_point(rng, xt), "wz": _zero_point(rng, wt)} if with_zero_points else {}),
    )
    node = helper.make_node("ConvInteger", inputs, ["y"], pads=[1, 1, 1, 1], strides=[2, 2])
    model = _model([node], [_input("x", x)], [_output("y", np.int32)], params)
    refs, ours = _run_ort(model, {"x": x}), _run_tvm(model, {"x": x})
    np.testing.assert_array_equal(ours[0], refs[0])


def test_convinteger_per_channel_weight_zero_point():
    """ORT rejects a per-channel ``w_zero_point`` (the spec allows it): compare with a float
    Conv of the shifted integers, which is exact at these magnitudes."""
    rng = np.random.default_rng(3)
    x = _codes(rng, U8, (1, 4, 7, 7))
    w = _codes(rng, S8, (6, 4, 3, 3))
    x_zp, w_zp = _zero_point(rng, U8), _zero_point(rng, S8, (6,))
    node = helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], pads=[1, 1, 1, 1])
    model = _model(
        [node], [_input("x", x)], [_output("y", np.int32)], _consts(w=w, xz=x_zp, wz=w_zp)
    )
    shifted_w = (w.astype(np.float32) - w_zp.reshape(-1, 1, 1, 1)).astype(np.float32)
    float_conv = _model(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [_output("y", np.float32)],
        _consts(w=shifted_w),
    )
    want = _run_ort(float_conv, {"x": x.astype(np.float32) - np.float32(x_zp)})[0]
    got = _run_tvm(model, {"x": x})[0]
    np.testing.assert_array_equal(got, want.astype(np.int32))


@pytest.mark.parametrize(
    "at, bt, per_column, a_shape",
    [(U8, S8, False, (5, 32)), (U8, U8, True, (2, 5, 32)), (S8, S8, True, (5, 32))],
    ids=["u8s8-per-tensor", "u8u8-per-column-batched", "s8s8-per-column"],
)
def test_qlinearmatmul_matches_ort_exactly(at, bt, per_column: bool, a_shape):
    rng = np.random.default_rng(4)
    a = _codes(rng, at, a_shape)
    b_scale = _f32(rng.uniform(0.002, 0.01, 6) if per_column else 0.005)
    b_zp = _zero_point(rng, bt, (6,) if per_column else ())
    params = _consts(
        as_=_f32(0.02),
        az=_zero_point(rng, at),
        b=_codes(rng, bt, (32, 6)),
        bs=b_scale,
        bz=b_zp,
        ys=_f32(0.02 * b_scale.max() * UNIFORM_STD**2 * np.sqrt(32) / 50),
        yz=_zero_point(rng, at),
    )
    node = helper.make_node("QLinearMatMul", ["a", "as_", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
    model = _model([node], [_input("a", a)], [_output("y", at)], params)
    _compare(model, {"a": a}, exact=True)


@pytest.mark.parametrize(
    "at, bt, per_column, trans_b, quantized_output",
    [
        (U8, S8, False, 0, True),
        (U8, S8, True, 1, True),
        (S8, S8, True, 1, False),
        (U8, U8, False, 0, False),
    ],
    ids=["u8s8-requant", "u8s8-per-column-transB-requant", "s8s8-float-out", "u8u8-float-out"],
)
def test_qgemm_matches_ort_exactly(at, bt, per_column, trans_b, quantized_output):
    rng = np.random.default_rng(5)
    a = _activations(rng, at, (5, 32))  # a com.microsoft op: no ONNX reference
    b_scale = _f32(rng.uniform(0.002, 0.01, 6) if per_column else 0.005)
    params = _consts(
        as_=_f32(0.02),
        az=_zero_point(rng, at),
        b=_codes(rng, bt, (6, 32) if trans_b else (32, 6)),
        bs=b_scale,
        bz=np.zeros(6, bt) if per_column else _zero_point(rng, bt),
        C=rng.integers(-5000, 5000, 6).astype(np.int32),
        ys=_f32(0.02 * b_scale.max() * UNIFORM_STD**2 * np.sqrt(32) / 50),
        yz=_zero_point(rng, at),
    )
    inputs = ["a", "as_", "az", "b", "bs", "bz", "C"] + (["ys", "yz"] if quantized_output else [])
    if not quantized_output:
        params = [p for p in params if p.name not in ("ys", "yz")]
    node = helper.make_node(
        "QGemm", inputs, ["y"], domain="com.microsoft", transB=trans_b, alpha=0.75
    )
    out = _output("y", at if quantized_output else np.float32)
    model = _model([node], [_input("a", a)], [out], params)
    _compare(model, {"a": a}, exact=True)


BINARY_CASES = {
    "u8-same-shape": (U8, (1, 8, 6, 6)),
    "s8-channel-broadcast": (S8, (1, 8, 1, 1)),
    "u8-scalar-b": (U8, ()),
}


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("case", BINARY_CASES, ids=list(BINARY_CASES))
def test_qlinear_binary_ops_match_ort(op: str, case: str):
    """QLinearMul is an exact integer product; QLinearAdd is float-emulated."""
    dtype, b_shape = BINARY_CASES[case]
    rng = np.random.default_rng(6)
    a, b = _codes(rng, dtype, (1, 8, 6, 6)), _codes(rng, dtype, b_shape)
    a_scale, b_scale = _f32(0.0213), _f32(0.0317)
    c_scale = a_scale + b_scale if op == "QLinearAdd" else a_scale * b_scale * UNIFORM_STD**2 / 50
    params = _consts(
        as_=a_scale,
        az=_zero_point(rng, dtype),
        bs=b_scale,
        bz=_zero_point(rng, dtype),
        cs=_f32(c_scale),
        cz=_zero_point(rng, dtype),
    )
    node = helper.make_node(
        op, ["a", "as_", "az", "b", "bs", "bz", "cs", "cz"], ["y"], domain="com.microsoft"
    )
    model = _model([node], [_input("a", a), _input("b", b)], [_output("y", dtype)], params)
    _compare(model, {"a": a, "b": b}, exact=op == "QLinearMul")


@pytest.mark.parametrize(
    "dtype, channels_last", [(U8, 0), (S8, 0), (U8, 1)], ids=["u8", "s8", "u8-channels-last"]
)
def test_qlinear_global_average_pool_matches_ort_exactly(dtype, channels_last: int):
    rng = np.random.default_rng(7)
    x = _codes(rng, dtype, (2, 7, 7, 24) if channels_last else (2, 24, 7, 7))
    params = _consts(
        xs=_f32(0.0213),
        xz=_zero_point(rng, dtype),
        ys=_f32(0.0213 * UNIFORM_STD / 7 / 40),
        yz=_zero_point(rng, dtype),
    )
    node = helper.make_node(
        "QLinearGlobalAveragePool",
        ["x", "xs", "xz", "ys", "yz"],
        ["y"],
        domain="com.microsoft",
        channels_last=channels_last,
    )
    model = _model([node], [_input("x", x)], [_output("y", dtype)], params)
    _compare(model, {"x": x}, exact=True)


POOL_CASES = {
    "u8-3x3-s2-pad1": (U8, {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "s8-count-include-pad": (
        S8,
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    ),
    "u8-2x2-ceil": (U8, {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    "s8-same-upper": (S8, {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER"}),
    "u8-channels-last": (U8, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "channels_last": 1}),
}


@pytest.mark.parametrize("case", POOL_CASES, ids=list(POOL_CASES))
def test_qlinear_average_pool_matches_ort(case: str):
    dtype, attrs = POOL_CASES[case]
    rng = np.random.default_rng(8)
    x = _codes(rng, dtype, (1, 9, 9, 8) if attrs.get("channels_last") else (1, 8, 9, 9))
    params = _consts(
        xs=_f32(0.0213), xz=_zero_point(rng, dtype), ys=_f32(0.0117), yz=_zero_point(rng, dtype)
    )
    node = helper.make_node(
        "QLinearAveragePool",
        ["x", "xs", "xz", "ys", "yz"],
        ["y"],
        domain="com.microsoft",
        **attrs,
    )
    model = _model([node], [_input("x", x)], [_output("y", dtype)], params)
    _compare(model, {"x": x}, exact=False)


@pytest.mark.parametrize("dtype", [U8, S8], ids=["u8", "s8"])
def test_qlinear_concat_matches_ort_exactly(dtype):
    """Two inputs are requantized through tables; the third shares the output's parameters."""
    rng = np.random.default_rng(9)
    a, b, c = (_codes(rng, dtype, (1, n, 5, 5)) for n in (3, 5, 2))
    params = _consts(
        ys=_f32(0.0311),
        yz=_zero_point(rng, dtype),
        as_=_f32(0.0213),
        az=_zero_point(rng, dtype),
        bs=_f32(0.0517),
        bz=_zero_point(rng, dtype),
    )
    node = helper.make_node(
        "QLinearConcat",
        ["ys", "yz", "a", "as_", "az", "b", "bs", "bz", "c", "ys", "yz"],
        ["y"],
        domain="com.microsoft",
        axis=1,
    )
    inputs = [_input("a", a), _input("b", b), _input("c", c)]
    model = _model([node], inputs, [_output("y", dtype)], params)
    _compare(model, {"a": a, "b": b, "c": c}, exact=True)


@pytest.mark.parametrize("dtype", [U8, S8], ids=["u8", "s8"])
@pytest.mark.parametrize("op", ["QLinearSigmoid", "QLinearLeakyRelu"])
def test_qlinear_lookup_ops_match_ort(op: str, dtype):
    """LeakyRelu's table is exact; Sigmoid's may differ where MLAS's approximate logistic
    and TVM's land on opposite sides of a rounding tie."""
    rng = np.random.default_rng(10)
    x = _codes(rng, dtype, (2, 3, 16, 16))
    if op == "QLinearSigmoid":  # output in [0, 1]: use the whole code range
        y_scale, y_zp = _f32(1 / 256), np.asarray(np.iinfo(dtype).min, dtype)
        attrs = {}
    else:
        y_scale, y_zp = _f32(0.0257), _zero_point(rng, dtype)
        attrs = {"alpha": 0.1}
    params = _consts(xs=_f32(0.0413), xz=_zero_point(rng, dtype), ys=y_scale, yz=y_zp)
    node = helper.make_node(
        op, ["x", "xs", "xz", "ys", "yz"], ["y"], domain="com.microsoft", **attrs
    )
    model = _model([node], [_input("x", x)], [_output("y", dtype)], params)
    _compare(model, {"x": x}, exact=op == "QLinearLeakyRelu")


@pytest.mark.parametrize("opset, axis", [(13, -1), (11, 1)], ids=["opset13", "opset11-2d"])
def test_qlinear_softmax_matches_ort(opset: int, axis: int):
    """Dequantize, Softmax, quantize: ORT takes exp from a table, so a unit may differ."""
    rng = np.random.default_rng(12)
    x = _codes(rng, U8, (2, 4, 32))
    params = _consts(xs=_f32(0.05), xz=np.asarray(128, U8), ys=_f32(1 / 256),
                     yz=np.asarray(0, U8))
    node = helper.make_node("QLinearSoftmax", ["x", "xs", "xz", "ys", "yz"], ["y"],
                            domain="com.microsoft", axis=axis, opset=opset)
    model = _model([node], [_input("x", x)], [_output("y", U8)], params)
    _compare(model, {"x": x}, exact=False)


@pytest.mark.parametrize("op", ["QLinearConv", "QLinearConcat", "QLinearSigmoid"])
def test_quantization_parameters_given_at_run_time(op: str):
    """Scales and zero points fed as graph inputs take the in-graph path (no numpy folding)."""
    rng = np.random.default_rng(14)
    x = _codes(rng, U8, (1, 4, 6, 6))
    qparams = {
        "xs": _f32(0.0213),
        "xz": np.asarray(121, U8),
        "ys": _f32(1 / 256),
        "yz": np.asarray(0, U8),
    }
    weights = []
    if op == "QLinearConv":
        qparams["ys"] = _f32(0.0213 * 0.005 * UNIFORM_STD**2 * 6 / 50)  # fan-in 36
        qparams["yz"] = np.asarray(128, U8)
        weights = _consts(w=_codes(rng, S8, (4, 4, 3, 3)), ws=_f32(0.005), wz=np.asarray(0, S8))
        node = helper.make_node(
            op, ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], pads=[1, 1, 1, 1]
        )
    elif op == "QLinearConcat":
        qparams["ys"], qparams["yz"] = _f32(0.0311), np.asarray(117, U8)  # a real requantization
        node = helper.make_node(
            op,
            ["ys", "yz", "x", "xs", "xz", "x", "ys", "yz"],
            ["y"],
            domain="com.microsoft",
            axis=1,
        )
    else:
        node = helper.make_node(op, ["x", "xs", "xz", "ys", "yz"], ["y"], domain="com.microsoft")
    inputs = [_input("x", x)] + [_input(k, v) for k, v in qparams.items()]
    model = _model([node], inputs, [_output("y", U8)], weights)
    _compare(model, {"x": x, **qparams}, exact=op != "QLinearSigmoid")


# ---------------------------------------------------------------- TVM's stock converters


@pytest.mark.parametrize("data", ["normal", "all-positive", "all-zero"])
def test_dynamic_quantize_linear_matches_ort(data: str):
    """The stock converter divides by a zero scale on an all-zero input (y = 255, scale 0);
    ours, like ORT, uses scale 1 there."""
    rng = np.random.default_rng(11)
    x = {
        "normal": rng.normal(0, 3, (4, 16)),
        "all-positive": rng.uniform(1, 3, (4, 16)),
        "all-zero": np.zeros((4, 16)),
    }[data].astype(np.float32)
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "ys", "yz"])
    outputs = [_output("y", U8), _output("ys", np.float32), _output("yz", U8)]
    model = _model([node], [_input("x", x)], outputs, opset=13)
    refs, ours = _run_ort(model, {"x": x}), _run_tvm(model, {"x": x})
    for got, ref in zip(ours, refs, strict=True):
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("dtype", [U8, S8], ids=["u8", "s8"])
@pytest.mark.parametrize("axis", [None, 1, -1, 0], ids=["per-tensor", "axis1", "axis-1", "axis0"])
def test_stock_quantize_dequantize_linear_match_ort(dtype, axis):
    """TVM's QuantizeLinear/DequantizeLinear are right (round half to even, saturation,
    per-axis); kept as a regression check, with many exact x.5 ties in the data."""
    rng = np.random.default_rng(12)
    shape = (2, 4, 3)
    if axis is None:
        scale, zp, attrs = _f32(0.5), _zero_point(rng, dtype), {}
    else:
        n = shape[axis]
        scale, zp, attrs = (
            _f32(rng.uniform(0.1, 1, n)),
            _zero_point(rng, dtype, (n,)),
            {"axis": axis},
        )
    x = (rng.integers(-400, 400, shape) * 0.25).astype(np.float32)
    x.flat[:3] = [0.25, -0.75, 1e9]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], **attrs),
    ]
    outputs = [_output("q", dtype), _output("d", np.float32)]
    model = _model(nodes, [_input("x", x)], outputs, _consts(s=scale, z=zp))
    refs, ours = _run_ort(model, {"x": x}), _run_tvm(model, {"x": x})
    for got, ref in zip(ours, refs, strict=True):
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("at, bt", [(U8, S8), (S8, S8)], ids=["u8s8", "s8s8"])
def test_stock_matmulinteger_matches_ort(at, bt):
    """TVM's MatMulInteger is right, per-column ``b_zero_point`` included."""
    rng = np.random.default_rng(13)
    a = _codes(rng, at, (2, 5, 16))
    params = _consts(
        b=_codes(rng, bt, (16, 8)), az=_zero_point(rng, at), bz=_zero_point(rng, bt, (8,))
    )
    node = helper.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["y"])
    model = _model([node], [_input("a", a)], [_output("y", np.int32)], params)
    _compare(model, {"a": a}, exact=True)


# ---------------------------------------------------------------- end to end: quantize_static


class _RandomReader(CalibrationDataReader):
    """A few seeded N(0, 1) inputs for calibration."""

    def __init__(self, name: str, shape: Sequence[int], count: int = 4):
        rng = np.random.default_rng(100)
        batches = [{name: rng.normal(0, 1, shape).astype(np.float32)} for _ in range(count)]
        self._batches = iter(batches)

    def get_next(self):
        return next(self._batches, None)


def _small_cnn() -> onnx.ModelProto:
    """Conv-Relu-Conv(group 2)-Add-LeakyRelu-AveragePool, a depthwise Conv-Sigmoid gate (Mul),
    Concat, GlobalAveragePool-Flatten, then Gemm and MatMul heads."""
    rng = np.random.default_rng(0)

    def weight(*shape):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        return rng.normal(0, np.sqrt(2 / fan_in), shape).astype(np.float32)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=2),
        helper.make_node("Add", ["r1", "c2"], ["a"]),
        helper.make_node("LeakyRelu", ["a"], ["l"], alpha=0.1),
        helper.make_node("AveragePool", ["l"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], group=8),
        helper.make_node("Sigmoid", ["c3"], ["s"]),
        helper.make_node("Mul", ["p", "s"], ["gated"]),
        helper.make_node("Concat", ["p", "gated"], ["cat"], axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fc_b"], ["logits"], transB=1),
        helper.make_node("MatMul", ["f", "proj"], ["embedding"]),
    ]
    params = _consts(
        w1=weight(8, 3, 3, 3),
        b1=_f32(rng.normal(0, 0.1, 8)),
        w2=weight(8, 4, 3, 3),
        b2=_f32(rng.normal(0, 0.1, 8)),
        w3=weight(8, 1, 3, 3),
        b3=_f32(rng.normal(0, 0.1, 8)),
        fc=_f32(rng.normal(0, 0.3, (5, 16))),
        fc_b=_f32(rng.normal(0, 0.1, 5)),
        proj=_f32(rng.normal(0, 0.3, (16, 4))),
    )
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 4]),
        ],
        params,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION
    )


def _quantize(
    model: onnx.ModelProto,
    folder: Path,
    fmt: QuantFormat,
    per_channel: bool,
    activation_type: QuantType,
) -> onnx.ModelProto:
    src, dst = folder / "float.onnx", folder / f"quantized-{fmt.name}.onnx"
    onnx.save(model, str(src))
    info = frontend.load(model).inputs[0]
    quantize_static(
        str(src),
        str(dst),
        _RandomReader(info.name, info.shape),
        quant_format=fmt,
        per_channel=per_channel,
        activation_type=activation_type,
        weight_type=QuantType.QInt8,
        # 7-bit weights where ORT's u8 x s8 kernels would saturate (ORT's advice for CPUs
        # without VNNI), so that ORT computes the model it was given exactly
        reduce_range=not ORT_INT8_EXACT,
    )
    return onnx.load(str(dst))


def _output_scales(model: onnx.ModelProto) -> list[float]:
    """The scale of the DequantizeLinear that produces each graph output."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    scales = []
    for out in model.graph.output:
        node = producer[out.name]
        assert node.op_type == "DequantizeLinear"
        scales.append(float(inits[node.input[1]]))
    return scales


def _steps_off(model: onnx.ModelProto, x: np.ndarray) -> list[float]:
    """max |ours - ORT| of each output, in units of that output's quantization scale."""
    name = frontend.load(model).inputs[0].name
    refs, ours = _run_ort(model, {name: x}), _run_tvm(model, {name: x})
    return [
        float(np.abs(o - r).max()) / s
        for o, r, s in zip(ours, refs, _output_scales(model), strict=True)
    ]


QOPERATOR_OPS = {
    "QLinearConv",
    "QLinearAdd",
    "QLinearLeakyRelu",
    "QLinearAveragePool",
    "QLinearSigmoid",
    "QLinearMul",
    "QLinearConcat",
    "QLinearGlobalAveragePool",
    "QGemm",
    "QLinearMatMul",
}
E2E_CASES = {
    # id: (format, per_channel, activation type, tolerance in output steps)
    "qoperator-u8-per-tensor": (QuantFormat.QOperator, False, QuantType.QUInt8, 1),
    "qoperator-s8-per-channel": (QuantFormat.QOperator, True, QuantType.QInt8, 1),
    "qdq-u8-per-tensor": (QuantFormat.QDQ, False, QuantType.QUInt8, 3),
    "qdq-s8-per-channel": (QuantFormat.QDQ, True, QuantType.QInt8, 3),
}


@pytest.mark.parametrize("case", E2E_CASES, ids=list(E2E_CASES))
def test_quantized_cnn_matches_ort(case: str, tmp_path: Path):
    """QOperator: every op is ours and exact but QLinearAdd/AveragePool/Sigmoid, so the outputs
    agree within 1 step. QDQ: TVM runs float ops between DequantizeLinear and QuantizeLinear
    while ORT fuses them into integer kernels; a few steps apart at most."""
    fmt, per_channel, activation_type, tolerance = E2E_CASES[case]
    quantized = _quantize(_small_cnn(), tmp_path, fmt, per_channel, activation_type)
    ops = {n.op_type for n in quantized.graph.node}
    if fmt == QuantFormat.QOperator:
        assert ops >= QOPERATOR_OPS, f"quantize_static no longer emits {QOPERATOR_OPS - ops}"
    x = np.random.default_rng(1).normal(0, 1, (1, 3, 16, 16)).astype(np.float32)
    assert max(_steps_off(quantized, x)) <= tolerance


def test_quantized_squeezenet_matches_ort(tmp_path: Path):
    """QOperator SqueezeNet (per-channel): 26 QLinearConv, 8 QLinearConcat, MaxPool on
    dequantized values, QLinearGlobalAveragePool."""
    model = zoo.light_model("squeezenet")
    initializers = {t.name for t in model.graph.initializer}
    real_inputs = [v for v in model.graph.input if v.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(real_inputs)  # ORT's calibrator feeds only real inputs
    quantized = _quantize(model, tmp_path, QuantFormat.QOperator, True, QuantType.QUInt8)
    counts = collections.Counter(n.op_type for n in quantized.graph.node)
    assert counts["QLinearConv"] == 26 and counts["QLinearConcat"] == 8
    shape = frontend.load(quantized).inputs[0].shape
    x = np.random.default_rng(2).normal(0, 1, shape).astype(np.float32)
    assert max(_steps_off(quantized, x)) <= 1


def test_converters_are_registered_and_models_pass_the_support_check():
    ops = converters.supported_ops()
    for op in (*QOPERATOR_OPS, "ConvInteger", "DynamicQuantizeLinear"):
        assert op in ops
    node = helper.make_node(
        "QLinearSigmoid", ["x", "s", "z", "s", "z"], ["y"], domain="com.microsoft"
    )
    x = np.zeros((2, 2), U8)
    model = _model(
        [node], [_input("x", x)], [_output("y", U8)], _consts(s=_f32(0.1), z=np.asarray(0, U8))
    )
    assert frontend.unsupported_nodes(frontend.load(model)) == []
