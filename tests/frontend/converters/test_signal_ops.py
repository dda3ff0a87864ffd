"""Signal-processing and other standard ops (``tvmforge.frontend.converters.signal_ops``):
built for x86 and compared with ONNX Runtime.

Each test builds one small graph holding several variants of an op (one output each), compiles
it with ``tvmforge.build_model(..., "x86")`` and runs it in TVM's VM. The windows and
MelWeightMatrix take only constants, which tvmforge's pre-pass folds with the ONNX reference
before any converter runs; their converters are also run without the pre-pass. ONNX Runtime's CPU
DeformConv is 2-D only, so 1-D and 3-D DeformConv are checked against the 2-D op run by ORT on
the same data with a singleton dimension (and zero offsets along it) added. ORT's DFT is not
accurate to 1e-5 on zero bins (the ONNX suite's DFT cases fail it), so DFT and STFT are checked
against ORT at a tolerance scaled to the output's magnitude and against the ONNX reference
implementation (numpy's FFT in float64) at 1e-4.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

import tvmforge
from tvmforge.errors import CompileError

IR_VERSION = 10  # onnxruntime 1.31 reads IR <= 13; TensorScatter needs opset 24
F, D, I64, I32 = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.INT32

pytestmark = pytest.mark.filterwarnings("ignore:Field 'shape' of 'type' is required:UserWarning")


def _model(nodes, inputs, outputs, inits=(), *, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "signal", inputs, outputs, list(inits))
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION
    )


def _in(name: str, array: np.ndarray) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape
    )


def _out(name: str, elem: int = F) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, None)


def _const(name: str, value, dtype=np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 4
    sess = ort.InferenceSession(model.SerializeToString(), opts, ["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _tvm(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    built = tvmforge.build_model(model, "x86", use_shipped_logs=False)  # no tuned kernels here
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(feeds[i.name]) for i in built.inputs])
    outs = [out] if hasattr(out, "numpy") else list(out)
    return [o.numpy() for o in outs]


def _tvm_unfolded(model: onnx.ModelProto) -> list[np.ndarray]:
    """Import with TVM's importer and tvmforge's converters, skipping tvmforge's pre-pass
    (which folds a node of constant inputs with the ONNX reference before any converter
    runs), then build with TVM and run: the converter itself computes the outputs."""
    from tvm.relax.frontend.onnx import from_onnx

    from tvmforge.frontend import converters

    with converters.installed():
        mod = from_onnx(model, keep_params_in_input=False)
    vm = relax.VirtualMachine(relax.build(mod, tvm.target.Target("llvm")), tvm.cpu())
    out = vm["main"]()
    outs = [out] if hasattr(out, "numpy") else list(out)
    return [o.numpy() for o in outs]


def _check(ours, theirs, names, *, rtol=1e-4, atol=1e-5) -> None:
    assert len(ours) == len(theirs)
    for name, o, t in zip(names, ours, theirs, strict=True):
        assert o.shape == t.shape, name
        assert o.dtype == t.dtype, name
        np.testing.assert_allclose(o, t, rtol=rtol, atol=atol, err_msg=name)


def _compare_ort(model, feeds, **tol) -> None:
    names = [o.name for o in model.graph.output]
    _check(_tvm(model, feeds), _ort(model, feeds), names, **tol)


def _compare_constant_op(model, oracle=None) -> None:
    """An op of constant inputs: the converter's outputs (pre-pass skipped) and the full
    pipeline's (where the pre-pass folds it) against ORT's (or ``oracle``'s)."""
    names = [o.name for o in model.graph.output]
    expected = (oracle or _ort)(model, {})
    _check(_tvm_unfolded(model), expected, names)
    _check(_tvm(model, {}), expected, names)


# ----------------------------------------------------------------------------- windows


def test_windows():
    nodes, outs = [], []
    for op in ("HannWindow", "HammingWindow", "BlackmanWindow"):
        for periodic in (0, 1):
            for size, elem in (("n10", F), ("n7", D)):
                name = f"{op}_{periodic}_{size}_{elem}"
                nodes.append(
                    helper.make_node(op, [size], [name], periodic=periodic, output_datatype=elem)
                )
                outs.append(_out(name, elem))
    nodes.append(helper.make_node("HannWindow", ["n1"], ["hann1"]))  # default: periodic float
    outs.append(_out("hann1"))
    inits = [_const("n10", 10), _const("n7", 7, np.int32), _const("n1", 1)]
    _compare_constant_op(_model(nodes, [], outs, inits))


def test_window_integer_output_truncates():
    # output_datatype int32: the float window truncated toward zero (all 0 except the peak 1)
    model = _model(
        [helper.make_node("HannWindow", ["n"], ["y"], periodic=0, output_datatype=I32)],
        [],
        [_out("y", I32)],
        [_const("n", 9)],
    )
    _compare_constant_op(model)


# ----------------------------------------------------------------------------- MelWeightMatrix


def _mel_model(cases):
    nodes, outs, inits = [], [], []
    for k, (bins, length, rate, low, high, ftype, elem) in enumerate(cases):
        names = [f"{p}{k}" for p in ("bins", "len", "rate", "low", "high")]
        inits += [
            _const(names[0], bins),
            _const(names[1], length),
            _const(names[2], rate),
            _const(names[3], low, ftype),
            _const(names[4], high, ftype),
        ]
        nodes.append(helper.make_node("MelWeightMatrix", names, [f"m{k}"], output_datatype=elem))
        outs.append(_out(f"m{k}", elem))
    return _model(nodes, [], outs, inits)


def test_mel_weight_matrix():
    # bins, dft_length, rate, low, high, float type of the edges, output type
    _compare_constant_op(
        _mel_model(
            [
                (8, 16, 8192, 0.0, 4096.0, np.float32, F),
                (5, 64, 16000, 100.0, 7000.0, np.float32, F),
                (10, 32, 8000, 50.0, 3000.0, np.float32, F),
            ]
        )
    )
    # ORT has no kernel for a double output or double edges: the ONNX reference is the oracle
    _compare_constant_op(_mel_model([(6, 40, 8000, 20.0, 3500.0, np.float64, D)]), _reference)


# ----------------------------------------------------------------------------- TensorScatter


def test_tensor_scatter():
    rng = np.random.default_rng(0)
    cache = rng.normal(size=(2, 3, 6, 4)).astype(np.float32)
    upd2 = rng.normal(size=(2, 3, 2, 4)).astype(np.float32)
    upd3 = rng.normal(size=(2, 3, 6, 3)).astype(np.float32)
    cache3 = rng.normal(size=(2, 3, 6, 5)).astype(np.float32)
    idx = np.array([1, 4], np.int64)
    idx_last = np.array([2, 0], np.int64)  # a linear write must fit: 2 + 3 <= 5
    idx_wrap = np.array([5, 3], np.int64)  # 5 + 1 wraps to 0 in circular mode
    nodes = [
        helper.make_node("TensorScatter", ["cache", "upd2", "idx"], ["lin"], axis=2),
        helper.make_node("TensorScatter", ["cache", "upd2"], ["noidx"]),  # axis -2, indices 0
        helper.make_node(
            "TensorScatter", ["cache", "upd2", "wrap"], ["circ"], axis=-2, mode="circular"
        ),
        helper.make_node("TensorScatter", ["cache3", "upd3", "idx_last"], ["last"], axis=-1),
    ]
    feeds = {
        "cache": cache,
        "upd2": upd2,
        "upd3": upd3,
        "cache3": cache3,
        "idx": idx,
        "idx_last": idx_last,
        "wrap": idx_wrap,
    }
    model = _model(
        nodes,
        [_in(k, v) for k, v in feeds.items()],
        [_out(n) for n in ("lin", "noidx", "circ", "last")],
        opset=24,
    )
    _compare_ort(model, feeds, rtol=0, atol=0)


def test_tensor_scatter_int_and_refusal():
    cache = np.arange(2 * 5, dtype=np.int32).reshape(2, 5)
    upd = -np.arange(2 * 2, dtype=np.int32).reshape(2, 2) - 1
    idx = np.array([3, 0], np.int64)
    model = _model(
        [helper.make_node("TensorScatter", ["c", "u", "i"], ["y"], axis=1)],
        [_in("c", cache), _in("u", upd), _in("i", idx)],
        [_out("y", I32)],
        opset=24,
    )
    feeds = {"c": cache, "u": upd, "i": idx}
    _compare_ort(model, feeds, rtol=0, atol=0)
    bad = _model(
        [helper.make_node("TensorScatter", ["c", "u"], ["y"], axis=0)],
        [_in("c", cache), _in("u", cache)],
        [_out("y", I32)],
        opset=24,
    )
    with pytest.raises(CompileError, match="axis 0"):
        tvmforge.build_model(bad, "x86", use_shipped_logs=False)


# ----------------------------------------------------------------------------- TfIdfVectorizer


def _tfidf(name, x, **attrs):
    return helper.make_node("TfIdfVectorizer", [x], [name], **attrs)


def test_tfidf_vectorizer():
    # pool: unigrams [2, 3, 5, 4], bigrams [(5,6), (7,8), (6,7)], trigram [(2,3,5)]
    pool = [2, 3, 5, 4, 5, 6, 7, 8, 6, 7, 2, 3, 5]
    counts = [0, 4, 10]
    idx = [0, 1, 2, 3, 4, 5, 6, 7]
    common = dict(pool_int64s=pool, ngram_counts=counts, ngram_indexes=idx)
    weights = [0.5, 1.0, 2.0, 0.25, 3.0, 1.5, 0.75, 4.0]
    nodes = [
        _tfidf(
            "tf_all",
            "x2",
            mode="TF",
            min_gram_length=1,
            max_gram_length=3,
            max_skip_count=0,
            **common,
        ),
        _tfidf(
            "tf_skip",
            "x2",
            mode="TF",
            min_gram_length=1,
            max_gram_length=3,
            max_skip_count=2,
            **common,
        ),
        _tfidf(
            "tf_bi",
            "x2",
            mode="TF",
            min_gram_length=2,
            max_gram_length=2,
            max_skip_count=3,
            **common,
        ),
        _tfidf(
            "idf_w",
            "x2",
            mode="IDF",
            min_gram_length=1,
            max_gram_length=2,
            max_skip_count=1,
            weights=weights,
            **common,
        ),
        _tfidf(
            "idf",
            "x2",
            mode="IDF",
            min_gram_length=1,
            max_gram_length=3,
            max_skip_count=0,
            **common,
        ),
        _tfidf(
            "tfidf_w",
            "x2",
            mode="TFIDF",
            min_gram_length=1,
            max_gram_length=3,
            max_skip_count=1,
            weights=weights,
            **common,
        ),
        _tfidf(
            "tfidf",
            "x2",
            mode="TFIDF",
            min_gram_length=1,
            max_gram_length=2,
            max_skip_count=0,
            **common,
        ),
        # 1-D int32 input; several pool n-grams share an output coordinate; a long skip
        _tfidf(
            "one_d",
            "x1",
            mode="TF",
            min_gram_length=1,
            max_gram_length=3,
            max_skip_count=5,
            pool_int64s=pool,
            ngram_counts=counts,
            ngram_indexes=[3, 0, 1, 1, 2, 0, 4, 3],
        ),
    ]
    x2 = np.array(
        [[2, 3, 5, 6, 7, 8, 5, 6, 7, 4, 2, 3], [5, 1, 6, 7, 2, 9, 3, 5, 4, 6, 6, 7]], np.int64
    )
    x1 = np.array([6, 2, 3, 5, 7, 6, 7, 8, 2, 4, 3, 5], np.int32)
    feeds = {"x2": x2, "x1": x1}
    outs = [_out(n.output[0]) for n in nodes]
    _compare_ort(
        _model(nodes, [_in("x2", x2), _in("x1", x1)], outs, opset=9), feeds, rtol=0, atol=0
    )


def test_tfidf_string_pool_refused():
    node = helper.make_node(
        "TfIdfVectorizer",
        ["x"],
        ["y"],
        mode="TF",
        min_gram_length=1,
        max_gram_length=1,
        max_skip_count=0,
        ngram_counts=[0],
        ngram_indexes=[0, 1],
        pool_strings=["a", "b"],
    )
    model = _model([node], [helper.make_tensor_value_info("x", I64, [4])], [_out("y")], opset=9)
    with pytest.raises(CompileError, match="string"):
        tvmforge.build_model(model, "x86", use_shipped_logs=False)


# ----------------------------------------------------------------------------- DeformConv


def _deform_2d_cases():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 7, 6)).astype(np.float32)
    cases = []  # (name, attrs, W, offset, B, mask)
    # default: 3x3 kernel, stride 1, no pad
    w = rng.normal(size=(3, 4, 3, 3)).astype(np.float32)
    off = rng.normal(scale=1.5, size=(2, 18, 5, 4)).astype(np.float32)
    cases.append(("plain", {}, w, off, None, None))
    # pads, strides, dilations, group 2, offset_group 2, mask and bias
    w = rng.normal(size=(4, 2, 2, 3)).astype(np.float32)
    attrs = dict(pads=[1, 2, 1, 0], strides=[2, 1], dilations=[2, 1], group=2, offset_group=2)
    oh, ow = (7 + 2 - 3) // 2 + 1, (6 + 2 - 3) // 1 + 1
    off = rng.normal(scale=2.0, size=(2, 2 * 6 * 2, oh, ow)).astype(np.float32)
    bias = rng.normal(size=(4,)).astype(np.float32)
    mask = rng.uniform(size=(2, 2 * 6, oh, ow)).astype(np.float32)
    cases.append(("full", attrs, w, off, bias, mask))
    return x, cases


