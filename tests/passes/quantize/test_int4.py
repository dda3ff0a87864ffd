"""``quantize_int4`` (passes/quantize/int4.py) and its kernel (passes/schedule/int4_kernels.py).

The integer side is checked against numpy by hand (nibble order, rounding half to even, group
scales, zero points, the padded last group, the packed layout); the kernel, compiled with its
hand schedule, against a float64 numpy matmul of the dequantized weights (relative 1e-5: fp32
sums of at most a few hundred terms); the pass on a small MLP trained on scikit-learn's digits
here (int4 top-1 within 1 point of fp32) and on graphs it must leave alone.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax, s_tir, te

from tests.onnx_builders import make_model
from tvmforge.driver.build import build_model
from tvmforge.frontend import importer as frontend
from tvmforge.passes.quantize.int4 import (
    SEARCH_GRID,
    int4_pass,
    quantize_int4,
    quantize_weight,
)
from tvmforge.passes.schedule import int4_kernels as K
from tvmforge.passes.schedule.params import CpuScheduleParams
from tvmforge.passes.schedule.rules import first_rule

# ---------------------------------------------------------------- packing and rounding


def test_nibbles_low_first_and_round_trip():
    assert K.pack_nibbles(np.array([1, 2, 3, 4], np.uint8)).tolist() == [0x21, 0x43]
    assert K.pack_nibbles(np.array([15, 0, 7], np.uint8)).tolist() == [0x0F, 0x07]  # odd: pad
    q = np.random.default_rng(0).integers(0, 16, (5, 12)).astype(np.uint8)
    assert np.array_equal(K.unpack_nibbles(K.pack_nibbles(q)), q)


def test_symmetric_scale_codes_and_half_to_even():
    w = np.zeros((16, 1), np.float32)
    w[:4, 0] = [7.0, 2.5, -3.5, -7.0]  # scale = max|w| / 7 = 1: codes round(w) + 8
    q, s, zp = quantize_weight(w, group=16, symmetric=True)
    assert zp is None and s.shape == (1, 1) and s[0, 0] == 1.0
    assert q[0, :5].tolist() == [15, 10, 4, 1, 8]  # 2.5 -> 2, -3.5 -> -4 (half to even)
    assert K.dequantize_np(q, s, None, 16)[0, :4].tolist() == [7.0, 2.0, -4.0, -7.0]


def test_asymmetric_range_holds_zero():
    w = np.zeros((32, 2), np.float32)
    w[:16, 0] = np.linspace(-1.5, 6.0, 16)  # scale 0.5, zp 3
    w[16:, 0] = np.linspace(1.0, 4.0, 16)  # all positive: range [0, 4], zp 0
    q, s, zp = quantize_weight(w, group=16, symmetric=False)
    assert s[0].tolist() == [0.5, pytest.approx(4.0 / 15)]
    assert zp[0].tolist() == [3, 0] and zp[1].tolist() == [0, 0]  # column 1 all zero
    assert s[1].tolist() == [1.0, 1.0]  # an all-zero group gets scale 1
    assert q[0, 0] == 0 and q[0, 15] == 15
    expect = np.clip(np.round(w[:16, 0] / 0.5) + 3, 0, 15)
    assert np.array_equal(q[0, :16], expect)


def test_last_group_is_padded():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(40, 3)).astype(np.float32)  # K = 40: groups [0, 32), [32, 40)
    q, s, _ = quantize_weight(w, group=32)
    assert q.shape == (3, 64) and s.shape == (3, 2)
    np.testing.assert_allclose(s[:, 1], np.abs(w[32:]).max(0) / 7, rtol=1e-6)
    assert (q[:, 40:] == 8).all()  # padded weights are zeros


def test_packed_layout():
    rng = np.random.default_rng(2)
    n, kp, g = 40, 64, 16
    q = rng.integers(0, 16, (n, kp)).astype(np.uint8)
    s = rng.uniform(0.1, 1, (n, kp // g)).astype(np.float32)
    zp = rng.integers(0, 16, (n, kp // g)).astype(np.uint8)
    wp, sp, zpp = K.pack_weights(q, s, zp, g)
    assert wp.shape == (2, kp // 2, 32) and sp.shape == (4, 64) and zpp.shape == (2, 64)
    p, j, c = 1, 5, 3  # column 35, k = 10, 11
    assert wp[p, j, c] == q[35, 10] | (q[35, 11] << 4)
    assert sp[2, 35] == s[35, 2] and (sp[:, n:] == 0).all()
    assert zpp[1, 35] == zp[35, 2] | (zp[35, 3] << 4)


def test_matmul_nbits_constants_keep_their_codes():
    """MatMulNBits' ``B [N, K/G, G/2]``, flat scales and packed zero points, read the way the
    spec says (``k = block * G + 2 * byte (+1 for the high nibble)``), dequantize to what
    our layout dequantizes to."""
    rng = np.random.default_rng(3)
    n, k, g = 5, 40, 16
    blocks = 3
    b = rng.integers(0, 256, (n, blocks, g // 2)).astype(np.uint8)
    scales = rng.uniform(0.1, 1, n * blocks).astype(np.float32)
    zpk = rng.integers(0, 256, (n, 2)).astype(np.uint8)
    wp, sp, zpp = K.from_matmul_nbits(b, scales, zpk, k, n, g)
    x = rng.normal(size=(2, k)).astype(np.float32)
    ref = np.zeros((n, k))
    for col in range(n):
        for kk in range(k):
            byte = b[col, kk // g, (kk % g) // 2]
            code = byte & 15 if kk % 2 == 0 else byte >> 4
            zbyte = zpk[col, (kk // g) // 2]
            zero = zbyte & 15 if (kk // g) % 2 == 0 else zbyte >> 4
            ref[col, kk] = (int(code) - int(zero)) * scales[col * blocks + kk // g]
    got = _run_kernel(x, wp, sp, zpp, g)[:, :n]
    np.testing.assert_allclose(got, x.astype(np.float64) @ ref.T, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the kernel


def _run_kernel(x, wp, sp, zpp, group, lanes=8):
    args = [te.placeholder(x.shape, "float32", "x"), te.placeholder(wp.shape, "uint8", "w"),
            te.placeholder(sp.shape, "float32", "s")]
    if zpp is not None:
        args.append(te.placeholder(zpp.shape, str(zpp.dtype), "z"))
    y = K.int4_matmul(*args, group=group)
    sch = s_tir.Schedule(te.create_prim_func([*args, y]))
    K.apply_default_schedule(sch, lanes, 2)
    lib = tvm.compile(sch.mod, target=tvm.target.Target({"kind": "llvm", "num-cores": 2}))
    arrays = [x, wp, sp] + ([zpp] if zpp is not None else [])
    out = tvm.runtime.tensor(np.zeros((x.shape[0], wp.shape[0] * K.PANEL), np.float32))
    lib["main"](*[tvm.runtime.tensor(a) for a in arrays], out)
    return out.numpy()


@pytest.mark.parametrize("m,k,n,group,zero", [
    (1, 768, 96, 32, None), (3, 100, 40, 16, "uint8"), (5, 256, 64, 128, "float32"),
    (2, 130, 33, 64, "uint8"),
])
def test_kernel_matches_numpy(m, k, n, group, zero):
    rng = np.random.default_rng(m * k + n)
    kp = -(-k // group) * group
    q = rng.integers(0, 16, (n, kp)).astype(np.uint8)
    s = rng.uniform(0.01, 0.1, (n, kp // group)).astype(np.float32)
    zp = None
    if zero == "uint8":
        zp = rng.integers(0, 16, (n, kp // group)).astype(np.uint8)
    elif zero == "float32":
        zp = rng.uniform(0, 15, (n, kp // group)).astype(np.float32)
    wp, sp, zpp = K.pack_weights(q, s, zp, group)
    x = rng.normal(size=(m, k)).astype(np.float32)
    got = _run_kernel(x, wp, sp, zpp, group)[:, :n]
    ref = K.int4_matmul_np(x, q, s, zp, group)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_schedule_table_picks_the_int4_rule():
    args = [te.placeholder((1, 64), "float32", "x"), te.placeholder((1, 32, 32), "uint8", "w"),
            te.placeholder((2, 32), "float32", "s")]
    func = te.create_prim_func([*args, K.int4_matmul(*args, group=32)])
    params = CpuScheduleParams(lanes=8, num_cores=2)
    assert first_rule(func, params)[0].name != "int4_kernel"  # unmarked: a float rule
    found = first_rule(func.with_attr(K.KERNEL_ATTR, "matmul"), params)
    assert found is not None and found[0].name == "int4_kernel"


# ---------------------------------------------------------------- the pass


@functools.lru_cache(maxsize=1)
def _mlp_model(seed: int = 0):
    """A 64 -> 64 -> 10 ReLU MLP trained on digits (scikit-learn, a few seconds; once per
    session), as Gemm nodes; and the test images."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, digits.target, test_size=0.25,
                                              random_state=seed, stratify=digits.target)
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=150, random_state=seed)
    with warnings.catch_warnings():  # not converged to the last digit: good enough here
        warnings.simplefilter("ignore")
        clf.fit(x_tr, y_tr)
    inits, nodes = [], []
    prev = "x"
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_, strict=True)):
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{i}")]
        out = "logits" if i == len(clf.coefs_) - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out], name=f"fc{i}"))
        if out != "logits":
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            prev = f"r{i}"
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                       [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
                       inits)
    return model, x_te, y_te


