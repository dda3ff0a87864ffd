"""The blocked conv layout and Winograd, end to end: MODEL built as ``tvmforge compile`` builds
it (convs in ``NCHW16c``, ``nchwc_layout``, 3x3 convs as Winograd where its cost model picks
it), with every conv direct (``nchwc_layout(winograd=False)`` among the graph passes) and
with NCHW activations (``pack_conv_weights`` among the graph passes, as before
``nchwc_layout``), timed interleaved with ONNX Runtime.

Usage: ``python benchmarks/layout_ab.py MODEL... [--rounds N] [--no-tune]`` (2 threads).
Prints, per model, each build's median and its ratio to ONNX Runtime's median in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tvmforge import build_model, load
from tvmforge.bench import reference
from tvmforge.driver.build import export
from tvmforge.frontend import importer as frontend
from tvmforge.passes.graph.nchwc_layout import nchwc_layout
from tvmforge.passes.graph.pack_conv_weights import pack_conv_weights
from tvmforge.runtime import executor as runtime

ROUND = 5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--no-tune", action="store_true", help="apply no tuning records")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    for name in args.models:
        kw = dict(threads=2, use_shipped_logs=not args.no_tune)
        builds = {
            "nchw": build_model(name, "x86", graph_passes=[pack_conv_weights()], **kw),
            "direct": build_model(name, "x86", graph_passes=[nchwc_layout(winograd=False)], **kw),
            "winograd": build_model(name, "x86", **kw),
        }
        models = {k: load(export(b, tmp / f"{k}.tar"), threads=2) for k, b in builds.items()}
        arrays = runtime.random_inputs(models["winograd"].inputs, 0)
        sess = reference.session(frontend.load(name), 2)
        feed = {i.name: arrays[i.name] for i in sess.get_inputs()}
        times: dict[str, list[float]] = {k: [] for k in [*models, "onnxruntime"]}
        for _ in range(args.rounds):
            for key, model in models.items():
                model.time(arrays, 2)
                times[key].extend(model.time(arrays, ROUND))
            for _ in range(2):
                sess.run(None, feed)
            for _ in range(ROUND):
                t0 = time.perf_counter()
                sess.run(None, feed)
                times["onnxruntime"].append(time.perf_counter() - t0)
        ort = statistics.median(times["onnxruntime"])
        cells = [
            f"{k} {statistics.median(v) * 1e3:.2f} ms ({statistics.median(v) / ort:.2f}x)"
            for k, v in times.items()
        ]
        print(f"{name}: " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
