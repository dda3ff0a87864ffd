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

``--cost-model`` also trains the XGBoost cost model on every record of ``SRC_DB`` (all the
measured candidates, not just the shipped best) and writes ``DEST_DB/cost_model.tar``, which
``tune --cost-model xgb`` starts from (``tvmforge.tuning.transfer``).

Revalidate what is shipped after the default schedules change::

    python benchmarks/ship_tuning_logs.py --revalidate DB [--min-gain 0.03] [--report OUT.md]

times each record of ``DB`` against the current default schedule of its kernel (both built
here, timed interleaved, the best of three rounds) and drops the records that no longer beat
it by ``--min-gain``: a record tuned against an older default can shadow a better new one.

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

    from tvmforge.driver import pipeline
    from tvmforge.frontend import importer as frontend

    model = frontend.load(spec)
    kernels = pipeline.to_kernels(
        frontend.to_relax(model, frontend.resolve_inputs(model, {})), target
    )
    return [t.dispatched[0] for t in ms.relax_integration.extract_tasks(kernels, target)]


def distil(src: Path, dest: Path, min_gain: float, exclude: list[str] = ()) -> list[dict]:
    import tvm_ffi

    from tvmforge.targets import resolve
    from tvmforge.tuning.tune import _traced_default_schedule

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


def _time_kernels(funcs: list, target, rounds: int = 3) -> list[float]:
    """Seconds per call of each PrimFunc on random inputs: interleaved rounds, the best median."""
    import numpy as np
    import tvm

    dev = tvm.cpu()
    libs, args = [], []
    rng = np.random.default_rng(0)
    for func in funcs:
        with target:
            libs.append(
                tvm.tirx.build(
                    tvm.IRModule({"k": func.with_attr("global_symbol", "k")}), target=target
                )
            )
        arrays = []
        for buf in func.params:  # TVM 0.27: a PrimFunc's params are its buffers
            shape = [int(d) for d in buf.shape]
            if "float" in str(buf.dtype):
                arr = rng.uniform(-1, 1, shape).astype(str(buf.dtype))
            else:
                arr = rng.integers(0, 8, shape).astype(str(buf.dtype))
            arrays.append(tvm.runtime.tensor(arr, dev))
        args.append(arrays)
    best = [float("inf")] * len(funcs)
    for _ in range(rounds):
        for i, lib in enumerate(libs):
            ev = lib.time_evaluator("k", dev, number=1, repeat=5, min_repeat_ms=20)
            best[i] = min(best[i], statistics.median(ev(*args[i]).results))
    return best


