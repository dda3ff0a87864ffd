"""build_model with transforms combined: prune first, then quantize (the issue's order)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from tvmforge.driver.build import build_model

DIGITS = Path(__file__).resolve().parents[2] / "benchmarks" / "digits"


def _split():
    spec = importlib.util.spec_from_file_location("digits_train", DIGITS / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.split()


def _top1(built, x_test, y_test) -> float:
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    shape = tuple(int(d) for d in built.inputs[0].shape)
    hits = sum(
        int(np.argmax(vm["main"](tvm.runtime.tensor(x.reshape(shape))).numpy()) == y)
        for x, y in zip(x_test, y_test, strict=True)
    )
    return 100.0 * hits / len(y_test)


def test_prune_then_quantize_keeps_digits_accuracy():
    data = _split()
    calib = {"x": data["x_calib"].reshape(len(data["x_calib"]), 1, 64)}
    path = DIGITS / "digits_mlp.onnx"
    base = _top1(build_model(path, "x86"), data["x_test"], data["y_test"])
    both = build_model(path, "x86", prune=0.3, quantize="int8", calibration=calib)
    assert both.pruning["flops_after"] < 0.8 * both.pruning["flops_before"]
    layers = both.quantization["report"]["layers"]
    assert layers and all(layer["kernel"] != "float" for layer in layers)
    assert _top1(both, data["x_test"], data["y_test"]) >= base - 1.5
