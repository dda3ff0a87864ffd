"""Benchmark tvmforge against ONNX Runtime over a model set and write the README tables.

Usage::

    python benchmarks/run.py --set light --threads 2 --repeat 10 --out benchmarks/results
    python benchmarks/run.py --models zoo:resnet50 zoo:squeezenet --no-tune

Each model is compiled by tvmforge (compile time recorded), then tvmforge and ONNX Runtime run
the same inputs with the same thread count, warm-up first; the table gives medians, the ratio
tvmforge/ONNX Runtime and the largest output difference. Writes ``<out>/<name>.json``,
``<out>/<name>.md`` and ``<out>/<name>.png`` (a bar chart of the ratios).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

SETS = {
    "light": [f"zoo:{n}" for n in (
        "bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
        "shufflenet", "squeezenet", "vgg19", "zfnet512")],
    "issue4": ["zoo:resnet50", "zoo:inception_v1", "zoo:squeezenet", "zoo:shufflenet",
               "zoo:densenet121", "zoo:ppocr-det"],
}  # fmt: skip


def machine() -> str:
    from tvmforge.targets import x86

    cpu, _ = x86.host_cpu()
    try:
        name = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        name = platform.processor()
    return f"{name} (LLVM: {cpu}), {subprocess.getoutput('nproc')} cores"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=sorted(SETS), default="light")
    ap.add_argument("--models", nargs="*", help="model specs instead of a set")
    ap.add_argument("--target", default="x86")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--no-tune", action="store_true", help="apply no tuning records")
    ap.add_argument("--tuning-log", type=Path, action="append", default=[])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--name", default=None, help="output file stem [the set's name]")
    args = ap.parse_args(argv)

    from tvmforge.bench import bench

    models = args.models or SETS[args.set]
    name = args.name or (args.set if not args.models else "custom")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in models:
        t0 = time.perf_counter()
        try:
            res = bench(
                spec,
                args.target,
                threads=args.threads,
                repeat=args.repeat,
                use_shipped_logs=not args.no_tune,
                tuning_logs=[] if args.no_tune else args.tuning_log,
            )
            row = res.to_json()
        except Exception as err:  # a benchmark run reports failures, it does not stop
            row = {"model": spec, "error": f"{type(err).__name__}: {err}".splitlines()[0]}
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)

    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "threads": args.threads,
        "repeat": args.repeat,
        "tuning": "none (--no-tune)"
        if args.no_tune
        else "shipped logs + " + (", ".join(map(str, args.tuning_log)) or "no user logs"),
        "command": "python benchmarks/run.py " + " ".join(argv or sys.argv[1:]),
    }
    (args.out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (args.out / f"{name}.md").write_text(markdown(meta, rows))
    chart(rows, args.out / f"{name}.png", meta)
    print((args.out / f"{name}.md").read_text())
    return 0


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        f"Measured {meta['date']} on {meta['machine']}, {meta['threads']} threads, "
        f"median of {meta['repeat']} runs; tuning: {meta['tuning']}.",
        f"Command: `{meta['command']}`",
        "",
        "| model | compile s | tvmforge ms | ONNX Runtime ms | ratio (lower is better) "
        "| max abs err | max rel err | match |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error']} | | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['compile_s']:.1f} | {r['tvmforge_ms']:.2f} | {r['ort_ms']:.2f} "
            f"| {r['ratio']:.2f}x | {r['max_abs_err']:.2g} | {r['max_rel_err']:.2g} "
            f"| {'yes' if r['outputs_match'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def chart(rows: list[dict], path: Path, meta: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return
    fig, ax = plt.subplots(figsize=(max(6, len(ok) * 0.9), 4))
    names = [r["model"].removeprefix("zoo:") for r in ok]
    ax.bar(names, [r["ratio"] for r in ok], color="#4c72b0")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_ylabel("tvmforge / ONNX Runtime latency")
    ax.set_yscale("log")
    ax.set_title(f"{meta['date']}, {meta['threads']} threads, tuning: {meta['tuning']}", fontsize=9)
    plt.xticks(rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
