"""Every ONNX-zoo "light" model in the onnx wheel compiles for x86 and matches ONNX Runtime.

The shipped weights are one constant per tensor, so every logit is equal and a wrong kernel
would still match; the models are given seeded random weights (``tvmforge.zoo``) and compared
as logits, and each test asserts first that the reference output is far from uniform.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tvmforge import build_model, zoo
from tvmforge.reference import compare, run_onnxruntime
from tvmforge.runtime import LocalVM, random_inputs

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
    outs = LocalVM(lib, "cpu").run([arrays[i.name] for i in built.inputs])
    ours = dict(zip([o.name for o in built.outputs], outs, strict=True))
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
