"""Does a pre-trained cost model transfer? Tuning curves of held-out models, from scratch
(``--cost-model xgb-fresh``) against pre-trained (``xgb`` with a ``cost_model.tar`` trained on
other models' records), same seeds, same budget.

Usage::

    python benchmarks/transfer_curves.py --train DB_DIR [DB_DIR ...] --models zoo:a zoo:b ...
        [--trials 256] [--seeds 0] [--threads 2] [--name transfer_curves]

``DB_DIR``: databases of earlier tunes (every measured candidate; ``tvmforge tune`` writes
them) for the same tuning key, none of them of the held-out models. The curve is ``tune``'s own:
the estimated model latency (each kernel's best time so far times its calls, summed) after each
measured batch. Writes ``benchmarks/results/NAME.md`` (table: the estimate at fixed trial
counts, and the trials the pre-trained model needs to reach the fresh model's final estimate)
and ``NAME.png`` (the curves).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _at(curve: list[tuple[int, float | None]], trials: int) -> float | None:
    """The estimate after ``trials`` measured candidates (the last batch at or before it)."""
    best = None
    for n, est in curve:
        if n <= trials and est is not None:
            best = est
    return best


def _reach(curve: list[tuple[int, float | None]], ratio: float) -> int | None:
    """Trials after which ``curve`` is at ``ratio`` of its own start or below."""
    start = next((e for _n, e in curve if e is not None), None)
    for n, est in curve:
        if start and est is not None and est <= start * ratio * 1.0001:
            return n
    return None


def _gain(curve: list[tuple[int, float | None]]) -> float | None:
    """The final estimate over the run's own untuned one (the defaults, timed in that run)."""
    vals = [e for _n, e in curve if e is not None]
    return vals[-1] / vals[0] if vals else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", nargs="+", type=Path, required=True)
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--trials", type=int, default=256)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="transfer_curves")
    args = parser.parse_args()

    from tvmforge.targets import resolve
    from tvmforge.targets.features import detect_host
    from tvmforge.tuning import transfer
    from tvmforge.tuning import tune as tuning

    target = resolve("x86", threads=args.threads)
    work = Path(tempfile.mkdtemp(prefix="tvmforge-transfer-"))
    model_tar = work / "pretrained" / transfer.MODEL_FILE
    info = transfer.train(args.train, target.tvm_target(), model_tar,
                          say=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"pre-trained on {info['records']} records of {info['workloads']} kernels "
          f"in {info['seconds']} s", flush=True)

    rows, curves = [], {}
    for spec in args.models:
        for seed in args.seeds:
            for kind in ("xgb-fresh", "xgb"):
                run_dir = work / f"{spec.replace(':', '_')}-{seed}-{kind}"
                db = run_dir / target.tuning_key
                if kind == "xgb":
                    db.mkdir(parents=True)
                    shutil.copy(model_tar, db / transfer.MODEL_FILE)
                    shutil.copy(model_tar.with_name(transfer.INFO_FILE), db)
                t0 = time.perf_counter()
                res = tuning.tune(spec, target, trials=args.trials, work_dir=run_dir,
                                  cost_model=kind, seed=seed, threads=args.threads,
                                  echo=lambda m: print(f"  {m}", flush=True))
                curves[(spec, seed, kind)] = res.curve
                print(f"{spec} seed {seed} {kind}: {res.trials} trials in "
                      f"{time.perf_counter() - t0:.0f} s, estimate "
                      f"{(res.curve[-1][1] or 0) * 1e3:.3f} ms", flush=True)
            fresh = curves[(spec, seed, "xgb-fresh")]
            pre = curves[(spec, seed, "xgb")]
            fresh_gain = _gain(fresh)
            marks = [0, args.trials // 8, args.trials // 4, args.trials // 2, args.trials]
            rows.append((spec, seed, marks, [_at(fresh, m) for m in marks],
                         [_at(pre, m) for m in marks], fresh_gain, _gain(pre),
                         _reach(pre, fresh_gain) if fresh_gain else None))

    host = detect_host()
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {host.model_name} ({host.arch}, "
        f"{platform.machine()}, tuning key {target.tuning_key}), {args.threads} threads.",
        f"Command: `python benchmarks/transfer_curves.py --train {' '.join(map(str, args.train))}"
        f" --models {' '.join(args.models)} --trials {args.trials} --seeds "
        f"{' '.join(map(str, args.seeds))} --threads {args.threads} --name {args.name}`",
        f"Pre-trained cost model: {info['records']} records of {info['workloads']} kernels "
        "(none of the held-out models'). Estimate: tune's own (each kernel's best time x calls, "
        "summed), ms.",
        "",
        "Each run times the untuned kernels itself, and on a busy 2-core machine those start "
        "values differ between runs by several per cent: compare each run's final estimate with "
        "its own start (**final/start**); **reaches** is the trial count after which the "
        "pre-trained run is as far below its start as the from-scratch run got in the budget.",
        "",
        "| model | seed | cost model | " + " | ".join(f"{m} trials" for m in rows[0][2])
        + " | final/start | reaches |",
        "|---|---:|---|" + "---:|" * (len(rows[0][2]) + 2),
    ]
    for spec, seed, _marks, fresh, pre, fresh_gain, pre_gain, reach in rows:
        fmt = lambda vals: " | ".join(f"{v * 1e3:.3f}" if v else "-" for v in vals)  # noqa: E731
        lines.append(f"| {spec} | {seed} | xgb-fresh | {fmt(fresh)} | {fresh_gain:.3f} | |")
        lines.append(f"| {spec} | {seed} | xgb (pre-trained) | {fmt(pre)} | {pre_gain:.3f} | "
                     f"{reach if reach is not None else 'not within the budget'} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    import json

    (RESULTS / f"{args.name}.json").write_text(json.dumps(
        [{"model": s, "seed": seed, "cost_model": kind, "curve": curve}
         for (s, seed, kind), curve in curves.items()], indent=1) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.models), figsize=(5 * len(args.models), 3.6),
                             squeeze=False)
    for ax, spec in zip(axes[0], args.models, strict=True):
        for (s, seed, kind), curve in curves.items():
            if s != spec:
                continue
            pts = [(n, e * 1e3) for n, e in curve if e is not None]
            ax.step([p[0] for p in pts], [p[1] for p in pts], where="post",
                    label=f"{'pre-trained' if kind == 'xgb' else 'from scratch'} (seed {seed})",
                    linestyle="-" if kind == "xgb" else "--")
        ax.set_title(spec)
        ax.set_xlabel("trials")
        ax.set_ylabel("estimated latency (ms)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.name}.png", dpi=110)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
