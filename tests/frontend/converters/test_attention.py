"""ONNX ``Attention`` (opset 23/24, and the window attributes of 25) and ``RotaryEmbedding``
(opset 23) against ONNX Runtime (opset 25 against ONNX's reference, which ORT does not run yet),
a few compiled models with one node per attribute variant; and the com.microsoft ``Attention``
of the same name still goes to TVM's converter."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import tvmforge
from onnx_builders import make_model
from tvmforge.errors import CompileError

F, H, B, I64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BOOL, TensorProto.INT64


def _vi(name, elem, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, opset, domains=()):
    model = make_model(nodes, inputs, outputs, opset=opset)
    for domain, version in domains:
        model.opset_import.append(helper.make_opsetid(domain, version))
    model.ir_version = 11  # opset 23+ needs IR 11; onnxruntime 1.31 reads up to 13
    return model


def _ort(model, feed):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feed), strict=True))


def _ours(model, feed, tmp_path_factory):
    path = tmp_path_factory.mktemp("attn") / "m.tar"
    return tvmforge.load(tvmforge.compile_model(model, "x86", path))(**feed)


def _assert_close(ours, ref, rtol=1e-4, atol=1e-5):
    assert set(ref) <= set(ours)
    for name, want in ref.items():
        got = np.asarray(ours[name])
        assert got.shape == want.shape and got.dtype == want.dtype, name
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                                   rtol=rtol, atol=atol, err_msg=name)


def _rand(rng, shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


# -- opset 24, fp32: one node per variant, sharing inputs ------------------------------------
# 4-D GQA: 4 query heads over 2 kv heads, Sq 3, kv 5 (+ 2 past), head 8, value head 6.
FEED_SHAPES = {
    "q": (2, 4, 3, 8), "k": (2, 2, 5, 8), "v": (2, 2, 5, 6),
    "pk": (2, 2, 2, 8), "pv": (2, 2, 2, 6),
    "q3": (2, 3, 16), "k3": (2, 5, 8), "v3": (2, 5, 12),  # 3-D: 2 q heads, 1 kv head
}


def _fp32_model():
    nodes = [
        # float 4-D mask, custom scale, softcap; qk output after softcap (mode 1)
        helper.make_node("Attention", ["q", "k", "v", "fmask"], ["y1", "", "", "qk1"],
                         scale=0.3, softcap=1.5, qk_matmul_output_mode=1),
        # past cache, causal (bottom-right by the past length), a bool mask over past + new
        # keys; presents and the qk output with the bias (mode 2)
        helper.make_node("Attention", ["q", "k", "v", "bmask7", "pk", "pv"],
                         ["y2", "pk2", "pv2", "qk2"], is_causal=1, qk_matmul_output_mode=2),
        # external cache: nonpad_kv_seqlen (padding mask + per-batch causal offset) with a
        # rank-3 bool mask that broadcasts over the batch
        helper.make_node("Attention", ["q", "k", "v", "bmask3", "", "", "nonpad"], ["y3"],
                         is_causal=1),
        # a bool mask with a fully masked row: a zero row in Y and in the mode-3 probabilities
        helper.make_node("Attention", ["q", "k", "v", "bmask_dead"], ["y4", "", "", "qk4"],
                         qk_matmul_output_mode=3),
        # raw QK^T (mode 0) with softcap and a -inf float mask
        helper.make_node("Attention", ["q", "k", "v", "fmask2"], ["y5", "", "", "qk5"],
                         softcap=2.0),
        # 3-D inputs with head counts (MQA), causal, softmax in double, mode 3
        helper.make_node("Attention", ["q3", "k3", "v3"], ["y6", "pk6", "pv6", "qk6"],
                         q_num_heads=2, kv_num_heads=1, is_causal=1, softmax_precision=11,
                         qk_matmul_output_mode=3),
    ]
    inputs = [_vi(n, F, list(s)) for n, s in FEED_SHAPES.items()] + [
        _vi("fmask", F, [2, 4, 3, 5]), _vi("fmask2", F, [3, 5]),
        _vi("bmask7", B, [3, 7]), _vi("bmask3", B, [4, 3, 5]),
        _vi("bmask_dead", B, [2, 1, 3, 5]), _vi("nonpad", I64, [2]),
    ]
    outputs = [_vi(n, F) for n in
               ["y1", "qk1", "y2", "pk2", "pv2", "qk2", "y3", "y4", "qk4", "y5", "qk5",
                "y6", "pk6", "pv6", "qk6"]]
    return _model(nodes, inputs, outputs, opset=24)


def _fp32_feed():
    rng = np.random.default_rng(0)
    feed = {n: _rand(rng, s) for n, s in FEED_SHAPES.items()}
    fmask2 = np.zeros((3, 5), np.float32)
    fmask2[0, 3:] = -np.inf
    dead = rng.random((2, 1, 3, 5)) > 0.3
    dead[1, 0, 1, :] = False  # batch 1, query 1: no key at all
    feed.update(
        fmask=_rand(rng, (2, 4, 3, 5)), fmask2=fmask2,
        bmask7=rng.random((3, 7)) > 0.2, bmask3=rng.random((4, 3, 5)) > 0.2,
        bmask_dead=dead, nonpad=np.array([5, 3], np.int64),
    )
    return feed


def test_attention_variants_match_onnxruntime(tmp_path_factory):
    model, feed = _fp32_model(), _fp32_feed()
    ours = _ours(model, feed, tmp_path_factory)
    ref = _ort(model, feed)
    # ORT writes a bool mask's masked scores as the lowest float; the spec (and its reference)
    # as -inf, as tvmforge does
    ref["qk2"] = np.where(ref["qk2"] <= np.finfo(np.float32).min, -np.inf, ref["qk2"])
    _assert_close(ours, ref)
    assert not np.asarray(ours["y4"])[1, :, 1].any()  # the fully masked row is zeros, no NaN
    assert not np.isnan(np.asarray(ours["y4"])).any()


# -- fp16: computed in fp32, rounded once --------------------------------------------------------
def test_fp16_attention_with_past_matches_onnxruntime(tmp_path_factory):
    nodes = [
        helper.make_node("Attention", ["q", "k", "v", "mask", "pk", "pv"],
                         ["y", "pk_out", "pv_out", "qk"], is_causal=1, qk_matmul_output_mode=3),
        helper.make_node("Attention", ["q", "k", "v"], ["y2"], softmax_precision=1),
    ]
    shapes = {"q": (2, 4, 3, 16), "k": (2, 2, 3, 16), "v": (2, 2, 3, 16),
              "pk": (2, 2, 4, 16), "pv": (2, 2, 4, 16), "mask": (3, 7)}
    model = _model(nodes, [_vi(n, H, list(s)) for n, s in shapes.items()],
                   [_vi(n, H) for n in ["y", "pk_out", "pv_out", "qk", "y2"]], opset=23)
    rng = np.random.default_rng(1)
    feed = {n: _rand(rng, s, np.float16) for n, s in shapes.items()}
    ours = _ours(model, feed, tmp_path_factory)
    # within an fp16 ulp of the exact result (ONNX's reference run in float64, rounded) ...
    exact = ReferenceEvaluator(model).run(None, {n: a.astype(np.float64) for n, a in feed.items()})
    names = ["y", "pk_out", "pv_out", "qk", "y2"]
    _assert_close(ours, {n: a.astype(np.float16) for n, a in zip(names, exact, strict=True)},
                  rtol=1e-3, atol=1e-3)
    # ... and within two of ONNX Runtime's (which rounds some steps to fp16)
    _assert_close(ours, _ort(model, feed), rtol=2e-3, atol=2.5e-3)


# -- against ONNX's reference: what ORT 1.31 does not run ------------------------------------------
def test_windows_and_short_masks_match_the_onnx_reference(tmp_path_factory):
    """Opset 25's sliding windows, and a mask shorter than past + new keys (padded with
    ``-inf``/``False``), which ORT's kernel refuses."""
    nodes = [
        helper.make_node("Attention", ["q", "k", "v", "short", "pk", "pv"], ["y0"], is_causal=1),
        helper.make_node("Attention", ["q", "k", "v", "fshort"], ["y3"]),
        helper.make_node("Attention", ["q", "k", "v", "", "", "", "nonpad"], ["y1"],
                         is_causal=1, left_window_size=2),
        helper.make_node("Attention", ["q", "k", "v"], ["y2"],
                         left_window_size=1, right_window_size=2),
    ]
    shapes = {"q": (2, 2, 4, 8), "k": (2, 2, 6, 8), "v": (2, 2, 6, 8),
              "pk": (2, 2, 3, 8), "pv": (2, 2, 3, 8), "fshort": (2, 1, 4, 4)}
    outs = ["y0", "y1", "y2", "y3"]
    model = _model(nodes, [_vi(n, F, list(s)) for n, s in shapes.items()] +
                   [_vi("nonpad", I64, [2]), _vi("short", B, [4, 7])],
                   [_vi(n, F) for n in outs], opset=25)
    rng = np.random.default_rng(2)
    feed = {n: _rand(rng, s) for n, s in shapes.items()}
    feed["nonpad"] = np.array([6, 2], np.int64)  # batch 1: offset -2, its first rows are empty
    feed["short"] = rng.random((4, 7)) > 0.3  # 7 of the 9 keys: the last 2 masked
    ref = dict(zip(outs, ReferenceEvaluator(model).run(None, feed), strict=True))
    _assert_close(_ours(model, feed, tmp_path_factory), ref)