def _top1(built, x, y) -> float:
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    hits = [int(np.argmax(vm["main"](tvm.runtime.tensor(xi[None])).numpy())) == yi
            for xi, yi in zip(x, y, strict=True)]
    return 100.0 * float(np.mean(hits))


def test_digits_mlp_int4_keeps_accuracy():
    model, x_te, y_te = _mlp_model()
    base = _top1(build_model(model, "x86"), x_te, y_te)
    quant = int4_pass(group_size=32, symmetric=True)
    built = build_model(model, "x86", graph_passes=[quant])
    report = quant.report
    assert [layer.name for layer in report.quantized] == ["matmul_0", "matmul_1"]
    assert report.bytes_after * 4 < report.bytes_before
    assert base > 90.0
    assert _top1(built, x_te, y_te) >= base - 1.0


def test_skip_leaves_a_layer_float():
    model, x_te, y_te = _mlp_model()
    quant = quantize_int4(group_size=16, symmetric=False, skip=["matmul_1"])
    built = build_model(model, "x86", graph_passes=[quant])
    assert [(layer.name, layer.skipped) for layer in quant.report.layers] == [
        ("matmul_0", False), ("matmul_1", True)]
    assert _top1(built, x_te[:50], y_te[:50]) > 80.0


def _imported(model):
    om = frontend.load(model)
    return frontend.to_relax(om, frontend.resolve_inputs(om, {}, dynamic_batch=True))


