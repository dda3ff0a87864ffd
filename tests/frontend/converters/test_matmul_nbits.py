"""com.microsoft ``MatMulNBits`` (frontend/converters/matmul_nbits.py, lowered by
``passes.quantize.int4.lower_matmul_nbits``) against ONNX Runtime.

Models are quantized by ORT's own ``MatMulNBitsQuantizer`` (block 32, symmetric and not) or
built by hand (float zero points, a bias, a 3-D input, block 16). Both sides dequantize the
same 4-bit weights to the same fp32 values and differ only in the order of the fp32 sums, so
the tolerance is float rounding: ``|ours - ORT| <= 1e-5 * max|ORT| * sqrt(K)``. The nodes
leave ``accuracy_level`` unset: at level 4 ORT quantizes ``A`` to int8 per block, which we do
not (``A`` stays fp32), and the outputs then differ by about 1 %.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from tvmforge.driver.build import build_model
from tvmforge.errors import CompileError
from tvmforge.frontend.converters import matmul_nbits
from tvmforge.passes.quantize import int4 as int4_pass
from tvmforge.passes.schedule import int4_kernels as K

IR_VERSION = 9


def _model(nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "nbits", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def _run_both(model, feeds: dict[str, np.ndarray]):
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    built = build_model(model, "x86", graph_passes=[int4_pass.lower_matmul_nbits()])
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()]).numpy()
    return got, ref


def _close(got, ref, k):
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max() * np.sqrt(k))


def _float_mlp(k=72, h=96, n=40, rows=3, seed=0):
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(size=(k, h)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(h, n)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(size=(n,)).astype(np.float32), "b2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["m"]),
             helper.make_node("Add", ["m", "b2"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])], inits)


@pytest.mark.parametrize("symmetric", [True, False])
def test_ort_quantizer_model_matches_ort(symmetric):
    """K = 72 pads the last block, N = 40 the last panel; asymmetric has zero points."""
    quantizer_mod = pytest.importorskip(
        "onnxruntime.quantization.matmul_nbits_quantizer",
        reason="ORT's MatMulNBitsQuantizer needs the onnx-ir package")
    q = quantizer_mod.MatMulNBitsQuantizer(_float_mlp(), block_size=32,
                                           is_symmetric=symmetric)
    q.process()
    model = q.model.model
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("MatMulNBits") == 2
    has_zp = [len(node.input) > 3 for node in model.graph.node if node.op_type == "MatMulNBits"]
    assert has_zp == [not symmetric] * 2
    x = np.random.default_rng(1).normal(size=(3, 72)).astype(np.float32)
    got, ref = _run_both(model, {"x": x})
    _close(got, ref, 96)


def _nbits_node(rng, k, n, block, *, zero="float", bias=True, name="nb"):
    blocks = -(-k // block)
    b = rng.integers(0, 256, (n, blocks, block // 2)).astype(np.uint8)
    scales = rng.uniform(0.01, 0.2, (n * blocks,)).astype(np.float32)
    inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(scales, "scales")]
    inputs = ["a", "B", "scales"]
    if zero == "float":
        zp = rng.uniform(0, 15, (n * blocks,)).astype(np.float32)
        inits.append(numpy_helper.from_array(zp, "zp"))
        inputs.append("zp")
    elif zero == "uint8":
        zp = rng.integers(0, 256, (n, -(-blocks // 2))).astype(np.uint8)
        inits.append(numpy_helper.from_array(zp, "zp"))
        inputs.append("zp")
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(size=(n,)).astype(np.float32), "bias"))
        inputs += [""] * (5 - len(inputs)) + ["bias"]  # zero_points?, g_idx, bias
    node = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", name=name,
                            K=k, N=n, bits=4, block_size=block)
    return node, inits


def test_float_zero_points_bias_and_3d_input():
    rng = np.random.default_rng(2)
    k, n = 50, 20
    node, inits = _nbits_node(rng, k, n, 16, zero="float", bias=True)
    model = _model([node], [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3, k])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, n])], inits)
    a = rng.normal(size=(2, 3, k)).astype(np.float32)
    got, ref = _run_both(model, {"a": a})
    _close(got, ref, k)


def test_packed_zero_points_without_bias():
    rng = np.random.default_rng(3)
    k, n = 128, 64
    node, inits = _nbits_node(rng, k, n, 64, zero="uint8", bias=False)
    model = _model([node], [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, k])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], inits)
    a = rng.normal(size=(1, k)).astype(np.float32)
    got, ref = _run_both(model, {"a": a})
    _close(got, ref, k)


@pytest.mark.parametrize("what,message", [("g_idx", "g_idx"), ("bits", "bits=8")])
def test_refused_with_one_line(what, message):
    rng = np.random.default_rng(4)
    node, inits = _nbits_node(rng, 32, 8, 32, zero=None, bias=False)
    if what == "g_idx":
        inits.append(numpy_helper.from_array(np.zeros(32, np.int32), "g"))
        node.input.extend(["", "g"])
    else:
        node.attribute[2].i = 8  # bits
        assert node.attribute[2].name == "bits"
    model = _model([node], [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 32])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
    with pytest.raises(CompileError, match=message) as err:
        build_model(model, "x86", graph_passes=[int4_pass.lower_matmul_nbits()])
    assert "\n" not in str(err.value) and "nb" in str(err.value)


def test_the_lowered_call_is_the_int4_kernel():
    """The converter and the lowering agree on the extern name; after lowering the module
    holds one marked kernel and no extern call."""
    assert matmul_nbits.MATMUL_NBITS == int4_pass.MATMUL_NBITS
    from tvmforge.frontend import importer as frontend

    rng = np.random.default_rng(5)
    node, inits = _nbits_node(rng, 64, 32, 32, zero=None, bias=False)
    model = _model([node], [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 64])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])], inits)
    om = frontend.load(model)
    mod = frontend.to_relax(om, frontend.resolve_inputs(om, {}, dynamic_batch=True))
    assert matmul_nbits.MATMUL_NBITS in mod.script()
    lowered = int4_pass.lower_matmul_nbits()(mod)
    kernels = [f for _, f in lowered.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc) and K.KERNEL_ATTR in (f.attrs or {})]
    assert len(kernels) == 1 and matmul_nbits.MATMUL_NBITS not in lowered.script()