def test_deform_conv_2d():
    x, cases = _deform_2d_cases()
    feeds, nodes, inputs = {"x": x}, [], [_in("x", x)]
    for name, attrs, w, off, bias, mask in cases:
        args = {f"w_{name}": w, f"o_{name}": off}
        if bias is not None:
            args[f"b_{name}"] = bias
        if mask is not None:
            args[f"m_{name}"] = mask
        feeds.update(args)
        inputs += [_in(k, v) for k, v in args.items()]
        names = [
            "x",
            f"w_{name}",
            f"o_{name}",
            f"b_{name}" if bias is not None else "",
            f"m_{name}" if mask is not None else "",
        ]
        while not names[-1]:
            names.pop()
        nodes.append(helper.make_node("DeformConv", names, [name], **attrs))
    model = _model(nodes, inputs, [_out(c[0]) for c in cases], opset=22)
    _compare_ort(model, feeds, rtol=1e-4, atol=1e-4)


def test_deform_conv_1d_3d_match_2d():
    """A 1-D (3-D) DeformConv equals ORT's 2-D op on the data with a singleton height (depth),
    a height-1 kernel and zero offsets along that dimension."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 2, 9)).astype(np.float32)
    w = rng.normal(size=(3, 2, 3)).astype(np.float32)
    off = rng.normal(scale=1.5, size=(1, 3, 4)).astype(np.float32)  # stride 2, pad 1: L 4
    mask = rng.uniform(size=(1, 3, 4)).astype(np.float32)
    attrs = dict(strides=[2], pads=[1, 0])
    one_d = _model(
        [helper.make_node("DeformConv", ["x", "w", "o", "", "m"], ["y"], **attrs)],
        [_in("x", x), _in("w", w), _in("o", off), _in("m", mask)],
        [_out("y")],
        opset=19,
    )
    ours = _tvm(one_d, {"x": x, "w": w, "o": off, "m": mask})[0]

    off2 = np.stack([np.zeros_like(off), off], axis=2).reshape(1, 6, 1, 4)  # (kw, (h, w))
    two_d = _model(
        [
            helper.make_node(
                "DeformConv", ["x", "w", "o", "", "m"], ["y"], strides=[1, 2], pads=[0, 1, 0, 0]
            )
        ],
        [
            _in("x", x[:, :, None]),
            _in("w", w[:, :, None]),
            _in("o", off2),
            _in("m", mask[:, :, None]),
        ],
        [_out("y")],
        opset=19,
    )
    theirs = _ort(
        two_d, {"x": x[:, :, None], "w": w[:, :, None], "o": off2, "m": mask[:, :, None]}
    )[0]
    np.testing.assert_allclose(ours, theirs[:, :, 0], rtol=1e-4, atol=1e-5)

    # 3-D: depth 1, kernel depth 1, zero depth offsets; group 2 and bias
    x3 = rng.normal(size=(1, 4, 1, 5, 6)).astype(np.float32)
    w3 = rng.normal(size=(2, 2, 1, 2, 2)).astype(np.float32)
    b3 = rng.normal(size=(2,)).astype(np.float32)
    off_hw = rng.normal(scale=1.2, size=(1, 4, 2, 4, 5)).astype(np.float32)  # (k, hw, H, W)
    off3 = np.concatenate([np.zeros_like(off_hw[:, :, :1]), off_hw], axis=2)  # (k, dhw)
    off3 = off3.reshape(1, 12, 1, 4, 5)
    three_d = _model(
        [helper.make_node("DeformConv", ["x", "w", "o", "b"], ["y"], group=2)],
        [_in("x", x3), _in("w", w3), _in("o", off3), _in("b", b3)],
        [_out("y")],
        opset=19,
    )
    ours = _tvm(three_d, {"x": x3, "w": w3, "o": off3, "b": b3})[0]
    off2 = off_hw.reshape(1, 8, 4, 5)
    two_d = _model(
        [helper.make_node("DeformConv", ["x", "w", "o", "b"], ["y"], group=2)],
        [_in("x", x3[:, :, 0]), _in("w", w3[:, :, 0]), _in("o", off2), _in("b", b3)],
        [_out("y")],
        opset=19,
    )
    theirs = _ort(two_d, {"x": x3[:, :, 0], "w": w3[:, :, 0], "o": off2, "b": b3})[0]
    np.testing.assert_allclose(ours[:, :, 0], theirs, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- DFT / STFT


def _reference(model, feeds):
    from onnx.reference import ReferenceEvaluator

    return list(ReferenceEvaluator(model).run(None, feeds))


def _compare_fft(model, feeds, not_ort=()) -> None:
    names = [o.name for o in model.graph.output]
    ours = _tvm(model, feeds)
    _check(ours, _reference(model, feeds), names, rtol=1e-4, atol=1e-4)
    for name, o, t in zip(names, ours, _ort(model, feeds), strict=True):
        if name in not_ort:
            continue
        np.testing.assert_allclose(o, t, atol=1e-5 * max(1.0, float(np.abs(t).max())), err_msg=name)


def test_dft_opset20():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(2, 12, 3, 1)).astype(np.float32)
    cplx = rng.normal(size=(2, 12, 3, 2)).astype(np.float32)
    half = np.fft.rfft(rng.normal(size=(2, 10)), axis=1)  # a one-sided spectrum of length 6
    half = np.stack([half.real, half.imag], -1).astype(np.float32)
    inits = [
        _const("ax1", 1),
        _const("ax2", -2),
        _const("len16", 16),
        _const("len8", 8),
        _const("len10", 10),
        _const("len9", 9),
    ]
    variants = [  # output, input, dft_length, axis, attributes
        ("fwd", "real", "", "ax1", {}),
        ("fwd_axis2", "real", "", "ax2", {}),
        ("rfft", "real", "", "ax1", {"onesided": 1}),
        ("rfft_pad", "real", "len16", "ax1", {"onesided": 1}),
        ("cfft_crop", "cplx", "len8", "ax1", {}),
        ("ifft", "cplx", "", "ax1", {"inverse": 1}),
        ("ifft_pad", "cplx", "len16", "ax1", {"inverse": 1}),
        ("irfft", "half", "", "ax1", {"inverse": 1, "onesided": 1}),
        ("irfft_len10", "half", "len10", "ax1", {"inverse": 1, "onesided": 1}),
        ("irfft_odd", "half", "len9", "ax1", {"inverse": 1, "onesided": 1}),
    ]
    nodes = [helper.make_node("DFT", [i, n, a], [o], **attrs) for o, i, n, a, attrs in variants]
    feeds = {"real": real, "cplx": cplx, "half": half}
    model = _model(
        nodes,
        [_in(k, v) for k, v in feeds.items()],
        [_out(v[0]) for v in variants],
        inits,
        opset=20,
    )
    # ORT's inverse one-sided DFT of odd length does not give numpy.fft.irfft's signal (the
    # spec's reference); that variant is checked against the reference only
    _compare_fft(model, feeds, not_ort=("irfft_odd",))


def test_dft_opset17():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(3, 10, 1)).astype(np.float32)
    cplx = rng.normal(size=(4, 3, 2)).astype(np.float64)
    nodes = [
        helper.make_node("DFT", ["real"], ["fwd"]),  # axis 1
        helper.make_node("DFT", ["real", "len6"], ["crop_onesided"], onesided=1),
        helper.make_node("DFT", ["cplx"], ["inv0"], axis=0, inverse=1),
    ]
    feeds = {"real": real, "cplx": cplx}
    outs = [_out("fwd"), _out("crop_onesided"), _out("inv0", D)]
    model = _model(nodes, [_in(k, v) for k, v in feeds.items()], outs, [_const("len6", 6)])
    _compare_fft(model, feeds)


def test_stft():
    rng = np.random.default_rng(5)
    signal = rng.normal(size=(2, 40, 1)).astype(np.float32)
    csignal = rng.normal(size=(1, 30, 2)).astype(np.float32)
    window = np.hanning(8).astype(np.float32)
    inits = [_const("step4", 4), _const("step5", 5), _const("len8", 8), _const("len6", 6)]
    nodes = [
        helper.make_node("STFT", ["signal", "step4", "window"], ["win"]),  # onesided 1
        helper.make_node("STFT", ["signal", "step5", "", "len6"], ["rect"], onesided=0),
        helper.make_node("STFT", ["signal", "step4", "window", "len8"], ["both"], onesided=0),
        helper.make_node("STFT", ["csignal", "step5", "", "len8"], ["cplx"], onesided=0),
    ]
    feeds = {"signal": signal, "csignal": csignal, "window": window}
    model = _model(
        nodes,
        [_in(k, v) for k, v in feeds.items()],
        [_out(n) for n in ("win", "rect", "both", "cplx")],
        inits,
    )
    _compare_fft(model, feeds)
