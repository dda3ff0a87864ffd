"""Every ONNX-zoo "light" model in the onnx wheel compiles for x86 and matches ONNX Runtime.

The shipped weights are one constant per tensor, so every logit is equal and a wrong kernel
would still match; the models are given seeded random weights (``tvmforge.frontend.zoo``) and compared
as logits, and each test asserts first that the reference output is far from uniform.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tvmforge import build_model
from tvmforge.bench.reference import compare, run_onnxruntime
from tvmforge.errors import InputError
from tvmforge.frontend import zoo
from tvmforge.runtime.executor import LocalVM, default_threads, random_inputs, set_threads

# Tolerance for fp32 logits after 20-100 layers, relative to the largest |logit|.
ATOL, RTOL = 1e-4, 1e-3

LIGHT = sorted(p.stem.removeprefix("light_") for p in zoo.light_dir().glob("light_*.onnx"))


def test_the_wheel_ships_nine_light_models():
    assert len(LIGHT) == 9, LIGHT


def test_shipped_weights_are_degenerate_which_is_why_we_randomize():
    proto = onnx.load(str(zoo.light_path("squeezenet")))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert float(np.std(out)) < 1e-6  # the softmax of 1000 equal logits


# The largest light models (VGG-19 548 MB, AlexNet 244 MB, ZFNet 349 MB) and DenseNet-121 add
# 30-80 s each to the default suite and no op the others lack: they run with ``-m slow``.
_HEAVY_LIGHT = {"vgg19", "bvlc_alexnet", "zfnet512", "densenet121"}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in _HEAVY_LIGHT else n for n in LIGHT],
)
def test_light_model_matches_onnxruntime(name, tmp_path):
    built = build_model(f"zoo:{name}", "x86")
    arrays = random_inputs(built.inputs, seed=0)
    ref = run_onnxruntime(built.model, arrays)
    for out in ref.values():
        spread = float(np.std(out)) / float(np.max(np.abs(out)))
        assert spread > 0.05, f"reference output of {name} is nearly uniform ({spread:.2e})"

    lib = tmp_path / "lib.so"
    built.executable.export_library(str(lib))
    vm = LocalVM(lib, "cpu")
    args = [arrays[i.name] for i in built.inputs]
    per_threads = {}
    for threads in (1, 2):  # parallel loops split space, never a sum: the same bits
        set_threads(threads)
        per_threads[threads] = vm.run(args)
    set_threads(default_threads() or 2)
    for one, two in zip(per_threads[1], per_threads[2], strict=True):
        np.testing.assert_array_equal(one, two)
    ours = dict(zip([o.name for o in built.outputs], per_threads[2], strict=True))
    results = compare(ours, ref, atol=ATOL, rtol=RTOL)
    assert all(r.ok for r in results), [r.line() for r in results]
    # The logits agree on the ranking too, not only within tolerance.
    for name_out, r in ref.items():
        assert np.argmax(ours[name_out]) == np.argmax(r)


def test_zoo_randomization_is_seeded():
    a = zoo.light_model("squeezenet", seed=3)
    b = zoo.light_model("squeezenet", seed=3)
    c = zoo.light_model("squeezenet", seed=4)
    assert a.SerializeToString() == b.SerializeToString()
    assert a.SerializeToString() != c.SerializeToString()
    assert not any(n.op_type == "ConstantOfShape" for n in a.graph.node)
    assert a.graph.node[-1].op_type != "Softmax"


# --- zoo:bert-base, generated ------------------------------------------------------------------


def test_bert_base_is_a_zoo_model_with_an_exported_bert_op_mix():
    assert "bert-base" in zoo.names()
    one = zoo.bert_encoder(layers=1)  # bert-base's shapes, one layer of its twelve
    ops = [n.op_type for n in one.graph.node]
    assert ops.count("MatMul") == 8  # Q, K, V, QK^T, probs V, output, FFN in, FFN out
    for op, count in [("Softmax", 1), ("Erf", 1), ("ReduceMean", 4), ("Pow", 2), ("Sqrt", 2)]:
        assert ops.count(op) == count, op
    assert ops.count("Transpose") == 4 and ops.count("Reshape") == 4
    weights = {t.name: t.dims for t in one.graph.initializer}
    assert list(weights["encoder.layer.0.intermediate.dense.weight"]) == [768, 3072]
    (x,) = one.graph.input
    assert [d.dim_value for d in x.type.tensor_type.shape.dim] == [1, 128, 768]
    fused = zoo.bert_encoder(layers=1, hidden=64, heads=4, seq=8, ffn=128, layernorm="fused")
    assert [n.op_type for n in fused.graph.node].count("LayerNormalization") == 2


@pytest.mark.parametrize("layernorm", ["decomposed", "fused"])
def test_small_bert_matches_onnxruntime(layernorm):
    model = zoo.bert_encoder(2, 64, 4, 16, 128, layernorm=layernorm, seed=1)
    built = build_model(model, "x86", threads=2)
    arrays = random_inputs(built.inputs, seed=0)
    ref = run_onnxruntime(built.model, arrays)
    import tvm
    from tvm import relax

    out = relax.VirtualMachine(built.executable, tvm.cpu())["main"](
        tvm.runtime.tensor(arrays["hidden_states"])
    )
    ours = {built.outputs[0].name: (out if hasattr(out, "numpy") else out[0]).numpy()}
    results = compare(ours, ref, atol=ATOL, rtol=RTOL)
    assert all(r.ok for r in results), [r.line() for r in results]
    (want,) = ref.values()
    assert float(np.std(want)) > 0.5  # LayerNorm output: not degenerate


# --- the public benchmark set: real models from PyPI wheels, scikit-learn models -------------


def test_benchmark_set_is_wide():
    """At least 15 models of at least 6 families, every one a real trained model (a wheel's
    file or a scikit-learn model trained here), every name resolvable."""
    assert len(zoo.BENCHMARK_SET) >= 15
    rows = [zoo.describe(n) for n in zoo.BENCHMARK_SET]
    assert len({r["family"] for r in rows}) >= 6, sorted({r["family"] for r in rows})
    for name in zoo.BENCHMARK_SET:
        assert name in zoo.WHEEL_MODELS or name.startswith("digits-"), name
    for entry in zoo.WHEEL_MODELS.values():  # pinned, so the set cannot drift under us
        assert entry.requirement.count("==") == 1 and entry.member.endswith(".onnx")
    assert set(zoo.names()) >= set(zoo.BENCHMARK_SET)
    with pytest.raises(KeyError):
        zoo.describe("no-such-model")


def test_wheel_model_fixes_shapes_and_freezes_inputs_at_compile():
    """silero-vad's sample-rate input stays an input of the zoo model (a reference runtime
    feeds it) and is frozen by the compile (its If then folds away); its audio and state
    inputs get the entry's static shapes; a --freeze of the caller's own wins."""
    from tvmforge import build_model
    from tvmforge.frontend import importer

    proto = zoo.load("silero-vad")
    inputs = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in proto.graph.input
    }
    assert inputs == {"input": [1, 512], "state": [2, 1, 128], "sr": []}
    model = importer.load("zoo:silero-vad")
    assert model.frozen_defaults == {"sr": [16000.0]}
    built = build_model(model, "x86")
    assert [i.name for i in built.inputs] == ["input", "state"]
    assert built.frozen == {"sr": [16000.0]}
    assert built.model.frozen["sr"].tolist() == 16000  # the reference runtime is fed this
    assert [v.name for v in built.model.given_proto.graph.input][-1] == "sr"
    own = build_model(
        model, "x86", frozen_inputs={"sr": [8000.0]}, input_shapes={"input": (1, 256)}
    )
    assert own.frozen == {"sr": [8000.0]} and own.inputs[0].shape == (1, 256)
    # 8 kHz with the 16 kHz chunk: the model cannot run it (ONNX Runtime fails at run time)
    with pytest.raises(InputError, match=r"LSTM node .* input X has shape \[1, 1, 1, 128, 2\]"):
        build_model(model, "x86", frozen_inputs={"sr": [8000.0]})


def test_bench_of_a_frozen_model_feeds_the_reference_the_frozen_value():
    """ONNX Runtime runs silero-vad as given, with sr fed (it crashed inlining the If of a
    model whose sr was made a constant)."""
    from tvmforge.bench.benchmark import bench

    res = bench("zoo:silero-vad", "x86", threads=1, repeat=2, warmup=1, adapt=False,
                use_shipped_logs=False)
    assert res.outputs_match and res.max_rel_err < 1e-4


@pytest.mark.parametrize("kind", ["forest", "mlp"])
def test_digits_classic_models_are_trained_and_cached(kind, tmp_path, monkeypatch):
    pytest.importorskip("sklearn", reason="scikit-learn is a test extra")
    monkeypatch.setenv("TVMFORGE_CACHE", str(tmp_path))
    proto = zoo.load(f"digits-{kind}")
    assert list((tmp_path / "generated").glob(f"digits-{kind}-*.onnx"))
    again = zoo.load(f"digits-{kind}")  # from the cache, the same bytes
    assert again.SerializeToString() == proto.SerializeToString()
    ops = {n.op_type for n in proto.graph.node}
    assert ("TreeEnsembleClassifier" in ops) if kind == "forest" else ({"MatMul", "Relu"} <= ops)
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    labels = [int(sess.run(None, {name: x[i : i + 1].astype(np.float32)})[0][0]) for i in
              range(0, len(x), 25)]
    accuracy = np.mean(np.asarray(labels) == y[::25])
    assert accuracy > 0.9  # trained, not random: the training set's digits come out right


@pytest.mark.parametrize("name", ["digits-forest", "digits-mlp"])
def test_digits_classic_models_match_onnxruntime(name, tmp_path):
    pytest.importorskip("sklearn", reason="scikit-learn is a test extra")
    from sklearn.datasets import load_digits

    from tvmforge.runtime.executor import LocalVM

    built = build_model(f"zoo:{name}", "x86")
    x = load_digits().data[:1].astype(np.float32)
    lib = tmp_path / "lib.so"
    built.executable.export_library(str(lib))
    outs = LocalVM(lib, "cpu").run([x])
    ours = dict(zip([o.name for o in built.outputs], outs, strict=True))
    ref = run_onnxruntime(built.model, {built.inputs[0].name: x})
    results = compare(ours, ref, atol=ATOL, rtol=RTOL)
    assert all(r.ok for r in results), [r.line() for r in results]
