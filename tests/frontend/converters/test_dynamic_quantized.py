"""Models quantized by ONNX Runtime's ``quantize_dynamic``, compiled by tvmforge, against ORT.

Each float model (an MLP, a transformer-encoder block, LSTMs, a small CNN) is built here from
seeded weights and quantized by ORT's real ``quantize_dynamic``; both the model it writes
(``DynamicQuantizeLinear → MatMulInteger/ConvInteger → Cast → Mul``, ``DynamicQuantizeLSTM``)
and the model ORT's graph optimizer turns it into (``DynamicQuantizeMatMul``,
``MatMulIntegerToFloat``, ``FusedMatMul``; saved with ``optimized_model_filepath``) are
compiled with ``build_model(..., "x86")`` and compared with ORT (one thread) on that model.

Tolerance: the integer arithmetic is the same as ORT's, so the outputs must agree to float32
rounding: max |ours - ORT| <= 1e-5 * max(1, max |ORT|) (measured: at most ~1.5e-7 of that
scale). A wrong scale, zero point or gate order is off by 1e-2 or more; one code of
difference in a dynamic quantization (a float value within an ulp of a rounding boundary) is
~1e-3 and would fail too; none occurs with these seeds.

ORT's u8 x s8 kernels on an x86 CPU without AVX-VNNI add pairs of products in int16 with
saturation (``vpmaddubsw``), so there int8 weights are quantized with ``reduce_range=True``
(7 bits, what that option is for; the LSTM quantizer always writes int8 weights); a separate
test checks full-range int8 weights against the ONNX reference implementation instead.
"""

from __future__ import annotations

import collections
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from tvm import relax

import tvmforge
from tvmforge.errors import InputError, TvmforgeError
from tvmforge.targets import features

IR_VERSION = 9
NEAR = 1e-5  # relative to max(1, max |ORT|); see the module doc

_HOST = features.detect_host()
ORT_INT8_EXACT = _HOST.arch != "x86_64" or _HOST.int8_dot != "none"

# quantize_dynamic's log line asking for its pre-processing step is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Field 'shape' of 'type' is required:UserWarning")


# ---------------------------------------------------------------- helpers


