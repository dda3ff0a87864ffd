"""The AVX2 int8 family (``vpmaddubsw`` + ``vpmaddwd``, 7-bit weights): its intrinsic against
numpy (the worst case included, and the 8-bit case it would saturate on), the scheduled conv
and dense kernels against the plain int32 kernel bit for bit, the instructions in the code
(cross-built for an AVX2 CPU, on any machine), the family each CPU gets, and a float model
quantized on this machine.

The tests that run AVX2 code skip on a CPU without AVX2; the cross-built ones run anywhere.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tvm
from tvm import s_tir, te

from tvmforge.passes.quantize.qparams import weight_params
from tvmforge.passes.schedule import int8_kernels as K
from tvmforge.passes.schedule.intrinsics import int8_family
from tvmforge.passes.schedule.intrinsics.avx2 import AVX2_STACK_INTRIN, AVX2_WEIGHT_MAX
from tvmforge.targets import features, resolve

HASWELL = {"kind": "llvm", "mcpu": "haswell", "num-cores": 2}
ZNVER3 = {"kind": "llvm", "mcpu": "znver3", "num-cores": 2}
CASCADELAKE = {"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2}
HOST_AVX2 = features.detect_host().avx2
needs_avx2 = pytest.mark.skipif(not HOST_AVX2, reason="this CPU has no AVX2")


# ---- the intrinsic ---------------------------------------------------------------------------


def _blocks_func(n: int, kb: int):
    """``C[b, 16] = sum_{j < kb} A[b, j, 0:4] . B[b, j, 16, 4]^T``: ``n`` independent sums of
    ``kb`` intrinsic blocks each, the ``16 x 4`` block tensorized with the AVX2 intrinsic."""
    a = te.placeholder((n, kb, 4), "uint8", "A")
    b = te.placeholder((n, kb, 16, 4), "int8", "B")
    rj = te.reduce_axis((0, kb), "j")
    rk = te.reduce_axis((0, 4), "k")
    c = te.compute((n, 16), lambda i, o: te.sum(
        a[i, rj, rk].astype("int32") * b[i, rj, o, rk].astype("int32"), axis=[rj, rk]),
        name="C")
    sch = s_tir.Schedule(te.create_prim_func([a, b, c]))
    block = sch.get_sblock("C")
    i, o, j, k = sch.get_loops(block)
    sch.reorder(i, j, o, k)  # the 16 x 4 block innermost
    sch.decompose_reduction(block, j)
    sch.tensorize(o, AVX2_STACK_INTRIN)
    return sch.mod["main"]


def _run_blocks(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lib = tvm.tirx.build(tvm.IRModule({"main": _blocks_func(*a.shape[:2])}),
                         target=resolve("x86", threads=1).tvm_target())
    c = tvm.runtime.empty((a.shape[0], 16), "int32")
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), c)
    return c.numpy()


def _blocks_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("njk,njok->no", a.astype(np.int64), b.astype(np.int64))


@needs_avx2
def test_the_intrinsic_is_exact_for_7_bit_weights_worst_case_included():
    rng = np.random.default_rng(0)
    n, kb = 64, 8
    a = rng.integers(0, 256, (n, kb, 4)).astype(np.uint8)
    b = rng.integers(-AVX2_WEIGHT_MAX, AVX2_WEIGHT_MAX + 1, (n, kb, 16, 4)).astype(np.int8)
    # the extremes: 255 x 64 everywhere (each vpmaddubsw pair 32640), 255 x -64 (-32640),
    # and pairs of opposite signs
    a[:3] = 255
    b[0], b[1] = 64, -64
    b[2, :, :, 0::2], b[2, :, :, 1::2] = 64, -64
    got = _run_blocks(a, b)
    np.testing.assert_array_equal(got, _blocks_reference(a, b))
    assert got[0, 0] == kb * 4 * 255 * 64 and got[1, 0] == -kb * 4 * 255 * 64


@needs_avx2
def test_the_intrinsic_saturates_on_8_bit_weights():
    """Why the family's weights are 7-bit: with 255 x 127 a ``vpmaddubsw`` pair (64770) clips
    to 32767, so the block is not the dot product."""
    a = np.full((1, 1, 4), 255, np.uint8)
    b = np.full((1, 1, 16, 4), 127, np.int8)
    assert _run_blocks(a, b)[0, 0] == 2 * 32767 != _blocks_reference(a, b)[0, 0]


# ---- the kernels -----------------------------------------------------------------------------


def _build(fn, args: list[np.ndarray], avx2: bool) -> np.ndarray:
    ph = [te.placeholder(a.shape, str(a.dtype), name=f"a{i}") for i, a in enumerate(args)]
    out = fn(*ph)
    func = te.create_prim_func([*ph, out])
    if avx2:
        func = K.schedule_avx2(func, 2)
    ex = tvm.compile(tvm.IRModule({"main": func}), target=resolve("x86", threads=2).tvm_target())
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], str(out.dtype)))
    ex["main"](*[tvm.runtime.tensor(a) for a in args], result)
    return result.numpy()


CASES = {
    # name: (H, W, C, OC, k, stride, pad, out_dtype); W = 1, H = rows: a dense layer
    "conv3x3-ic13-oc40-u8": (9, 14, 13, 40, 3, 1, 1, "uint8"),
    "conv3x3-s2-acc": (12, 12, 32, 32, 3, 2, 1, "float32"),
    "dense-k200-n48-acc": (1, 24, 200, 48, 1, 1, 0, "float32"),
}


@needs_avx2
@pytest.mark.parametrize("case", list(CASES))
def test_avx2_kernels_match_the_plain_int32_kernel_bit_for_bit(case):
    """The scheduled AVX2 kernel against the same kernel unscheduled (plain int32 loops), with
    7-bit weights from ``weight_params(qmax=64)``; the float cases have ``mult = 1`` and no
    bias, so their output is the int32 accumulator itself."""
    h, w_, c, oc, k, s, p, out_dtype = CASES[case]
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (1, h, w_, c)).astype(np.uint8)
    x[0, 0, : w_ // 2] = 255  # worst-case inputs against the largest weights
    _, w = weight_params(rng.normal(0, 1, (oc, c, k, k)).astype(np.float32), qmax=64)
    assert np.abs(w).max() == 64
    ocp = -(-oc // 16) * 16
    if out_dtype == "uint8":
        bias = rng.integers(-2000, 2000, ocp).astype(np.int32)
        mult = (rng.random(ocp) * 4e-4).astype(np.float32)
        epi = K.Epilogue(zero_point=3, lower=0.0)
    else:
        bias, mult = np.zeros(ocp, np.int32), np.ones(ocp, np.float32)
        epi = K.Epilogue(out_dtype="float32")
    spec = K.ConvSpec(kernel=(k, k), strides=(s, s), padding=(p, p, p, p))
    fn = functools.partial(K.qconv2d_nhwc, spec=spec, epi=epi, x_zero_point=5, out_channels=oc)
    args = [x, K.pack_weight_vnni(w), bias, mult]
    got, want = _build(fn, args, avx2=True), _build(fn, args, avx2=False)
    np.testing.assert_array_equal(got, want)
    if out_dtype == "float32":  # the accumulator: check it is not trivially zero
        assert np.abs(want).max() > 1000


def _conv_func():
    x = te.placeholder((1, 8, 8, 16), "uint8", "x")
    w = te.placeholder((2, 3, 3, 4, 16, 4), "int8", "w")
    bias = te.placeholder((32,), "int32", "bias")
    mult = te.placeholder((32,), "float32", "mult")
    out = K.qconv2d_nhwc(x, w, bias, mult, spec=K.ConvSpec(kernel=(3, 3), padding=(1,) * 4),
                         epi=K.Epilogue(), x_zero_point=7, out_channels=32)
    return te.create_prim_func([x, w, bias, mult, out])


@pytest.mark.parametrize("target", [HASWELL, ZNVER3], ids=["haswell", "znver3"])
def test_the_avx2_schedule_emits_vpmaddubsw_and_vpmaddwd_when_cross_built(target):
    ex = tvm.compile(tvm.IRModule({"main": K.schedule_avx2(_conv_func(), 2)}),
                     target=tvm.target.Target(target))
    asm = ex.mod.inspect_source("asm")
    assert asm.count("vpmaddubsw") > 0 and asm.count("vpmaddwd") > 0
    assert "vpdpbusd" not in asm and "zmm" not in asm


def test_a_vnni_target_still_gets_vpdpbusd():
    ex = tvm.compile(tvm.IRModule({"main": K.schedule_vnni(_conv_func(), 2)}),
                     target=tvm.target.Target(CASCADELAKE))
    asm = ex.mod.inspect_source("asm")
    assert asm.count("vpdpbusd") > 0 and "vpmaddubsw" not in asm


@pytest.mark.parametrize(("target", "family"), [
    (HASWELL, "avx2"),
    (ZNVER3, "avx2"),  # AMD EPYC Zen 3, this project's AVX2 machine
    ({"kind": "llvm", "mcpu": "sandybridge"}, None),  # AVX without AVX2: no 256-bit integers
    (CASCADELAKE, "vnni"),
    ({"kind": "llvm", "mcpu": "skylake-avx512"}, None),  # AVX-512 without VNNI: int32 kernels
])
def test_avx2_cpus_without_a_dot_product_get_the_avx2_family(target, family):
    assert int8_family(tvm.target.Target(target)) == family


# ---- the quantizer ---------------------------------------------------------------------------


def _small_cnn():
    from onnx import TensorProto, helper, numpy_helper

    from onnx_builders import make_model

    rng = np.random.default_rng(2)

    def t(name, shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale)
                                       .astype(np.float32), name)

    node = helper.make_node
    nodes = [node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             node("Relu", ["c1"], ["r1"]),
             node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1],
                  strides=[2, 2]),
             node("Relu", ["c2"], ["r2"]),
             node("Flatten", ["r2"], ["f"]),
             node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc", transB=1)]
    inits = [t("w1", (16, 3, 3, 3)), t("b1", (16,), 0.1), t("w2", (32, 16, 3, 3), 0.1),
             t("b2", (32,), 0.1), t("fc", (10, 32 * 8 * 8), 0.02), t("fcb", (10,), 0.1)]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                            [1, 3, 16, 16])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)


@needs_avx2
@pytest.mark.skipif(int8_family(resolve("x86").tvm_target()) != "avx2",
                    reason="this CPU does not get the AVX2 family")
def test_a_float_model_quantized_on_this_cpu_gets_the_avx2_kernels():
    from tvm import relax

    from tvmforge.driver.build import build_model

    model = _small_cnn()
    rng = np.random.default_rng(3)
    calibration = {"x": rng.random((8, 1, 3, 16, 16)).astype(np.float32)}
    f = build_model(model, "x86", threads=2)
    q = build_model(model, "x86", threads=2, quantize="int8", calibration=calibration)
    kernels = {layer["name"]: layer["kernel"] for layer in q.quantization["report"]["layers"]}
    assert kernels == {"conv1": "avx2", "conv2": "avx2", "fc": "avx2"}
    asm = q.executable.mod.imports[0].inspect_source("asm")
    assert asm.count("vpmaddubsw") > 0 and asm.count("vpmaddwd") > 0

    def run(built, x):
        vm = relax.VirtualMachine(built.executable, tvm.cpu())
        return vm["main"](tvm.runtime.tensor(x)).numpy()

    for seed in range(3):
        x = np.random.default_rng(seed).random((1, 3, 16, 16)).astype(np.float32)
        ref, got = run(f, x), run(q, x)
        assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def _qdq_conv(wq: np.ndarray):
    """A QDQ conv (ONNX Runtime's QDQ format: u8 activations, per-channel s8 weights) whose
    weight codes are ``wq``."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx_builders import make_model

    rng = np.random.default_rng(0)
    f32 = np.float32
    oc = wq.shape[0]
    inits = [numpy_helper.from_array(wq, "wq"),
             numpy_helper.from_array((rng.random(oc) * 0.01 + 0.001).astype(f32), "ws"),
             numpy_helper.from_array(np.zeros(oc, np.int8), "wz"),
             numpy_helper.from_array(f32(0.01), "xs"),
             numpy_helper.from_array(np.uint8(128), "xz"),
             numpy_helper.from_array(f32(0.02), "ys"), numpy_helper.from_array(np.uint8(0), "yz")]
    node = helper.make_node
    nodes = [node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             node("Relu", ["c"], ["r"]),
             node("QuantizeLinear", ["r", "ys", "yz"], ["rq"]),
             node("DequantizeLinear", ["rq", "ys", "yz"], ["y"])]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                            [1, 16, 8, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, oc, 8, 8])],
                      inits)


