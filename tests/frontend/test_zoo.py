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


@pytest.mark.parametrize("name", LIGHT)
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
