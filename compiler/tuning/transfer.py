"""A cost model that transfers: MetaSchedule's XGBoost model trained once on measured records.

MetaSchedule's cost model starts every tune untrained: for its first 100 measurements it ranks
candidates at random, then it learns what is fast from this tune's measurements alone. But a
database of earlier tunes holds thousands of measured schedules of similar kernels (convolutions,
matmuls, reductions of other shapes), and the features the model sees (per-store loop extents,
vectorization, cache reuse, parallelism) describe a schedule, not one workload. Trained on them,
the model ranks the first candidates of a new kernel as well as it ranks the hundredth.

``train`` replays every record of the given databases (each record's trace on its workload, the
candidate MetaSchedule measured), extracts MetaSchedule's own features and fits the same
``XGBModel`` ``tune`` uses, grouped by workload as during a tune (each workload's costs are
normalized to its best). The result is MetaSchedule's own ``XGBModel.save`` format (the booster
and the feature data) in ``cost_model.tar`` beside a database; ``tune --cost-model xgb`` starts
from the one that applies to the target (the tuning key's), and keeps learning: this tune's
measurements are added to the pre-trained data. ``--cost-model xgb-fresh`` starts from nothing.

Records measured on another CPU of the same key still teach the ranking (which schedule of a
kernel is faster), which is what the search needs; the costs are never used as times.

``python -m tvmforge.tuning.transfer DB_DIR [DB_DIR ...] --target x86 --out cost_model.tar``
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

MODEL_FILE = "cost_model.tar"
# What ``tune`` reads beside a database, besides the tar: how it was made.
INFO_FILE = "cost_model.json"


def xgb_model() -> Any:
    """The XGBoost cost model ``tune`` uses (one training thread: see ``search._cost_model``)."""
    from tvm.s_tir.meta_schedule import cost_model

    return cost_model.XGBModel(num_tuning_cores=1)


def _records_by_workload(databases: Sequence[Path]) -> dict[str, tuple[Any, list[Any]]]:
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.utils import shash2hex

    groups: dict[str, tuple[Any, list[Any]]] = {}
    for db in databases:
        database = ms.database.JSONDatabase(work_dir=str(db))
        for rec in database.get_all_tuning_records():
            if not rec.run_secs:
                continue
            key = shash2hex(rec.workload.mod)
            groups.setdefault(key, (rec.workload.mod, []))[1].append(rec)
    return groups


def train(
    databases: Sequence[Path],
    target: Any,
    out: Path,
    *,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fit the XGBoost cost model on every measured record of ``databases``; save it to ``out``.

    Parameters
    ----------
    databases:
        MetaSchedule JSON database folders (``tune``'s, with every measured candidate).
    target:
        The ``tvm.target.Target`` the records were measured for (the features need it).
    out:
        Where to write the model (``XGBModel.save``'s tar).

    Returns
    -------
    dict
        ``{"workloads", "records", "seconds"}``; also written as JSON beside ``out``.
    """
    import json

    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.runner import RunnerResult

    from tvmforge.tuning.search import _quick_tvmscript_import

    say = say or (lambda _m: None)
    t0 = time.perf_counter()
    groups = _records_by_workload(databases)
    if not groups:
        raise ValueError(f"no measured record in {', '.join(map(str, databases))}")
    model = xgb_model()
    records = 0
    with _quick_tvmscript_import():
        for i, (mod, recs) in enumerate(groups.values()):
            ctx = ms.TuneContext(mod=mod, target=tvm.target.Target(target), num_threads=1)
            candidates, results = [], []
            for rec in recs:
                try:
                    candidates.append(rec.as_measure_candidate())
                except Exception:  # a trace that no longer replays on its workload
                    continue
                results.append(RunnerResult(run_secs=list(rec.run_secs), error_msg=None))
            model.update(ctx, candidates, results)
            records += len(candidates)
            if (i + 1) % 20 == 0:
                say(f"{i + 1}/{len(groups)} kernels, {records} records")
    # ``update`` retrains only when the data grew by a fifth since the last training: once more
    # on everything, so the saved booster has seen every record.
    _retrain(model)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # xgboost: "Saving model in the UBJSON format as default"
        warnings.simplefilter("ignore")
        model.save(str(out))
    info = {"workloads": len(groups), "records": records,
            "seconds": round(time.perf_counter() - t0, 1),
            "databases": [str(d) for d in databases], "target": str(tvm.target.Target(target))}
    out.with_name(INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return info


def _retrain(model: Any) -> None:
    import itertools

    import numpy as np

    features = list(itertools.chain.from_iterable(g.features for g in model.data.values()))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.concatenate([
            np.divide(g.min_cost, g.costs, out=np.zeros_like(g.costs), where=g.costs != 0)
            for g in model.data.values()
        ])
    model._train(xs=features, ys=ratios)
    model.last_train_size = model.data_size


def load(path: Path) -> Any:
    """A pre-trained ``XGBModel`` from ``path`` (``train``'s output), ready for ``tune``.

    ``XGBModel.load`` of TVM 0.27 fails on a file without a booster; ``train`` always writes
    one. After loading, the next ``update`` of a tune retrains on the pre-trained data plus its
    own measurements.
    """
    model = xgb_model()
    with warnings.catch_warnings():  # xgboost: "Unknown file format: `bin`" (it is UBJSON)
        warnings.simplefilter("ignore")
        model.load(str(path))
    model.last_train_size = model.data_size
    return model


def pretrained_for(db_dir: Path, shipped: Sequence[Path]) -> Path | None:
    """The cost model a tune into ``db_dir`` starts from: one beside that database (a user's
    own, trained from their logs), else the shipped one of the same tuning key."""
    for root in (db_dir.parent, *shipped):
        path = Path(root) / db_dir.name / MODEL_FILE
        if path.is_file():
            return path
    return None


def describe(path: Path) -> str:
    import json

    try:
        info = json.loads(path.with_name(INFO_FILE).read_text())
        what = f"{info['records']} records of {info['workloads']} kernels"
    except (OSError, ValueError, KeyError):
        what = "measured records"
    return f"XGBoost pre-trained on {what} ({path})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tvmforge.tuning.transfer",
        description="Train the XGBoost cost model that `tune --cost-model xgb` starts from.",
    )
    parser.add_argument("databases", nargs="+", type=Path, help="MetaSchedule database folders")
    parser.add_argument("--target", default="x86", help="tvmforge target spec [default: x86]")
    parser.add_argument("--out", type=Path, required=True, help=f"the {MODEL_FILE} to write")
    args = parser.parse_args(argv)
    from tvmforge.targets import resolve

    target = resolve(args.target).tvm_target()
    try:
        info = train(args.databases, target, args.out,
                     say=lambda m: print(m, file=sys.stderr, flush=True))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.out}: trained on {info['records']} records of {info['workloads']} kernels "
          f"in {info['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
