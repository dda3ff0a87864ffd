"""Shipped tuning logs, end to end: MODEL built with and without them, interleaved A/B.

Usage: ``python benchmarks/tuned_ab.py MODEL [ROUNDS] [--logs DIR]`` (2 threads; prints the
medians and the tuned/untuned ratio). ``--logs DIR`` adds a third build with DIR's records
instead of the shipped ones (a candidate database, e.g. one distilled by
``ship_tuning_logs.py`` before it is shipped).
"""

import statistics
import sys
import tempfile
from pathlib import Path

from tvmforge import build_model, load
from tvmforge.driver.build import export
from tvmforge.runtime import executor as runtime

args = [a for a in sys.argv[1:]]
logs = None
if "--logs" in args:
    i = args.index("--logs")
    logs = Path(args[i + 1])
    del args[i : i + 2]
name = args[0]
rounds = int(args[1]) if len(args) > 1 else 20
tmp = Path(tempfile.mkdtemp())
vms = {}
variants = [("untuned", dict(tuning_logs=[], use_shipped_logs=False)), ("tuned", {})]
if logs is not None:
    variants.append(("candidate", dict(tuning_logs=[logs], use_shipped_logs=False)))
for tag, kw in variants:
    b = build_model(name, "x86", threads=2, **kw)
    vms[tag] = load(export(b, tmp / f"{tag}.tar"), threads=2)
arrays = runtime.random_inputs(vms["untuned"].inputs, 0)
for v in vms.values():
    v.run(arrays)
    v.run(arrays)
t = {k: [] for k in vms}
order = list(vms)
for r in range(rounds):
    for k in order if r % 2 == 0 else order[::-1]:
        t[k].append(min(vms[k].time(arrays, 3)))
u, tu = statistics.median(t["untuned"]), statistics.median(t["tuned"])
line = f"{name}: untuned {u * 1e3:.2f} ms, tuned {tu * 1e3:.2f} ms, tuned/untuned {tu / u:.3f}"
if logs is not None:
    c = statistics.median(t["candidate"])
    line += f", candidate {c * 1e3:.2f} ms, candidate/untuned {c / u:.3f}"
print(line)
