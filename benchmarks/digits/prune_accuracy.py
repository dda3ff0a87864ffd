"""Top-1 accuracy of the digits models vs prune ratio, with and without the calibration refit.

Usage: ``python benchmarks/digits/prune_accuracy.py`` (the ratio is a fraction of conv/dense
FLOPs; channel counts stay multiples of the vector width, so the FLOPs actually removed are
reported beside each ratio).
"""

from __future__ import annotations

import sys
import time

from accuracy import HERE, _train_module, accuracy


def main() -> int:
    from tvmforge.build import build_model

    data = _train_module().split()
    print(f"Measured {time.strftime('%Y-%m-%d')}; `python benchmarks/digits/prune_accuracy.py`; "
          f"held-out split: {len(data['y_test'])} images; calibration: 200 training images.\n")
    print("| model | ratio asked | FLOPs removed | top-1 no correction | top-1 with refit |")
    print("|---|---:|---:|---:|---:|")
    for name, shape in (("digits_mlp.onnx", (1, 64)), ("digits_cnn.onnx", (1, 1, 8, 8))):
        path = HERE / name
        calib = {"x": data["x_calib"].reshape(len(data["x_calib"]), *shape)}
        base = accuracy(build_model(path, "x86"), data["x_test"], data["y_test"])
        print(f"| {name} | 0 (float) | 0 % | {base:.2f} | {base:.2f} |")
        for ratio in (0.1, 0.2, 0.3, 0.4, 0.5):
            plain = build_model(path, "x86", prune=ratio)
            refit = build_model(path, "x86", prune=ratio, calibration=calib)
            rep = plain.pruning
            removed = 1 - rep["flops_after"] / rep["flops_before"]
            print(f"| {name} | {ratio:.1f} | {100 * removed:.0f} % "
                  f"| {accuracy(plain, data['x_test'], data['y_test']):.2f} "
                  f"| {accuracy(refit, data['x_test'], data['y_test']):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
