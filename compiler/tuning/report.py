"""``tvmforge tune --report DIR``: the per-kernel table (CSV) and the tuning curve (PNG)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from tvmforge.tuning.results import TuneResult

# --------------------------------------------------------------------------------------------
# Report


REPORT_COLUMNS = (
    "task", "flops", "weight", "trials", "errors", "best_us", "gflops", "default_us",
    "speedup_vs_default", "weighted_us",
)


def _us(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e6, 3)


def report_rows(result: TuneResult) -> list[dict[str, Any]]:
    """One row per task, heaviest (weight x latency) first."""
    rows = []
    for t in result.tasks:
        applied = t.applied_s()
        rows.append({
            "task": t.name,
            "flops": int(t.flops),
            "weight": t.weight,
            "trials": t.trials,
            "errors": t.errors,
            "best_us": _us(t.best_s),
            "gflops": None if t.gflops is None else round(t.gflops, 2),
            "default_us": _us(t.default_s),
            "speedup_vs_default": (
                round(t.default_s / t.best_s, 2) if t.default_s and t.best_s else None
            ),
            "weighted_us": _us(None if applied is None else applied * t.weight),
        })
    rows.sort(key=lambda r: -(r["weighted_us"] or 0.0))
    return rows


def write_report(result: TuneResult, out_dir: Path) -> list[Path]:
    """Write ``report.csv``, ``report.md`` and ``tuning_curve.png`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = report_rows(result)
    csv_path = out_dir / "report.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=REPORT_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})

    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)

    est = result.estimate_s()
    start = result.curve[0][1] if result.curve else None
    lines = [
        f"# Tuning report: {result.target}",
        "",
        f"- database: `{result.database}` ({result.records_before} records before, "
        f"{result.records_after} after)",
        f"- trials measured: {result.trials} in {result.seconds / 60:.1f} min"
        + (f"; {result.budget.summary()}" if result.budget else ""),
        f"- estimated end-to-end (sum of weight x latency): "
        f"{'-' if start is None else f'{start * 1e3:.3f} ms'} before, "
        f"{'-' if est is None else f'{est * 1e3:.3f} ms'} after",
        "- latencies are MetaSchedule's per-kernel measurements; `default` is tvmforge's "
        "untuned schedule; compile applies the best record where one exists",
        "",
        "| task | FLOPs | weight | trials | best (us) | GFLOP/s | default (us) | speedup |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| `{r['task']}` | {cell(r['flops'])} | {r['weight']} | {r['trials']} | "
            f"{cell(r['best_us'])} | {cell(r['gflops'])} | {cell(r['default_us'])} | "
            f"{cell(r['speedup_vs_default'])} |"
        )
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(lines) + "\n")
    png_path = out_dir / "tuning_curve.png"
    _plot_curve(result, png_path)
    return [csv_path, md_path, png_path]


def _plot_curve(result: TuneResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(n, s * 1e3) for n, s in result.curve if s is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if points:
        xs, ys = zip(*points, strict=True)
        ax.step(xs, ys, where="post", marker="o", markersize=3)
    else:
        ax.text(0.5, 0.5, "no estimate: some kernel has neither a record nor a default timing",
                ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("trials measured")
    ax.set_ylabel("estimated latency (ms)")
    ax.set_title(f"{result.target}: sum over kernels of weight x best latency")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


