"""Shipped tuning logs, end to end: MODEL built with and without them, interleaved A/B.

Usage: ``python benchmarks/tuned_ab.py MODEL [ROUNDS]`` (2 threads; prints both medians and
the tuned/untuned ratio).
"""

import statistics
import sys
import tempfile
from pathlib import Path

from tvmforge import build_model, load, runtime
from tvmforge.build import export

name = sys.argv[1]
tmp = Path(tempfile.mkdtemp())
vms = {}
for tag, kw in (("untuned", dict(tuning_logs=[], use_shipped_logs=False)), ("tuned", {})):
    b = build_model(name, "x86", threads=2, **kw)
    vms[tag] = load(export(b, tmp / f"{tag}.tar"), threads=2)
arrays = runtime.random_inputs(vms["untuned"].inputs, 0)
for v in vms.values():
    v.run(arrays)
    v.run(arrays)
t = {k: [] for k in vms}
for r in range(int(sys.argv[2]) if len(sys.argv) > 2 else 20):
    for k in ("untuned", "tuned") if r % 2 == 0 else ("tuned", "untuned"):
        t[k].append(min(vms[k].time(arrays, 3)))
u, tu = statistics.median(t["untuned"]), statistics.median(t["tuned"])
print(f"{name}: untuned {u * 1e3:.2f} ms, tuned {tu * 1e3:.2f} ms, tuned/untuned {tu / u:.3f}")