# -- RotaryEmbedding -----------------------------------------------------------------------------
def test_rotary_embedding_variants_match_onnxruntime(tmp_path_factory):
    nodes = [
        helper.make_node("RotaryEmbedding", ["x4", "cos", "sin", "pos"], ["r1"]),
        helper.make_node("RotaryEmbedding", ["x4", "cos", "sin", "pos"], ["r2"], interleaved=1),
        helper.make_node("RotaryEmbedding", ["x3", "cos_p", "sin_p", "pos"], ["r3"],
                         num_heads=2, rotary_embedding_dim=4, interleaved=1),
        helper.make_node("RotaryEmbedding", ["x4", "cos_t", "sin_t"], ["r4"],
                         rotary_embedding_dim=4),
        helper.make_node("RotaryEmbedding", ["x3", "cos_t8", "sin_t8"], ["r5"], num_heads=2),
    ]
    shapes = {"x4": (2, 3, 5, 8), "x3": (2, 5, 32), "cos": (20, 4), "sin": (20, 4),
              "cos_p": (20, 2), "sin_p": (20, 2), "cos_t": (2, 5, 2), "sin_t": (2, 5, 2),
              "cos_t8": (2, 5, 8), "sin_t8": (2, 5, 8)}
    model = _model(nodes, [_vi(n, F, list(s)) for n, s in shapes.items()] +
                   [_vi("pos", I64, [2, 5])], [_vi(f"r{i}", F) for i in range(1, 6)], opset=23)
    rng = np.random.default_rng(3)
    feed = {n: _rand(rng, s) for n, s in shapes.items()}
    feed["pos"] = rng.integers(0, 20, (2, 5)).astype(np.int64)
    _assert_close(_ours(model, feed, tmp_path_factory), _ort(model, feed))