@needs_avx2
@pytest.mark.parametrize("bits", [7, 8])
def test_qdq_weights_keep_their_7_bit_codes_and_8_bit_ones_are_requantized(bits):
    """A QDQ model's 7-bit weights (ONNX Runtime's ``reduce_range``: codes in [-64, 64]) come
    back as their own codes, ``max|w| / 64`` being the model's scale: the AVX2 kernel computes
    the model's integers (ONNX Runtime evaluating the graph as written, to a rounding tie).
    Full-range 8-bit weights are requantized to 7 bits, which the layer's report says."""
    import onnxruntime as ort

    from tvmforge.driver.pipeline import tvmforge_pipeline
    from tvmforge.frontend import importer as frontend
    from tvmforge.passes.quantize.quantize_int8 import quantize_int8

    top = 64 if bits == 7 else 127
    rng = np.random.default_rng(1)
    wq = rng.integers(-top, top + 1, (24, 16, 3, 3)).astype(np.int8)
    wq[:, 0, 0, 0] = top  # the scale re-derived from max|w| is the model's
    model = _qdq_conv(wq)
    m = frontend.load(model)
    mod = frontend.to_relax(m, frontend.resolve_inputs(m, {}))
    host = resolve("x86", threads=2).tvm_target()
    qpass = quantize_int8(avx2=True)
    ex = tvm.compile(mod, target=host, relax_pipeline=tvmforge_pipeline(target=host,
                                                                         graph=[qpass]))
    (layer,) = qpass.report.layers
    assert layer.kernel == "avx2"
    assert ("requantized to 7 bits" in layer.reason) == (bits == 8)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
    from tvm import relax

    vm = relax.VirtualMachine(ex, tvm.cpu())
    errors = []
    for seed in range(3):
        x = (np.random.default_rng(seed).random((1, 16, 8, 8)) * 2 - 0.5).astype(np.float32)
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        errors.append(np.abs(got - sess.run(None, {"x": x})[0]).max())
    if bits == 7:  # the same integers but where a tie rounds apart: one unit (0.02)
        assert max(errors) <= 0.02 * 1.001
    else:  # requantized weights: a few units off, no more
        assert 0.02 * 1.001 < max(errors) < 0.02 * 10