def _f32(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _model(nodes, inputs, outputs, initializers, *, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "model", inputs, outputs, initializers)
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def _float_input(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _output(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(node.op_type for node in model.graph.node)


def _quantize(
    model: onnx.ModelProto,
    folder: Path,
    weight_type: QuantType,
    per_channel: bool,
    extra_options: dict | None = None,
    *,
    int8_weights: bool | None = None,
) -> onnx.ModelProto:
    """ORT's ``quantize_dynamic`` of ``model``, with 7-bit weights where they are int8 and
    ORT's kernels would saturate (see the module doc). ``int8_weights`` defaults to
    ``weight_type == QInt8``; the LSTM quantizer writes int8 weights whatever the type."""
    if int8_weights is None:
        int8_weights = weight_type == QuantType.QInt8
    dst = folder / "quantized.onnx"
    quantize_dynamic(
        model,
        dst,
        weight_type=weight_type,
        per_channel=per_channel,
        reduce_range=int8_weights and not ORT_INT8_EXACT,
        extra_options=dict(extra_options or {}),
    )
    return onnx.load(str(dst))


def _ort_fused(model: onnx.ModelProto, folder: Path) -> onnx.ModelProto:
    """``model`` after ORT's graph optimizations up to the extended level (contrib-op fusions,
    no hardware-specific layouts), as ORT saves it."""
    path = folder / "ort-optimized.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(path))


def _run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # ORT's LSTM quantizes H per thread's share of the batch
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def _run_tvm(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    built = tvmforge.build_model(model, "x86")
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(feeds[i.name]) for i in built.inputs])
    outs = [out] if hasattr(out, "numpy") else list(out)
    return [o.numpy() for o in outs]


def _assert_near(ours: list[np.ndarray], refs: list[np.ndarray]) -> None:
    assert len(ours) == len(refs)
    for got, ref in zip(ours, refs, strict=True):
        assert got.shape == ref.shape and got.dtype == ref.dtype
        diff = float(np.abs(got.astype(np.float64) - ref).max())
        bound = NEAR * max(1.0, float(np.abs(ref).max()))
        assert diff <= bound, f"max |ours - reference| = {diff:.3g} > {bound:.3g}"


def _compare(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    _assert_near(_run_tvm(model, feeds), _run_ort(model, feeds))


def _feeds(model: onnx.ModelProto, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in model.graph.input:
        shape = [d.dim_value for d in info.type.tensor_type.shape.dim]
        feeds[info.name] = rng.normal(0, 1, shape).astype(np.float32)
    return feeds


WEIGHTS = {
    "s8-per-tensor": (QuantType.QInt8, False),
    "s8-per-channel": (QuantType.QInt8, True),
    "u8-per-tensor": (QuantType.QUInt8, False),
    "u8-per-channel": (QuantType.QUInt8, True),
}


# ---------------------------------------------------------------- float models


def _mlp() -> onnx.ModelProto:
    """Gemm(transB) - Relu - MatMul - Add."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["m"]),
        helper.make_node("Add", ["m", "b2"], ["y"]),
    ]
    weights = [
        _const("w1", _f32(rng.normal(0, 0.3, (32, 16)))),
        _const("b1", _f32(rng.normal(0, 0.1, 32))),
        _const("w2", _f32(rng.normal(0, 0.3, (32, 8)))),
        _const("b2", _f32(rng.normal(0, 0.1, 8))),
    ]
    return _model(nodes, [_float_input("x", [4, 16])], [_output("y")], weights)


def _encoder_block(seq: int = 8, width: int = 16, heads: int = 2, ffn: int = 32):
    """Pre-norm transformer-encoder block: LayerNormalization, Q/K/V MatMul+Add, two heads
    (Reshape/Transpose), softmax(Q·Kᵀ · 1/sqrt(d)) · V, output projection, residual Add,
    LayerNormalization, MatMul - Gelu (as Erf) - MatMul, residual Add."""
    rng = np.random.default_rng(1)
    head = width // heads
    nodes = []

    def node(op, inputs, outputs, **attrs):
        nodes.append(helper.make_node(op, inputs, outputs, **attrs))

    node("LayerNormalization", ["x", "g1", "n1"], ["ln1"], axis=-1, epsilon=1e-5)
    for p in "qkv":
        node("MatMul", ["ln1", f"w{p}"], [f"{p}m"])
        node("Add", [f"{p}m", f"b{p}"], [f"{p}a"])
        node("Reshape", [f"{p}a", "heads"], [f"{p}r"])
        node("Transpose", [f"{p}r"], [f"{p}h"], perm=[0, 2, 1, 3])
    node("Transpose", ["kh"], ["kt"], perm=[0, 1, 3, 2])
    node("MatMul", ["qh", "kt"], ["scores"])
    node("Mul", ["scores", "scale"], ["scaled"])
    node("Softmax", ["scaled"], ["probs"], axis=-1)
    node("MatMul", ["probs", "vh"], ["context"])
    node("Transpose", ["context"], ["context_t"], perm=[0, 2, 1, 3])
    node("Reshape", ["context_t", "merged"], ["attended"])
    node("MatMul", ["attended", "wo"], ["om"])
    node("Add", ["om", "bo"], ["oa"])
    node("Add", ["x", "oa"], ["res1"])
    node("LayerNormalization", ["res1", "g2", "n2"], ["ln2"], axis=-1, epsilon=1e-5)
    node("MatMul", ["ln2", "w1"], ["f1"])
    node("Add", ["f1", "b1"], ["f1b"])
    node("Div", ["f1b", "sqrt2"], ["gd"])
    node("Erf", ["gd"], ["ge"])
    node("Add", ["ge", "one"], ["gp"])
    node("Mul", ["f1b", "gp"], ["gm"])
    node("Mul", ["gm", "half"], ["gelu"])
    node("MatMul", ["gelu", "w2"], ["f2"])
    node("Add", ["f2", "b2"], ["f2b"])
    node("Add", ["res1", "f2b"], ["y"])

    def matrix(rows, cols):
        return _f32(rng.normal(0, 1 / np.sqrt(rows), (rows, cols)))

    def vector(n, mean=0.0):
        return _f32(mean + 0.1 * rng.normal(size=n))

    weights = [
        _const("g1", vector(width, 1.0)),
        _const("n1", vector(width)),
        _const("g2", vector(width, 1.0)),
        _const("n2", vector(width)),
        *[_const(f"w{p}", matrix(width, width)) for p in "qkvo"],
        *[_const(f"b{p}", vector(width)) for p in "qkvo"],
        _const("w1", matrix(width, ffn)),
        _const("b1", vector(ffn)),
        _const("w2", matrix(ffn, width)),
        _const("b2", vector(width)),
        _const("heads", np.array([1, seq, heads, head], np.int64)),
        _const("merged", np.array([1, seq, width], np.int64)),
        _const("scale", _f32(1 / np.sqrt(head))),
        _const("sqrt2", _f32(np.sqrt(2))),
        _const("one", _f32(1.0)),
        _const("half", _f32(0.5)),
    ]
    return _model(nodes, [_float_input("x", [1, seq, width])], [_output("y")], weights)


def _lstm(direction: str, batch: int, states: bool, seed: int) -> onnx.ModelProto:
    """One ONNX LSTM (opset 14), seeded weights; ``states``: initial_h, initial_c (inputs)
    and peepholes too."""
    rng = np.random.default_rng(seed)
    seq, size, hidden = 6, 8, 12
    nd = 2 if direction == "bidirectional" else 1
    names = ["x", "W", "R", "B"] + (["", "h0", "c0", "P"] if states else [])
    node = helper.make_node(
        "LSTM", names, ["Y", "Y_h", "Y_c"], hidden_size=hidden, direction=direction
    )
    weights = [
        _const("W", _f32(rng.normal(0, 0.3, (nd, 4 * hidden, size)))),
        _const("R", _f32(rng.normal(0, 0.3, (nd, 4 * hidden, hidden)))),
        _const("B", _f32(rng.normal(0, 0.1, (nd, 8 * hidden)))),
    ]
    inputs = [_float_input("x", [seq, batch, size])]
    if states:
        weights.append(_const("P", _f32(rng.normal(0, 0.1, (nd, 3 * hidden)))))
        inputs += [_float_input(n, [nd, batch, hidden]) for n in ("h0", "c0")]
    outputs = [_output(n) for n in ("Y", "Y_h", "Y_c")]
    return _model([node], inputs, outputs, weights, opset=14)


def _cnn() -> onnx.ModelProto:
    """Conv(pad 1) - Relu - Conv(stride 2, group 2)."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], strides=[2, 2], group=2),
    ]
    weights = [
        _const("w1", _f32(rng.normal(0, 0.3, (8, 3, 3, 3)))),
        _const("b1", _f32(rng.normal(0, 0.1, 8))),
        _const("w2", _f32(rng.normal(0, 0.3, (6, 4, 3, 3)))),
        _const("b2", _f32(rng.normal(0, 0.1, 6))),
    ]
    return _model(nodes, [_float_input("x", [1, 3, 10, 10])], [_output("y")], weights)


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize("weights", WEIGHTS, ids=list(WEIGHTS))
def test_quantized_mlp_matches_ort(weights: str, tmp_path: Path):
    """The quantize_dynamic model and ORT's fused form of it (DynamicQuantizeMatMul)."""
    quantized = _quantize(_mlp(), tmp_path, *WEIGHTS[weights])
    assert _ops(quantized)["MatMulInteger"] == 2, "quantize_dynamic no longer quantizes Gemm/MatMul"
    fused = _ort_fused(quantized, tmp_path)
    assert _ops(fused)["DynamicQuantizeMatMul"] == 2, _ops(fused)
    feeds = _feeds(quantized, 10)
    _compare(quantized, feeds)
    _compare(fused, feeds)


def test_full_range_int8_weights_match_the_onnx_reference(tmp_path: Path):
    """Full-range int8 weights: the exact integer result, i.e. the ONNX reference evaluator
    running the unfused quantize_dynamic model (standard ops only), for both forms. (ORT on a
    CPU without AVX-VNNI saturates here; see the module doc.)"""
    from onnx.reference import ReferenceEvaluator

    dst = tmp_path / "quantized.onnx"
    quantize_dynamic(_mlp(), dst, weight_type=QuantType.QInt8, per_channel=True)
    quantized = onnx.load(str(dst))
    fused = _ort_fused(quantized, tmp_path)
    assert _ops(fused)["DynamicQuantizeMatMul"] == 2
    feeds = {"x": 3 * _feeds(quantized, 11)["x"]}
    spec = list(ReferenceEvaluator(quantized).run(None, feeds))
    from tvmforge.passes.schedule.intrinsics import int8_family
    from tvmforge.targets import resolve

    if int8_family(resolve("x86").tvm_target()) == "avx2":
        # the AVX2 int8 kernels add u8 x s8 pairs exactly only for |w| <= 64: full-range
        # weights are halved there (7 bits), like ORT's reduce_range; close, not exact
        for model in (quantized, fused):
            for got, ref in zip(_run_tvm(model, feeds), spec, strict=True):
                assert np.linalg.norm(got - ref) <= 0.05 * np.linalg.norm(ref)  # 2.3 %
        return
    _assert_near(_run_tvm(quantized, feeds), spec)
    _assert_near(_run_tvm(fused, feeds), spec)


ENCODER_CASES = {
    # id: (weights, extra_options, slow)
    "default-s8-per-tensor": ("s8-per-tensor", {}, False),
    "all-matmuls-u8-per-channel": ("u8-per-channel", {"MatMulConstBOnly": False}, False),
    "default-u8-per-channel": ("u8-per-channel", {}, True),
    "all-matmuls-s8-per-tensor": ("s8-per-tensor", {"MatMulConstBOnly": False}, True),
    "const-b-only-s8-per-channel": ("s8-per-channel", {"MatMulConstBOnly": True}, True),
}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(k, marks=[pytest.mark.slow] if slow else [])
        for k, (_, _, slow) in ENCODER_CASES.items()
    ],
)
def test_quantized_encoder_block_matches_ort(case: str, tmp_path: Path):
    """ORT 1.31's quantize_dynamic defaults to ``MatMulConstBOnly=True`` (the attention's
    activation x activation MatMuls stay float; ORT then fuses Q·Kᵀ·scale into FusedMatMul);
    ``False`` quantizes them too (two DynamicQuantizeLinear, u8 x u8). The fused form has
    DynamicQuantizeMatMul and MatMulIntegerToFloat (the Q/K/V projections share one
    DynamicQuantizeLinear) and com.microsoft Gelu. The slow cases also compile the unfused
    model."""
    weights, extra, slow = ENCODER_CASES[case]
    quantized = _quantize(_encoder_block(), tmp_path, *WEIGHTS[weights], extra)
    all_matmuls = extra.get("MatMulConstBOnly", True) is False
    assert _ops(quantized)["MatMulInteger"] == (8 if all_matmuls else 6), _ops(quantized)
    fused = _ort_fused(quantized, tmp_path)
    ops = _ops(fused)
    assert ops["MatMulIntegerToFloat"] == 3 and ops["DynamicQuantizeMatMul"] >= 3, ops
    feeds = _feeds(quantized, 12)
    _compare(fused, feeds)
    if slow:
        _compare(quantized, feeds)


LSTM_CASES = {
    # id: (direction, batch, initial states and peepholes, weights)
    "forward-per-tensor": ("forward", 2, False, "s8-per-tensor"),
    "bidirectional-states-per-channel": ("bidirectional", 3, True, "s8-per-channel"),
    "reverse-states-u8-per-channel": ("reverse", 2, True, "u8-per-channel"),
}


@pytest.mark.parametrize("case", LSTM_CASES, ids=list(LSTM_CASES))
def test_quantized_lstm_matches_ort(case: str, tmp_path: Path):
    """quantize_dynamic turns LSTM into com.microsoft DynamicQuantizeLSTM (int8 weights, also
    for QUInt8), which ORT runs with dynamically quantized X and H (see the converter)."""
    direction, batch, states, weights = LSTM_CASES[case]
    model = _lstm(direction, batch, states, seed=zlib.crc32(case.encode()))
    quantized = _quantize(model, tmp_path, *WEIGHTS[weights], int8_weights=True)
    assert set(_ops(quantized)) == {"DynamicQuantizeLSTM"}, _ops(quantized)
    w_name = quantized.graph.node[0].input[1]
    w_quantized = next(t for t in quantized.graph.initializer if t.name == w_name)
    assert w_quantized.data_type == TensorProto.INT8
    _compare(quantized, _feeds(quantized, 13))


@pytest.mark.parametrize("weights", ["s8-per-channel", "u8-per-tensor"])
def test_quantized_cnn_matches_ort(weights: str, tmp_path: Path):
    """quantize_dynamic quantizes Conv too: DynamicQuantizeLinear - ConvInteger - Cast - Mul."""
    quantized = _quantize(_cnn(), tmp_path, *WEIGHTS[weights])
    assert _ops(quantized)["ConvInteger"] == 2, _ops(quantized)
    _compare(quantized, _feeds(quantized, 14))


# ---------------------------------------------------------------- op by op


def _dqmm_model(b: np.ndarray, b_scale, b_zp, bias, a_shape) -> onnx.ModelProto:
    weights = [_const("b", b), _const("bs", _f32(b_scale))]
    names = ["a", "b", "bs"]
    if b_zp is not None:
        weights.append(_const("bz", b_zp))
        names.append("bz")
    if bias is not None:
        weights.append(_const("bias", _f32(bias)))
        names += [""] * (4 - len(names)) + ["bias"]
    node = helper.make_node("DynamicQuantizeMatMul", names, ["y"], domain="com.microsoft")
    return _model([node], [_float_input("a", a_shape)], [_output("y")], weights)


@pytest.mark.parametrize(
    "b_type, per_column, bias, a_shape",
    [
        (np.uint8, True, True, (2, 3, 16)),
        (np.int8, False, False, (5, 16)),
        (np.int8, True, True, (16,)),
    ],
    ids=["u8-per-column-zp-bias-3d", "s8-per-tensor-2d", "s8-per-column-1d"],
)
def test_dynamic_quantize_matmul_matches_ort(b_type, per_column: bool, bias: bool, a_shape):
    rng = np.random.default_rng(20)
    info = np.iinfo(b_type)
    low = info.min if ORT_INT8_EXACT or b_type == np.uint8 else -64
    high = info.max if ORT_INT8_EXACT or b_type == np.uint8 else 63
    b = rng.integers(low, high + 1, (16, 8)).astype(b_type)
    n = 8 if per_column else 1
    b_scale = rng.uniform(0.005, 0.02, n).reshape(-1 if per_column else ())
    zp_range = (100, 156) if b_type == np.uint8 else (0, 1)  # ORT: int8 zero points are 0
    b_zp = rng.integers(*zp_range, n).astype(b_type).reshape(-1 if per_column else ())
    model = _dqmm_model(b, b_scale, b_zp, rng.normal(0, 1, 8) if bias else None, a_shape)
    _compare(model, {"a": _f32(rng.normal(0, 2, a_shape))})


def test_dynamic_quantize_matmul_on_an_all_zero_input():
    """The range is 0: scale 1 and zero point 0, as ORT does (no division by zero)."""
    rng = np.random.default_rng(21)
    b = rng.integers(0, 256, (16, 8)).astype(np.uint8)
    model = _dqmm_model(b, 0.01, np.uint8(128), rng.normal(0, 1, 8), (3, 16))
    _compare(model, {"a": np.zeros((3, 16), np.float32)})


@pytest.mark.parametrize("b_type", [np.uint8, np.int8], ids=["u8", "s8"])
def test_matmul_integer_to_float_matches_ort(b_type):
    """A given as uint8 with a zero point; B per-column scale and zero point, bias."""
    rng = np.random.default_rng(22)
    a = rng.integers(0, 128 if not ORT_INT8_EXACT else 256, (2, 4, 16)).astype(np.uint8)
    b = rng.integers(-64 if b_type == np.int8 else 0, 64 if b_type == np.int8 else 256, (16, 8))
    b_zp = (rng.integers(100, 156, 8) if b_type == np.uint8 else np.zeros(8)).astype(b_type)
    weights = [
        _const("b", b.astype(b_type)),
        _const("as", _f32(0.03)),
        _const("bs", _f32(rng.uniform(0.005, 0.02, 8))),
        _const("az", np.uint8(117)),
        _const("bz", b_zp),
        _const("bias", _f32(rng.normal(0, 1, 8))),
    ]
    node = helper.make_node(
        "MatMulIntegerToFloat",
        ["a", "b", "as", "bs", "az", "bz", "bias"],
        ["y"],
        domain="com.microsoft",
    )
    inputs = [helper.make_tensor_value_info("a", TensorProto.UINT8, list(a.shape))]
    _compare(_model([node], inputs, [_output("y")], weights), {"a": a})


@pytest.mark.parametrize("attrs", [{"alpha": 0.25, "transB": 1}, {"transA": 1}])
def test_fused_matmul_matches_ort(attrs: dict):
    rng = np.random.default_rng(23)
    a_shape = (2, 6, 5) if attrs.get("transA") else (2, 5, 6)
    b_shape = (2, 4, 6) if attrs.get("transB") else (2, 6, 4)
    node = helper.make_node("FusedMatMul", ["a", "b"], ["y"], domain="com.microsoft", **attrs)
    model = _model(
        [node], [_float_input("a", a_shape), _float_input("b", b_shape)], [_output("y")], []
    )
    feeds = {"a": _f32(rng.normal(size=a_shape)), "b": _f32(rng.normal(size=b_shape))}
    _compare(model, feeds)


# ---------------------------------------------------------------- bad input


def _quantized_lstm_node(inputs: list[str]) -> onnx.ModelProto:
    rng = np.random.default_rng(30)
    hidden, size = 4, 3
    weights = [
        _const("W", rng.integers(-64, 64, (1, size, 4 * hidden)).astype(np.int8)),
        _const("R", rng.integers(-64, 64, (1, hidden, 4 * hidden)).astype(np.int8)),
        _const("ws", _f32([0.01])),
        _const("wz", np.zeros(1, np.int8)),
        _const("rs", _f32(np.full((1, 3), 0.01))),  # neither [1] nor [1, 4H]
        _const("rz", np.zeros(1, np.int8)),
    ]
    node = helper.make_node(
        "DynamicQuantizeLSTM", inputs, ["Y"], domain="com.microsoft", hidden_size=hidden
    )
    return _model([node], [_float_input("x", [2, 1, size])], [_output("Y")], weights)


@pytest.mark.parametrize(
    "inputs, message",
    [
        (["x", "W", "R", "", "", "", "", "", "", "wz", "rs", "rz"], "required input 8 (W_scale)"),
        (["x", "W", "R"], "required input 8 (W_scale)"),
        (["x", "W", "R", "", "", "", "", "", "ws", "wz", "rs", "rz"], "R_scale must have shape"),
    ],
    ids=["empty-W_scale", "no-quantization-inputs", "bad-R_scale-shape"],
)
def test_bad_dynamic_quantize_lstm_is_one_input_error(inputs: list[str], message: str):
    with pytest.raises(InputError) as caught:
        tvmforge.build_model(_quantized_lstm_node(inputs), "x86")
    line = caught.value.line()
    assert message in line and "DynamicQuantizeLSTM node" in line and "\n" not in line


def test_dynamic_quantize_matmul_with_an_integer_a_is_refused():
    b = np.zeros((4, 2), np.int8)
    names = ["a", "b", "bs"]
    node = helper.make_node("DynamicQuantizeMatMul", names, ["y"], domain="com.microsoft")
    inputs = [helper.make_tensor_value_info("a", TensorProto.INT8, [3, 4])]
    model = _model([node], inputs, [_output("y")], [_const("b", b), _const("bs", _f32(0.1))])
    with pytest.raises(TvmforgeError, match="A must be float32, got int8"):
        tvmforge.build_model(model, "x86")
