"""Classic ML latency: tvmforge against ONNX Runtime on scikit-learn tree ensembles.

Three models trained on ``sklearn.datasets.load_digits`` (64 features, 10 classes, fixed
seeds) and converted with skl2onnx (``zipmap`` off): a 100-tree ``RandomForestClassifier``, a
100-stage ``GradientBoostingClassifier`` (1000 trees: one per class and stage) and a 100-tree
``RandomForestRegressor`` fitted to the digit value (deep trees, one target). Each is
compiled by tvmforge for ``x86`` once per batch size (1 and 100, static shapes) and run with 1
and 2 worker threads; ONNX Runtime runs the same ONNX file with ``intra_op_num_threads`` 1
and 2. Outputs are checked against ONNX Runtime first (labels equal, probabilities at
``rtol 1e-4``).

Timing: one process; each round times every variant once (the order rotates from round to
round; a variant's time in a round is the best of 3 calls, after a 0.1 s pause so the previous
variant's spinning workers are idle), and the table gives each variant's median over the
rounds and the median of the per-round ratios ORT / tvmforge, so load from other users hits
all variants alike.

Usage::

    python benchmarks/classic_ml.py --repeat 15 --write benchmarks/results/classic_ml.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

SETTLE_S = 0.1
BATCHES = (1, 100)
THREADS = (1, 2)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def train_models():
    """``{name: (onnx model, digits features float32)}``."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        RandomForestClassifier,
        RandomForestRegressor,
    )

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = {
            "random forest (100 trees)": RandomForestClassifier(100, random_state=0).fit(x, y),
            "gradient boosting (100 stages x 10 classes)": GradientBoostingClassifier(
                n_estimators=100, random_state=0
            ).fit(x, y),
        }
        regressors = {
            "random forest regressor (100 trees)": RandomForestRegressor(100, random_state=0).fit(
                x, y.astype(np.float32)
            ),
        }
        out = {
            name: (to_onnx(m, x[:1], options={"zipmap": False}), x) for name, m in models.items()
        }
        out.update({name: (to_onnx(m, x[:1]), x) for name, m in regressors.items()})
        return out


def ort_session(proto_bytes: bytes, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(proto_bytes, opts, providers=["CPUExecutionProvider"])


def best_of(fn, calls: int = 3) -> float:
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(name: str, proto, data: np.ndarray, batch: int, rounds: int, tmp: Path) -> dict:
    import tvmforge
    from tvmforge.runtime.executor import resize_pool

    x = np.ascontiguousarray(data[:batch])
    path = tmp / f"{abs(hash(name))}_{batch}"
    tvmforge.compile_model(proto, "x86", str(path), input_shapes={"X": (batch, x.shape[1])})
    ours = tvmforge.load(str(path), threads=max(THREADS), adapt=False)
    sessions = {t: ort_session(proto.SerializeToString(), t) for t in THREADS}
    # agreement first
    ref = dict(
        zip(
            [o.name for o in sessions[1].get_outputs()],
            sessions[1].run(None, {"X": x}),
            strict=True,
        )
    )
    got = ours(X=x)
    agree = all(
        np.array_equal(np.asarray(got[k]), v)
        if v.dtype.kind in "iu"
        else np.allclose(np.asarray(got[k]), v, rtol=1e-4, atol=1e-5)
        for k, v in ref.items()
    )

    def tvm_run(t):
        def run():
            ours(X=x)

        return lambda: (resize_pool(t), time.sleep(SETTLE_S), best_of(run))[-1]

    def ort_run(t):
        sess = sessions[t]
        return lambda: (time.sleep(SETTLE_S), best_of(lambda: sess.run(None, {"X": x})))[-1]

    vm_call = ours._executor.vm["main"]
    tensors = ours._executor._tensors([x])

    def vm_run():  # the compiled model alone: no numpy conversion or input checks
        return (resize_pool(1), time.sleep(SETTLE_S), best_of(lambda: vm_call(*tensors)))[-1]

    variants = {f"tvmforge {t}T": tvm_run(t) for t in THREADS}
    variants["tvmforge VM 1T"] = vm_run
    variants.update({f"ORT {t}T": ort_run(t) for t in THREADS})
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            times[n].append(variants[n]())
    ratios = {
        t: statistics.median(
            o / m for o, m in zip(times[f"ORT {t}T"], times[f"tvmforge {t}T"], strict=True)
        )
        for t in THREADS
    }
    ratios["VM"] = statistics.median(
        o / m for o, m in zip(times["ORT 1T"], times["tvmforge VM 1T"], strict=True)
    )
    return {
        "model": name,
        "batch": batch,
        "agree": agree,
        "ms": {n: 1e3 * statistics.median(v) for n, v in times.items()},
        "ratio": ratios,
    }


def table(rows: list[dict]) -> list[str]:
    head = ["model", "batch"]
    head += [f"tvmforge {t}T ms" for t in THREADS] + [f"ORT {t}T ms" for t in THREADS]
    head += [f"ORT / tvmforge ({t}T)" for t in THREADS]
    head += ["tvmforge VM 1T ms", "ORT 1T / VM", "outputs match ORT"]
    out = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 3) + "---|"]
    for r in rows:
        cells = [r["model"], str(r["batch"])]
        cells += [f"{r['ms'][f'tvmforge {t}T']:.3f}" for t in THREADS]
        cells += [f"{r['ms'][f'ORT {t}T']:.3f}" for t in THREADS]
        cells += [f"{r['ratio'][t]:.2f}x" for t in THREADS]
        cells += [f"{r['ms']['tvmforge VM 1T']:.3f}", f"{r['ratio']['VM']:.2f}x"]
        cells.append("yes" if r["agree"] else "NO")
        out.append("| " + " | ".join(cells) + " |")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15, help="rounds (default 15)")
    parser.add_argument("--write", type=Path, default=None, help="write the markdown here")
    parser.add_argument("--note", default="", help="a line to add under the table")
    args = parser.parse_args(argv)

    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    load0 = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (proto, data) in train_models().items():
            for batch in BATCHES:
                row = measure(name, proto, data, batch, args.repeat, Path(tmp))
                rows.append(row)
                print(table([row])[-1], flush=True)
    load1 = os.getloadavg()[0]
    command = "python benchmarks/classic_ml.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    lines = [
        "# Classic ML: scikit-learn tree ensembles, tvmforge vs ONNX Runtime",
        "",
        f"Date: {started}. CPU: {cpu_model()} ({os.cpu_count()} logical CPUs visible); "
        f"load average {load0:.1f} at the start, {load1:.1f} at the end.",
        f"Command: `{command.strip()}`",
        "",
        "Models: `load_digits` (64 features, 10 classes), skl2onnx with `zipmap` off: "
        "`RandomForestClassifier(100, random_state=0)`, "
        "`GradientBoostingClassifier(n_estimators=100, random_state=0)` and "
        "`RandomForestRegressor(100, random_state=0)` on the digit value; tvmforge compiled for "
        "`x86` at each batch size. Times are medians over rounds that interleave the variants "
        "(best of 3 calls each); the ratio column is the median of per-round ORT / tvmforge "
        "(above 1: tvmforge is faster). `tvmforge VM 1T` times the compiled model's Relax VM "
        "call alone on ready TVM tensors (what `tvmforge.load(...)(X=x)` adds around it: input "
        "checks, numpy to TVM tensor and back), against the same full ORT 1T call.",
        "",
        *table(rows),
        "",
    ]
    if args.note:
        lines += [args.note, ""]
    text = "\n".join(lines)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
    print(text)
    return 0 if all(r["agree"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