# -- com.microsoft Attention: same op name, TVM's converter --------------------------------------
def test_com_microsoft_attention_still_converts(tmp_path_factory):
    node = helper.make_node("Attention", ["x", "w", "b"], ["y"], domain="com.microsoft",
                            num_heads=2)
    model = _model([node], [_vi("x", F, [1, 4, 8]), _vi("w", F, [8, 24]), _vi("b", F, [24])],
                   [_vi("y", F)], opset=23, domains=[("com.microsoft", 1)])
    rng = np.random.default_rng(4)
    feed = {"x": _rand(rng, (1, 4, 8)), "w": _rand(rng, (8, 24)), "b": _rand(rng, (24,))}
    _assert_close(_ours(model, feed, tmp_path_factory), _ort(model, feed))


def test_3d_inputs_without_head_counts_are_refused(tmp_path):
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attn")
    model = _model([node], [_vi(n, F, [1, 2, 8]) for n in "qkv"], [_vi("y", F)], opset=23)
    with pytest.raises(CompileError, match=r"node attn \(Attention\): 3-D Q, K, V without"):
        tvmforge.compile_model(model, "x86", tmp_path / "m.tar")


def test_a_dynamic_batch_matches_onnxruntime(tmp_path_factory):
    """One compiled model, batches of 1 and 3: causal 4-D with a bool mask, 3-D with head
    counts, and RotaryEmbedding with position ids."""
    nodes = [
        helper.make_node("Attention", ["q", "k", "v", "m"], ["y"], is_causal=1),
        helper.make_node("Attention", ["q3", "k3", "v3"], ["y3"], q_num_heads=2, kv_num_heads=2),
        helper.make_node("RotaryEmbedding", ["q", "cos", "sin", "pos"], ["r"]),
    ]
    shapes = {"q": ("N", 2, 3, 8), "k": ("N", 2, 5, 8), "v": ("N", 2, 5, 8),
              "q3": ("N", 4, 16), "k3": ("N", 4, 16), "v3": ("N", 4, 16),
              "cos": (10, 4), "sin": (10, 4)}
    model = _model(nodes, [_vi(n, F, list(s)) for n, s in shapes.items()] +
                   [_vi("m", B, ["N", 1, 3, 5]), _vi("pos", I64, ["N", 3])],
                   [_vi("y", F), _vi("y3", F), _vi("r", F)], opset=23)
    path = tmp_path_factory.mktemp("dyn") / "m.tar"
    compiled = tvmforge.load(tvmforge.compile_model(model, "x86", path))
    rng = np.random.default_rng(5)
    for n in (1, 3):
        feed = {k: _rand(rng, tuple(n if d == "N" else d for d in s)) for k, s in shapes.items()}
        feed["m"] = rng.random((n, 1, 3, 5)) > 0.2
        feed["pos"] = rng.integers(0, 10, (n, 3)).astype(np.int64)
        _assert_close(compiled(**feed), _ort(model, feed))
