"""Where a compiled model spends its time: per-kernel times inside a real run, next to ONNX
Runtime's per-node times on the same model.

Each kernel is timed in place, in the Relax VM running the whole model (an instrument around
every call), so caches hold what they hold in a real inference: a kernel timed alone with
its inputs hot in cache can look twice as fast as it runs in the model (a 3 MB conv output
written from a cold cache, weights streamed from memory). ONNX Runtime's own profiler gives
its per-node times; they are grouped by op and shapes, so a conv of ours can be matched with
ONNX Runtime's conv of the same shapes.

Usage::

    python benchmarks/profile_kernels.py MODEL [--no-tune] [--threads 2] [--runs 20] [--top 30]
        [--ort]

``MODEL`` is an ONNX file or ``zoo:NAME``. Times are medians over ``--runs`` runs, summed over
a kernel's calls in one run.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def tvmforge_profile(spec: str, threads: int, runs: int, use_logs: bool) -> tuple[float, dict]:
    """``(median run ms, {kernel: (ms per run, calls per run)})``."""
    from tvmforge.driver import build
    from tvmforge.runtime import executor as runtime

    built = build.build_model(spec, "x86", threads=threads, use_shipped_logs=use_logs)
    with tempfile.TemporaryDirectory() as tmp:
        compiled = runtime.load(build.export(built, Path(tmp) / "m.tar"), threads=threads)
        local = next(v for v in vars(compiled).values() if hasattr(v, "vm"))
        arrays = runtime.random_inputs(compiled.inputs, 0)
        tensors = local._tensors([arrays[i.name] for i in compiled.inputs])
        vm = local.vm
        for _ in range(3):
            vm["main"](*tensors)
        whole = []
        for _ in range(runs):
            t0 = time.perf_counter()
            vm["main"](*tensors)
            whole.append(time.perf_counter() - t0)
        calls: dict[str, list[float]] = collections.defaultdict(list)
        started = {}

        def instrument(func, name, before, ret, *args):
            now = time.perf_counter()
            if before:
                started["t"] = now
            else:
                calls[name].append(now - started["t"])
            return 0

        vm.set_instrument(instrument)
        for _ in range(runs):
            vm["main"](*tensors)
        vm.set_instrument(lambda *a: 0)
    per_kernel = {}
    for name, times in calls.items():
        n = len(times) // runs
        per_run = [sum(times[i * n : (i + 1) * n]) for i in range(runs)]
        per_kernel[name] = (statistics.median(per_run) * 1e3, n)
    return statistics.median(whole) * 1e3, per_kernel


def ort_profile(spec: str, threads: int, runs: int) -> tuple[float, dict]:
    """``(sum of node medians ms, {(op, input shapes, output shape): (ms per run, nodes)})``."""
    import numpy as np
    import onnxruntime as ort

    from tvmforge.frontend import importer as frontend
    from tvmforge.frontend import zoo

    model = frontend.load(zoo.load(spec[4:]) if spec.startswith("zoo:") else spec)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(
            model.proto.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        rng = np.random.default_rng(0)
        feed = {}
        for i in sess.get_inputs():
            shape = [d if isinstance(d, int) else 1 for d in i.shape]
            dtype = np.float32 if "float" in i.type else np.int64
            feed[i.name] = rng.random(shape).astype(dtype)
        for _ in range(runs + 3):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    durations: dict[str, list[float]] = collections.defaultdict(list)
    keys = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            durations[node].append(e["dur"] / 1e3)
            args = e["args"]
            shapes = [list(d.values())[0] for d in args.get("input_type_shape", [])][:2]
            out = [list(d.values())[0] for d in args.get("output_type_shape", [])][:1]
            keys[node] = (args.get("op_name", "?"), str(shapes), str(out))
    groups: dict[tuple, list] = collections.defaultdict(lambda: [0.0, 0])
    for node, times in durations.items():
        groups[keys[node]][0] += statistics.median(times[3:] or times)
        groups[keys[node]][1] += 1
    return sum(g[0] for g in groups.values()), {k: tuple(v) for k, v in groups.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--no-tune", action="store_true", help="apply no tuning records")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--ort", action="store_true", help="also ONNX Runtime's per-node times")
    args = ap.parse_args(argv)
    run_ms, kernels = tvmforge_profile(args.model, args.threads, args.runs, not args.no_tune)
    total = sum(ms for ms, _ in kernels.values())
    print(f"tvmforge {args.model}: run {run_ms:.2f} ms, its calls {total:.2f} ms "
          f"({args.threads} threads, median of {args.runs})")
    for name, (ms, n) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"  {ms:8.3f} ms  x{n:<3d} {name}")
    if args.ort:
        ort_total, nodes = ort_profile(args.model, args.threads, args.runs)
        print(f"onnxruntime {args.model}: nodes {ort_total:.2f} ms")
        for (op, ins, out), (ms, n) in sorted(nodes.items(), key=lambda kv: -kv[1][0])[
            : args.top
        ]:
            print(f"  {ms:8.3f} ms  x{n:<3d} {op:12s} in {ins} out {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