def revalidate(folder: Path, min_gain: float) -> list[dict]:
    """Keep only the records of ``folder`` that still beat the current default schedules."""
    import importlib
    import shutil
    import tempfile

    import tvm_ffi

    from tvmforge.targets import resolve
    from tvmforge.tuning.tune import _traced_default_schedule

    cpu = importlib.import_module("tvmforge.passes.schedule.rules")
    target = resolve("x86").tvm_target()
    params = cpu.CpuScheduleParams.from_target(target)
    db = _open(folder)
    records = list(db.get_all_tuning_records())
    by_workload: dict[int, list] = {}
    for rec in records:
        by_workload.setdefault(int(tvm_ffi.structural_hash(rec.workload.mod)), []).append(rec)
    rows, keep = [], []
    for recs in by_workload.values():
        mod = recs[0].workload.mod
        traced = _traced_default_schedule(mod, target)
        default = traced.mod["main"] if traced is not None else cpu.schedule_prim_func(
            mod["main"], params
        )
        sch = db.query_schedule(mod, target, "main")  # the workload's best record
        row = {"kernel": _name(mod), "record_us": None, "default_us": None, "kept": True}
        if default is not None and sch is not None:
            t_rec, t_def = _time_kernels([sch.mod["main"], default], target)
            row.update(record_us=round(t_rec * 1e6, 2), default_us=round(t_def * 1e6, 2))
            row["kept"] = t_rec <= t_def * (1 - min_gain)
        rows.append(row)
        if row["kept"]:
            keep.extend(recs)
    if len(keep) < len(records):
        with tempfile.TemporaryDirectory() as tmp:
            out = _open(Path(tmp))
            for rec in keep:
                from tvm.s_tir.meta_schedule.database import TuningRecord

                wl = out.commit_workload(rec.workload.mod)
                out.commit_tuning_record(
                    TuningRecord(rec.trace, wl, rec.run_secs, rec.target, rec.args_info)
                )
            for name in (WORKLOADS, RECORDS):
                shutil.copyfile(Path(tmp) / name, folder / name)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, nargs="?")
    ap.add_argument("dest", type=Path, nargs="?")
    ap.add_argument("--revalidate", type=Path, default=None, metavar="DB")
    ap.add_argument("--min-gain", type=float, default=0.03)
    ap.add_argument("--report", type=Path, default=None)
    ap.add_argument("--exclude-model", action="append", default=[], metavar="SPEC")
    ap.add_argument("--cost-model", action="store_true",
                    help="also train the XGBoost cost model on every record of SRC_DB and ship "
                         "it as DEST_DB/cost_model.tar (tune --cost-model xgb starts from it)")
    ap.add_argument("--target", default="x86",
                    help="the target SRC_DB was tuned for (the cost model's features) "
                         "[default: x86]")
    args = ap.parse_args(argv)
    if args.revalidate is not None:
        rows = revalidate(args.revalidate, args.min_gain)
        kept = sum(r["kept"] for r in rows)
        head = (
            f"{len(rows)} record(s) in {args.revalidate}; {kept} still beat the default "
            f"schedule by >= {args.min_gain:.0%} and are kept"
        )
        columns = ["default us", "record us", "speed-up", "kept"]
        cells = [
            [r["default_us"], r["record_us"], _gain(r["default_us"], r["record_us"]), r["kept"]]
            for r in rows
        ]
    else:
        if args.src is None or args.dest is None:
            ap.error("SRC_DB and DEST_DB are required (or --revalidate DB)")
        rows = distil(args.src, args.dest, args.min_gain, args.exclude_model)
        shipped = sum(r["shipped"] for r in rows)
        head = (
            f"{len(rows)} tuned kernel(s) in {args.src}; {shipped} beat the default schedule "
            f"by >= {args.min_gain:.0%} and are shipped in {args.dest}"
        )
        columns = ["records", "default us", "best us", "speed-up", "shipped"]
        cells = [
            [r["records"], r["default_us"], r["best_us"], _gain(r["default_us"], r["best_us"]),
             r["shipped"]]
            for r in rows
        ]  # fmt: skip
        if args.cost_model:
            from tvmforge.targets import resolve
            from tvmforge.tuning import transfer

            info = transfer.train([args.src], resolve(args.target).tvm_target(),
                                  args.dest / transfer.MODEL_FILE)
            head += (f"; cost model trained on {info['records']} records of "
                     f"{info['workloads']} kernels in {args.dest / transfer.MODEL_FILE}")
    text = _table(head, columns, [r["kernel"] for r in rows], cells, [r["default_us"] for r in rows])
    print(text)
    if args.report:
        args.report.write_text(text)
    return 0


def _gain(default_us: float | None, tuned_us: float | None) -> str:
    return f"{default_us / tuned_us:.2f}x" if default_us and tuned_us else "n/a"


def _table(head: str, columns: list[str], kernels: list[str], cells: list[list], order: list) -> str:
    """The markdown report: one row per kernel, slowest default first."""
    def fmt(v) -> str:
        return "n/a" if v is None else ("yes" if v is True else "no" if v is False else str(v))

    lines = [head, "", "| kernel | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * (len(columns) - 1) + "---|"]
    for _, kernel, row in sorted(zip([-(o or 0) for o in order], kernels, cells, strict=True),
                                 key=lambda t: t[0]):
        lines.append(f"| `{kernel}` | " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines) + "\n"

if __name__ == "__main__":
    sys.exit(main())
