"""Top-1 accuracy of the digits models, float vs int8 per calibration method (README table).

Usage: ``python benchmarks/digits/accuracy.py`` (uses the committed ONNX files and the fixed
split of ``train.py``; calibration data: the calibration split, 200 training images).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _train_module():
    spec = importlib.util.spec_from_file_location("digits_train", HERE / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def accuracy(built, x_test, y_test) -> float:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    shape = tuple(int(d) for d in built.inputs[0].shape)
    hits = sum(
        int(np.argmax(vm["main"](tvm.runtime.tensor(x.reshape(shape))).numpy()) == y)
        for x, y in zip(x_test, y_test, strict=True)
    )
    return 100.0 * hits / len(y_test)


def main() -> int:
    from tvmforge.driver.build import build_model

    data = _train_module().split()
    rows = []
    for name, shape in (("digits_mlp.onnx", (1, 64)), ("digits_cnn.onnx", (1, 1, 8, 8))):
        path = HERE / name
        calib = {"x": data["x_calib"].reshape(len(data["x_calib"]), *shape)}
        row = {"model": name, "float": accuracy(build_model(path, "x86"), data["x_test"],
                                                data["y_test"])}
        for method in ("minmax", "percentile", "entropy"):
            q = build_model(path, "x86", quantize="int8", calibration=calib,
                            calibration_method=method)
            row[method] = accuracy(q, data["x_test"], data["y_test"])
        rows.append(row)
    print(f"Measured {time.strftime('%Y-%m-%d')}; `python benchmarks/digits/accuracy.py`; "
          f"held-out split: {len(data['y_test'])} images.\n")
    print("| model | float top-1 | int8 minmax | int8 percentile | int8 entropy |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['float']:.2f} | {r['minmax']:.2f} | {r['percentile']:.2f} "
              f"| {r['entropy']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
