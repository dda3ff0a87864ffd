"""Losses and maths (``tvmforge.frontend.converters.standard_ops``): built for x86 and compared
with ONNX Runtime.

The ops are grouped into a few multi-output models (one build each): the losses, the opset-22
maths, the opset-24/26 ops, and ``Pow``'s type mixes. Where ONNX Runtime has no answer (a
run-time ``Trilu`` k on an empty input, random dropout, integer powers with a negative
exponent) the check is against the ONNX semantics directly.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

import tvmforge
from tvmforge.errors import CompileError

RTOL, ATOL = 1e-4, 1e-5


def _model(nodes, inputs, outputs, inits=(), opset=13, ir=9) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "t", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)


def _vi(name: str, dtype, shape=None) -> onnx.ValueInfoProto:
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return helper.make_tensor_value_info(name, elem, shape)


def _run_ort(model, feeds):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, ["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _run_tvm(model, feeds):
    built = tvmforge.build_model(model, "x86")
    vm = tvm.relax.VirtualMachine(built.executable, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(feeds[i.name]) for i in built.inputs])
    outs = [out] if hasattr(out, "numpy") else list(out)
    return [o.numpy() for o in outs]


def _check(model, feeds, ours=None, skip=()):
    """Ours against ONNX Runtime, output by output (shape, dtype, values)."""
    ours = _run_tvm(model, feeds) if ours is None else ours
    theirs = _run_ort(model, feeds)
    names = [o.name for o in model.graph.output]
    for name, a, b in zip(names, ours, theirs, strict=True):
        if name in skip:
            continue
        assert a.shape == b.shape, name
        assert a.dtype == b.dtype, name
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=name)
    return dict(zip(names, ours, strict=True))


# ---------------------------------------------------------------------------------------------
# losses


def _loss_model():
    n, c, d1, d2 = 3, 5, 2, 4
    nodes, outputs = [], []

    def add(op, ins, suffix, log_prob=False, **attrs):
        outs = [f"{op[:3]}_{suffix}"] + ([f"lp_{suffix}"] if log_prob else [])
        nodes.append(helper.make_node(op, ins, outs, **attrs))
        for o in outs:
            outputs.append(_vi(o, np.float32))

    nll, sce = "NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss"
    for red in ("none", "sum", "mean"):
        add(nll, ["lp4", "t3", "w"], f"4d_w_ii_{red}", reduction=red, ignore_index=2)
        add(sce, ["x4", "t3"], f"4d_{red}", log_prob=True, reduction=red)
    add(nll, ["lp4", "t3"], "4d_mean", reduction="mean")
    add(nll, ["lp4", "t3", "w"], "4d_w_sum", reduction="sum")
    add(nll, ["lp4", "t3", "w"], "4d_w_mean", reduction="mean")
    add(nll, ["lp2", "t1"], "2d_ii_none", reduction="none", ignore_index=-1)
    add(nll, ["lp2", "t1"], "2d_ii_mean", reduction="mean", ignore_index=-1)
    add(sce, ["x4", "t3", "w"], "4d_w_ii_mean", reduction="mean", ignore_index=0)
    add(sce, ["x2", "t1v", "w"], "2d_w_none", log_prob=True, reduction="none")
    add(sce, ["x3", "t2"], "3d_default")  # reduction mean by default
    add(nll, ["lp3", "t2"], "3d_neg_ii", reduction="mean", ignore_index=-5)
    rng = np.random.default_rng(0)
    x4 = rng.normal(size=(n, c, d1, d2)).astype(np.float32)
    x3 = rng.normal(size=(n, c, d2)).astype(np.float32)
    x2 = rng.normal(size=(n, c)).astype(np.float32)
    t3 = rng.integers(0, c, (n, d1, d2)).astype(np.int64)
    t2 = rng.integers(0, c, (n, d2)).astype(np.int64)
    t2[0, 0] = -5
    t1 = np.array([1, -1, 4], np.int64)  # -1: the ignore_index of the node that reads it
    feeds = {
        "x4": x4,
        "lp4": np.log(np.abs(x4) + 0.1),
        "x3": x3,
        "lp3": x3,
        "x2": x2,
        "lp2": x2 * 2,
        "t3": t3,
        "t2": t2,
        "t1": t1,
        "t1v": np.array([1, 0, 4], np.int64),
    }
    w = numpy_helper.from_array(rng.uniform(0.5, 2, c).astype(np.float32), "w")
    inputs = [_vi(k, v.dtype, v.shape) for k, v in feeds.items()]
    return _model(nodes, inputs, outputs, [w], opset=13), feeds


def test_losses_match_onnxruntime():
    model, feeds = _loss_model()
    outs = _check(model, feeds)
    assert outs["Neg_4d_w_ii_none"].shape == (3, 2, 4)
    assert outs["Neg_4d_mean"].shape == ()
    assert outs["lp_4d_none"].shape == (3, 5, 2, 4)


def test_loss_with_int32_target_and_float64():
    nodes = [
        helper.make_node("SoftmaxCrossEntropyLoss", ["x", "t"], ["l", "lp"], reduction="sum"),
        helper.make_node("NegativeLogLikelihoodLoss", ["x", "t"], ["m"], ignore_index=1),
    ]
    model = _model(
        nodes,
        [_vi("x", np.float64, [4, 3]), _vi("t", np.int32, [4])],
        [_vi("l", np.float64), _vi("lp", np.float64), _vi("m", np.float64)],
        opset=22,
    )
    feeds = {"x": np.random.default_rng(1).normal(size=(4, 3)), "t": np.array([0, 1, 2, 1], "i4")}
    _check(model, feeds)


# ---------------------------------------------------------------------------------------------
# opset-22 maths: LpNormalization, Det, Cosh, Sinh, IsInf, EyeLike, Trilu, Dropout


def _math_model():
    N = helper.make_node
    nodes = [
        N("LpNormalization", ["a"], ["lp2"]),
        N("LpNormalization", ["a"], ["lp1_ax0"], p=1, axis=0),
        N("LpNormalization", ["a"], ["lp2_ax0"], p=2, axis=-2),
        N("Det", ["m4"], ["det_nd"]),
        N("Det", ["m2"], ["det_2d"]),
        N("Cosh", ["h"], ["cosh"]),
        N("Sinh", ["h"], ["sinh"]),
        N("IsInf", ["f"], ["inf_both"]),
        N("IsInf", ["f"], ["inf_pos"], detect_negative=0),
        N("IsInf", ["f"], ["inf_neg"], detect_positive=0),
        N("IsInf", ["f"], ["inf_none"], detect_positive=0, detect_negative=0),
        N("EyeLike", ["ei"], ["eye_f"], dtype=TensorProto.FLOAT, k=1),
        N("EyeLike", ["ei"], ["eye_d"], dtype=TensorProto.DOUBLE, k=-2),
        N("EyeLike", ["ei"], ["eye_i"], k=3),
        N("Trilu", ["tr", "k"], ["triu_k"]),
        N("Trilu", ["tr", "k"], ["tril_k"], upper=0),
        N("Trilu", ["tr"], ["tril0"], upper=0),
        N("Dropout", ["a", "r"], ["do_y", "do_mask"]),
    ]
    rng = np.random.default_rng(2)
    a = rng.normal(size=(3, 4)).astype(np.float32)
    a[:, 1] = 0  # a zero column: its norm along axis 0 is 0
    h = np.array([-3.0, -1e-3, -1e-6, 0.0, 2e-5, 0.5, 1.0, 4.0], np.float32)
    feeds = {
        "a": a,
        "m4": rng.normal(size=(2, 3, 4, 4)).astype(np.float32),
        "m2": np.array([[0, 2, 1], [1, 1, 0], [3, 0, 2]], np.float32),  # needs a pivot swap
        "h": h,
        "f": np.array([-np.inf, np.inf, np.nan, 1.0, -2.0, 0.0], np.float32),
        "ei": np.zeros((3, 5), np.int32),
        "tr": rng.normal(size=(2, 3, 5)).astype(np.float32),
        "k": np.array(-1, np.int64),
        "r": np.array(0.3, np.float32),
    }
    out_types = {
        "lp2": "f4",
        "lp1_ax0": "f4",
        "lp2_ax0": "f4",
        "det_nd": "f4",
        "det_2d": "f4",
        "cosh": "f4",
        "sinh": "f4",
        "inf_both": "?",
        "inf_pos": "?",
        "inf_neg": "?",
        "inf_none": "?",
        "eye_f": "f4",
        "eye_d": "f8",
        "eye_i": "i4",
        "triu_k": "f4",
        "tril_k": "f4",
        "tril0": "f4",
        "do_y": "f4",
        "do_mask": "?",
    }
    inputs = [_vi(k, v.dtype, v.shape) for k, v in feeds.items()]
    outputs = [_vi(k, np.dtype(t)) for k, t in out_types.items()]
    return _model(nodes, inputs, outputs, opset=22), feeds


def test_math_ops_match_onnxruntime():
    model, feeds = _math_model()
    outs = _check(model, feeds)
    np.testing.assert_allclose(outs["det_nd"], np.linalg.det(feeds["m4"]), rtol=1e-5)
    assert outs["lp1_ax0"][0, 1] == 0  # zero norm -> 0, not NaN
    h = feeds["h"].astype(np.float64)
    np.testing.assert_allclose(outs["sinh"], np.sinh(h), rtol=1e-6)  # relative, also near 0
    assert outs["do_mask"].all() and outs["do_mask"].dtype == np.bool_


def test_onnxruntime_gaps():
    """A run-time k Trilu on an empty input; float64 Sinh / Cosh (ORT has neither)."""
    nodes = [
        helper.make_node("Trilu", ["x", "k"], ["u"]),
        helper.make_node("Trilu", ["x", "k"], ["l"], upper=0),
        helper.make_node("Sinh", ["h"], ["sinh"]),
        helper.make_node("Cosh", ["h"], ["cosh"]),
    ]
    model = _model(
        nodes,
        [_vi("x", np.int64, [3, 0, 5]), _vi("k", np.int64, []), _vi("h", np.float64, [6])],
        [
            _vi("u", np.int64, [3, 0, 5]),
            _vi("l", np.int64, [3, 0, 5]),
            _vi("sinh", np.float64),
            _vi("cosh", np.float64),
        ],
        opset=22,
    )
    h = np.array([-700.0, -2.0, -1e-5, 3e-9, 0.009, 5.0])
    feeds = {"x": np.zeros((3, 0, 5), np.int64), "k": np.array(6, np.int64), "h": h}
    u, lo, sinh, cosh = _run_tvm(model, feeds)
    assert u.shape == lo.shape == (3, 0, 5) and u.dtype == np.int64
    np.testing.assert_allclose(sinh, np.sinh(h), rtol=1e-13)
    np.testing.assert_allclose(cosh, np.cosh(h), rtol=1e-13)


def test_dropout_masks_and_training_mode():
    N = helper.make_node
    nodes = [
        N("Dropout", ["x", "r", "train"], ["y", "mask"], seed=3),
        N("Dropout", ["x"], ["y_plain"]),
    ]
    model = _model(
        nodes,
        [_vi("x", np.float32, [64, 64]), _vi("r", np.float32, []), _vi("train", np.bool_, [])],
        [_vi("y", np.float32), _vi("mask", np.bool_), _vi("y_plain", np.float32)],
        opset=13,
    )
    built = tvmforge.build_model(model, "x86")
    vm = tvm.relax.VirtualMachine(built.executable, tvm.cpu())
    x = np.random.default_rng(3).uniform(1, 2, (64, 64)).astype(np.float32)

    def run(ratio, train):
        feeds = {"x": x, "r": np.array(ratio, np.float32), "train": np.array(train)}
        outs = vm["main"](*[tvm.runtime.tensor(feeds[i.name]) for i in built.inputs])
        return [o.numpy() for o in outs]

    for ratio, train in ((0.5, False), (0.0, True)):  # inference, or nothing to drop
        y, mask, plain = run(ratio, train)
        np.testing.assert_array_equal(y, x)
        np.testing.assert_array_equal(plain, x)
        assert mask.dtype == np.bool_ and mask.all()
    y, mask, _ = run(0.25, True)
    assert 0.2 < 1 - mask.mean() < 0.3  # about a quarter dropped
    np.testing.assert_allclose(y, np.where(mask, x / 0.75, 0), rtol=1e-6)
    # opset 7: the mask has the input's type, all ones (as ONNX's reference; ORT writes 0s)
    old = _model(
        [N("Dropout", ["x"], ["y", "m"], ratio=0.4)],
        [_vi("x", np.float32, [2, 3])],
        [_vi("y", np.float32), _vi("m", np.float32)],
        opset=7,
    )
    y, m = _run_tvm(old, {"x": x[:2, :3]})
    np.testing.assert_array_equal(y, x[:2, :3])
    assert m.dtype == np.float32 and (m == 1).all()


# ---------------------------------------------------------------------------------------------
# opset 24 / 26: Swish, CumProd, BitCast


def _new_ops_model():
    N = helper.make_node
    axis = [
        numpy_helper.from_array(np.array(v, np.int64), f"ax{v}".replace("-", "m"))
        for v in (0, 1, -1)
    ]
    nodes = [
        N("Swish", ["s"], ["swish"]),
        N("Swish", ["s"], ["swish_a"], alpha=0.7),
        N("CumProd", ["c", "ax1"], ["cp"]),
        N("CumProd", ["c", "ax0"], ["cp_ex"], exclusive=1),
        N("CumProd", ["c", "axm1"], ["cp_rev"], reverse=1),
        N("CumProd", ["ci", "ax0"], ["cp_rev_ex"], reverse=1, exclusive=1),
        N("BitCast", ["c"], ["bc_i32"], to=TensorProto.INT32),
        N("BitCast", ["ci"], ["bc_f32"], to=TensorProto.FLOAT),
        N("BitCast", ["d"], ["bc_i64"], to=TensorProto.INT64),
        N("BitCast", ["u16"], ["bc_f16"], to=TensorProto.FLOAT16),
        N("BitCast", ["i8"], ["bc_u8"], to=TensorProto.UINT8),
    ]
    rng = np.random.default_rng(4)
    feeds = {
        "s": rng.normal(size=(2, 5)).astype(np.float32),
        "c": rng.uniform(0.5, 1.5, (3, 4)).astype(np.float32),
        "ci": rng.integers(-3, 4, (3, 4)).astype(np.int32),
        "d": rng.normal(size=(3,)),
        "u16": np.array([0, 15360, 49152, 31744], np.uint16),
        "i8": np.array([-128, -1, 0, 127], np.int8),
    }
    out_types = {
        "swish": "f4",
        "swish_a": "f4",
        "cp": "f4",
        "cp_ex": "f4",
        "cp_rev": "f4",
        "cp_rev_ex": "i4",
        "bc_i32": "i4",
        "bc_f32": "f4",
        "bc_i64": "i8",
        "bc_f16": "f2",
        "bc_u8": "u1",
    }
    inputs = [_vi(k, v.dtype, v.shape) for k, v in feeds.items()]
    outputs = [_vi(k, np.dtype(t)) for k, t in out_types.items()]
    return _model(nodes, inputs, outputs, axis, opset=26, ir=13), feeds


def test_opset_24_26_ops():
    model, feeds = _new_ops_model()
    ours = _run_tvm(model, feeds)
    outs = dict(zip([o.name for o in model.graph.output], ours, strict=True))
    c, ci = feeds["c"], feeds["ci"]
    s = feeds["s"].astype(np.float64)
    np.testing.assert_allclose(outs["swish"], s / (1 + np.exp(-s)), rtol=1e-5)
    np.testing.assert_allclose(outs["swish_a"], s / (1 + np.exp(-0.7 * s)), rtol=1e-5)
    np.testing.assert_allclose(outs["cp"], np.cumprod(c, axis=1), rtol=1e-6)
    ex = np.concatenate([np.ones((1, 4), np.float32), np.cumprod(c, axis=0)[:-1]])
    np.testing.assert_allclose(outs["cp_ex"], ex, rtol=1e-6)
    np.testing.assert_allclose(outs["cp_rev"], np.cumprod(c[:, ::-1], axis=1)[:, ::-1], rtol=1e-6)
    rev = ci[::-1]
    rev_ex = np.concatenate([np.ones((1, 4), np.int32), np.cumprod(rev, axis=0)[:-1]])[::-1]
    np.testing.assert_array_equal(outs["cp_rev_ex"], rev_ex)
    np.testing.assert_array_equal(outs["bc_i32"], c.view(np.int32))
    np.testing.assert_array_equal(outs["bc_f32"].view(np.int32), ci)
    np.testing.assert_array_equal(outs["bc_i64"], feeds["d"].view(np.int64))
    np.testing.assert_array_equal(outs["bc_f16"], feeds["u16"].view(np.float16))
    np.testing.assert_array_equal(outs["bc_u8"], feeds["i8"].view(np.uint8))
    # and ONNX Runtime agrees where it runs these opsets
    try:
        theirs = _run_ort(model, feeds)
    except Exception:  # an ORT without opset 26
        return
    for name, a, b in zip(outs, ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=name)


def test_bitcast_of_different_widths_is_refused():
    model = _model(
        [helper.make_node("BitCast", ["x"], ["y"], to=TensorProto.INT64)],
        [_vi("x", np.float32, [2])],
        [_vi("y", np.int64)],
        opset=26,
        ir=13,
    )
    with pytest.raises(CompileError, match=r"BitCast.*same bit width"):
        tvmforge.build_model(model, "x86")


# ---------------------------------------------------------------------------------------------
# Pow


def test_pow_type_mixes():
    N = helper.make_node
    pairs = {
        "f32_i32": ("xf", "ei"),
        "f32_i64": ("xf", "el"),
        "i32_f32": ("xi", "ef"),
        "i64_f32": ("xl", "ef"),
        "i32_i32": ("xi", "ei"),
        "i64_i64": ("xl", "el"),
        "i64_i32_bcast": ("xl", "e1"),
        "f32_f32": ("xf", "ef"),
        "f16_f32": ("xh", "ef"),
    }
    nodes = [N("Pow", list(ins), [name]) for name, ins in pairs.items()]
    feeds = {
        "xf": np.array([[1.5, -2.0, 3.0, 0.5]], np.float32),
        "xh": np.array([[1.5, -2.0, 3.0, 0.5]], np.float16),
        "xi": np.array([[2, -3, 5, 1]], np.int32),
        "xl": np.array([[2, -3, 5, 7]], np.int64),
        "ef": np.array([2.0, 3.0, 0.5, 1.0], np.float32),
        "ei": np.array([2, 3, 0, 5], np.int32),
        "el": np.array([3, 1, 2, 21], np.int64),
        "e1": np.array([[3], [2]], np.int32),
    }
    inputs = [_vi(k, v.dtype, v.shape) for k, v in feeds.items()]
    outputs = [_vi(k, feeds[ins[0]].dtype) for k, ins in pairs.items()]
    model = _model(nodes, inputs, outputs, opset=15)
    outs = _check(model, feeds)
    assert outs["i64_i64"][0, 3] == 7**21  # exact beyond float64's 53 bits
    assert outs["i64_i32_bcast"].shape == (2, 4)


def test_integer_pow_negative_exponent():
    model = _model(
        [helper.make_node("Pow", ["a", "b"], ["y"])],
        [_vi("a", np.int32, [5]), _vi("b", np.int64, [5])],
        [_vi("y", np.int32)],
        opset=15,
    )
    feeds = {"a": np.array([1, -1, -1, 2, -3], np.int32), "b": np.array([-3, -3, -2, -1, -2])}
    (y,) = _run_tvm(model, feeds)
    np.testing.assert_array_equal(y, [1, -1, 1, 0, 0])  # the real power, truncated
