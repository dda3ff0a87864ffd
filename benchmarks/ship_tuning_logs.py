"""Distil a tuning database into the records worth shipping in ``tuning_logs/<key>/``.

``tvmforge tune`` stores every measured candidate and, per kernel, tvmforge's default schedule
as a record. Shipping all of it would be tens of MB of serialized kernels for nothing: a
kernel without a record gets the default schedule anyway. This keeps, per kernel, only the
best record, and only where it beat the default schedule's time measured in the same tuning
run by at least ``--min-gain`` (3 % by default, above the run-to-run noise of the 2-core
machine we tune on).

Usage::

    python benchmarks/ship_tuning_logs.py SRC_DB DEST_DB [--min-gain 0.03] [--report OUT.md]
        [--exclude-model zoo:NAME ...]

``SRC_DB``/``DEST_DB`` are database folders (``database_workload.json`` +
``database_tuning_record.json``), e.g. ``/tmp/tl/x86-avx512-vnni`` and
``tuning_logs/x86-avx512-vnni``. Records already in ``DEST_DB`` are kept; a kernel's shipped
record is replaced only by a faster one. ``--exclude-model`` leaves out every kernel of a
model whose tuned records won per kernel but lost end to end (``benchmarks/tuned_ab.py``).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"


def _open(folder: Path):
    from tvm.s_tir import meta_schedule as ms

    folder.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(
        path_workload=str(folder / WORKLOADS),
        path_tuning_record=str(folder / RECORDS),
        allow_missing=True,
    )


def _secs(record) -> float:
    return statistics.median(float(s) for s in record.run_secs)


def _trace_key(trace) -> str:
    return json.dumps(trace.as_json(remove_postproc=True), sort_keys=True, default=str)


def _name(mod) -> str:
    """The kernel's last block (its main computation or the epilogue after it)."""
    names = [n for n in re.findall(r'block\("([^"]+)"\)', mod.script()) if n != "root"]
    return names[-1] if names else "kernel"


def _model_workloads(spec: str, target) -> list:
    """The tuning workloads (one per kernel) of ``spec`` compiled for ``target``."""
    from tvm.s_tir import meta_schedule as ms

    from tvmforge import frontend, pipeline

    model = frontend.load(spec)
    kernels = pipeline.to_kernels(
        frontend.to_relax(model, frontend.resolve_inputs(model, {})), target
    )
    return [t.dispatched[0] for t in ms.relax_integration.extract_tasks(kernels, target)]


def distil(src: Path, dest: Path, min_gain: float, exclude: list[str] = ()) -> list[dict]:
    import tvm_ffi

    from tvmforge.targets import resolve
    from tvmforge.tuning import _traced_default_schedule

    excluded = [w for spec in exclude for w in _model_workloads(spec, resolve("x86").tvm_target())]

    source, target_db = _open(src), _open(dest)
    by_workload: dict[int, list] = {}
    workloads = {}
    for rec in source.get_all_tuning_records():
        if not rec.run_secs:
            continue
        key = int(tvm_ffi.structural_hash(rec.workload.mod))
        by_workload.setdefault(key, []).append(rec)
        workloads[key] = rec.workload
    rows = []
    for key, recs in by_workload.items():
        workload = workloads[key]
        if any(tvm_ffi.structural_equal(workload.mod, w) for w in excluded):
            continue
        recs.sort(key=_secs)
        best = recs[0]
        default = _traced_default_schedule(workload.mod, best.target)
        default_secs = None
        if default is not None:
            want = _trace_key(default.trace)
            hits = [r for r in recs if _trace_key(r.trace) == want]
            default_secs = _secs(hits[0]) if hits else None
        row = {
            "kernel": _name(workload.mod),
            "records": len(recs),
            "best_us": round(_secs(best) * 1e6, 2),
            "default_us": None if default_secs is None else round(default_secs * 1e6, 2),
            "shipped": False,
        }
        if default_secs is not None and _secs(best) <= default_secs * (1 - min_gain):
            wl = target_db.commit_workload(workload.mod)
            prior = target_db.get_top_k(wl, 1)
            if not prior or _secs(prior[0]) > _secs(best):
                from tvm.s_tir.meta_schedule.database import TuningRecord

                target_db.commit_tuning_record(
                    TuningRecord(best.trace, wl, best.run_secs, best.target, best.args_info)
                )
            row["shipped"] = True
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--min-gain", type=float, default=0.03)
    ap.add_argument("--report", type=Path, default=None)
    ap.add_argument("--exclude-model", action="append", default=[], metavar="SPEC")
    args = ap.parse_args(argv)
    rows = distil(args.src, args.dest, args.min_gain, args.exclude_model)
    shipped = [r for r in rows if r["shipped"]]
    lines = [
        f"{len(rows)} tuned kernel(s) in {args.src}; {len(shipped)} beat the default schedule by "
        f">= {args.min_gain:.0%} and are shipped in {args.dest}",
        "",
        "| kernel | records | default us | best us | speed-up | shipped |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in sorted(rows, key=lambda r: -(r["default_us"] or 0)):
        gain = f"{r['default_us'] / r['best_us']:.2f}x" if r["default_us"] else "n/a"
        lines.append(
            f"| `{r['kernel']}` | {r['records']} | {r['default_us'] or 'n/a'} | {r['best_us']} "
            f"| {gain} | {'yes' if r['shipped'] else 'no'} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.report:
        args.report.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
