"""Speed-up of a transform (pruning, int8) over the plain tvmforge build of the same model.

Both builds run in one process on the same input and thread count, interleaved round by round
(A then B, B then A, ...), so machine noise hits both alike; the figure reported is the median
of the per-round ratios A/B, with its interquartile range, and min/min.

Usage::

    python benchmarks/speedup.py zoo:resnet50 --prune 0.5
    python benchmarks/speedup.py zoo:resnet50 --quantize int8 --calibration random
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--target", default="x86")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--prune", type=float, default=None)
    ap.add_argument("--prune-method", default="l1")
    ap.add_argument("--quantize", default=None)
    ap.add_argument("--calibration", default=None)
    ap.add_argument("--calibration-method", default="minmax")
    args = ap.parse_args(argv)

    from tvmforge.driver.build import build_model
    from tvmforge.runtime.executor import random_inputs, set_threads

    set_threads(args.threads)
    variant = {
        k: v
        for k, v in {
            "prune": args.prune,
            "prune_method": args.prune_method,
            "quantize": args.quantize,
            "calibration": args.calibration,
            "calibration_method": args.calibration_method,
        }.items()
        if v is not None
    }
    base = build_model(args.model, args.target, threads=args.threads)
    other = build_model(args.model, args.target, threads=args.threads, **variant)
    import tvm
    from tvm import relax

    arrays = random_inputs(base.inputs, seed=0)
    args_in = [tvm.runtime.tensor(arrays[i.name]) for i in base.inputs]
    vms = [relax.VirtualMachine(b.executable, tvm.cpu()) for b in (base, other)]
    for vm in vms:
        for _ in range(3):
            vm["main"](*args_in)

    def best_of(vm, n: int = 3) -> float:
        best = float("inf")
        for _ in range(n):
            t0 = time.perf_counter()
            vm["main"](*args_in)
            best = min(best, time.perf_counter() - t0)
        return best

    times_a, times_b, ratios = [], [], []
    load_start = os.getloadavg()[0]
    for r in range(args.rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        got = {i: best_of(vms[i]) for i in order}
        times_a.append(got[0])
        times_b.append(got[1])
        ratios.append(got[0] / got[1])
    q = statistics.quantiles(ratios, n=4)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "loadavg_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)],  # start, end
        "model": args.model,
        "variant": variant,
        "threads": args.threads,
        "rounds": args.rounds,
        "plain_ms_median": round(statistics.median(times_a) * 1e3, 2),
        "variant_ms_median": round(statistics.median(times_b) * 1e3, 2),
        "speedup_median": round(statistics.median(ratios), 2),
        "speedup_iqr": [round(q[0], 2), round(q[2], 2)],
        "speedup_min_over_min": round(min(times_a) / min(times_b), 2),
        "pruning": getattr(other, "pruning", None) and {
            k: other.pruning[k] for k in ("flops_before", "flops_after", "params_before",
                                          "params_after") if k in other.pruning
        },
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