def _kernels(mod) -> int:
    return sum(isinstance(f, tvm.tirx.PrimFunc) and K.KERNEL_ATTR in (f.attrs or {})
               for _, f in mod.functions_items())


def test_gemm_trans_b_before_folding():
    """Gemm ``transB=1`` imports as ``matmul(x, permute_dims(W))``: read through."""
    rng = np.random.default_rng(4)
    w = numpy_helper.from_array(rng.normal(size=(24, 48)).astype(np.float32), "w")
    node = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
    model = make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 48])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 24])], [w])
    quant = quantize_int4(group_size=16)
    mod = quant(_imported(model))
    assert _kernels(mod) == 1 and quant.report.quantized[0].k == 48


def test_does_not_apply():
    """A matmul of two computed tensors and a conv model are left as they were."""
    x = helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 8])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [8, 4])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    two = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])], [x, b], [out])
    conv_w = numpy_helper.from_array(
        np.random.default_rng(5).normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    conv = make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [conv_w])
    for model in (two, conv):
        mod = _imported(model)
        quant = quantize_int4()
        assert quant(mod).same_as(mod)
        assert not quant.report.layers


def test_scale_search_lowers_the_error_it_minimizes():
    rng = np.random.default_rng(6)
    w = rng.standard_t(3, size=(128, 32)).astype(np.float32)  # heavy tails: clipping helps
    acts = rng.normal(size=(64, 128)).astype(np.float32) * rng.uniform(0.1, 3, 128)

    def errors(q, s, zp):
        d = K.dequantize_np(q, s, zp, 32)[:, :128].T - w
        return float((d * d).sum()), float(((acts @ d) ** 2).sum())

    rtn_w, rtn_out = errors(*quantize_weight(w, 32))
    found_w, _ = errors(*quantize_weight(w, 32, search=True))
    _, found_out = errors(*quantize_weight(w, 32, search=True, activations=acts))
    assert found_w < rtn_w and found_out < rtn_out
    assert min(SEARCH_GRID) >= 0.8 and max(SEARCH_GRID) == 1.0
