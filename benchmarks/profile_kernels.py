"""Per-kernel times inside a real run, next to ONNX Runtime's per-node times grouped by op and
shapes: a thin wrapper over ``tvmforge.bench.profile`` (what ``tvmforge profile`` runs), kept
for the grouping by shapes, which matches a conv of ours with ONNX Runtime's conv of the same
shapes.

Usage::

    python benchmarks/profile_kernels.py MODEL [--no-tune] [--threads 2] [--runs 20] [--top 30]
        [--ort]

``MODEL`` is an ONNX file or ``zoo:NAME``. Times are medians over ``--runs`` runs, summed over
a kernel's calls in one run. ``tvmforge profile MODEL`` gives the same kernel times with the
ONNX nodes of each kernel and ONNX Runtime's totals by op type.
"""

from __future__ import annotations

import argparse
import collections
import sys


def tvmforge_profile(spec: str, threads: int, runs: int, use_logs: bool) -> tuple[float, dict]:
    """``(median run ms, {kernel: (ms per run, calls per run)})``."""
    from tvmforge.bench.profile import profile

    res = profile(spec, "x86", threads=threads, runs=runs, ort=False, use_shipped_logs=use_logs)
    return res.run_ms, {row.kernel: (row.ms, row.calls) for row in res.rows}


def ort_profile(spec: str, threads: int, runs: int) -> tuple[float, dict]:
    """``(sum of node medians ms, {(op, input shapes, output shape): (ms per run, nodes)})``."""
    from tvmforge.bench import profile as profiling
    from tvmforge.frontend import importer as frontend
    from tvmforge.runtime.executor import random_inputs

    model = frontend.load(spec)
    arrays = random_inputs(frontend.resolve_inputs(model, {}, dynamic_batch=True), 0)
    res = profiling.ort_profile(model, arrays, threads, runs)
    groups: dict[tuple, list] = collections.defaultdict(lambda: [0.0, 0])
    for node in res["nodes"]:
        key = (node["op"], str(node["inputs"][:2]), str(node["output"][:1]))
        groups[key][0] += node["ms"]
        groups[key][1] += 1
    return res["nodes_ms"], {k: tuple(v) for k, v in groups.items()}


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
