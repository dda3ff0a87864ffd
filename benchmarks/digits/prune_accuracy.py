"""Top-1 accuracy of the digits models vs prune ratio: l1 importance with and without the
calibration refit, and taylor importance (which scores channels on the calibration data, and
is refit on it too).

Usage: ``python benchmarks/digits/prune_accuracy.py`` (the ratio is a fraction of conv/dense
FLOPs; channel counts stay multiples of the alignment, so the FLOPs actually removed are
reported beside each ratio; for taylor too where they differ).
"""

from __future__ import annotations

import sys
import time

from accuracy import HERE, _train_module, accuracy


def main() -> int:
    from tvmforge.driver.build import build_model

    data = _train_module().split()
    print(
        f"Measured {time.strftime('%Y-%m-%d')}; `python benchmarks/digits/prune_accuracy.py`; "
        f"held-out split: {len(data['y_test'])} images; calibration: 200 training images.\n"
    )
    print(
        "| model | ratio asked | FLOPs removed | l1, no correction | l1 + refit | taylor + refit |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, shape in (("digits_mlp.onnx", (1, 64)), ("digits_cnn.onnx", (1, 1, 8, 8))):
        path = HERE / name
        calib = {"x": data["x_calib"].reshape(len(data["x_calib"]), *shape)}
        base = accuracy(build_model(path, "x86"), data["x_test"], data["y_test"])
        print(f"| {name} | 0 (float) | 0 % | {base:.2f} | {base:.2f} | {base:.2f} |")
        for ratio in (0.1, 0.2, 0.3, 0.4, 0.5):
            plain = build_model(path, "x86", prune=ratio)
            refit = build_model(path, "x86", prune=ratio, calibration=calib)
            taylor = build_model(path, "x86", prune=ratio, prune_method="taylor", calibration=calib)
            removed = plain.pruning["flops_removed"]
            t_removed = taylor.pruning["flops_removed"]
            t_note = (
                f" ({100 * t_removed:.0f} % removed)"
                if round(100 * t_removed) != round(100 * removed)
                else ""
            )
            print(
                f"| {name} | {ratio:.1f} | {100 * removed:.0f} % "
                f"| {accuracy(plain, data['x_test'], data['y_test']):.2f} "
                f"| {accuracy(refit, data['x_test'], data['y_test']):.2f} "
                f"| {accuracy(taylor, data['x_test'], data['y_test']):.2f}{t_note} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
