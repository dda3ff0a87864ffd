"""How many of a model's kernels the tuning records covered: the records stage measures it
(``pipeline.collect_tuning_coverage``), ``build_model`` keeps it in ``Built.tuning_coverage``,
the manifest writes it under ``"tuning"`` and ``manifest.coverage_line`` says it in one line.

One real tune of the 5-kernel conv model with a single trial (every kernel's default schedule
is recorded before the search, whatever the budget): about 10 s on 2 cores.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tvm.s_tir import meta_schedule as ms

from onnx_builders import conv_relu_model
from tvmforge.driver import build, pipeline
from tvmforge.driver.manifest import coverage_line
from tvmforge.frontend import importer as frontend
from tvmforge.runtime import artifact
from tvmforge.targets import resolve
from tvmforge.tuning import databases as dbs
from tvmforge.tuning import tune as tuning


def _task_names(target) -> list[str]:
    """The kernels ``tune`` extracts from the conv model: the ones a record can cover."""
    model = frontend.load(conv_relu_model())
    mod = frontend.to_relax(model, frontend.resolve_inputs(model, {}))
    kernels = pipeline.to_kernels(mod, target.tvm_target())
    return sorted(t.task_name for t in ms.relax_integration.extract_tasks(
        kernels, target.tvm_target()))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("tune")
    result = tuning.tune(conv_relu_model(), "x86", trials=1, work_dir=work, progress=False)
    return {"work": work, "db": result.database, "result": result}


def _only_first_workload(db: Path, into: Path) -> Path:
    """A copy of ``db`` that keeps the records of its first workload only (one kernel)."""
    into.mkdir(parents=True)
    shutil.copy(db / dbs.WORKLOADS, into / dbs.WORKLOADS)
    lines = (db / dbs.RECORDS).read_text().splitlines()
    kept = [ln for ln in lines if ln.strip() and json.loads(ln)[0] == 0]
    assert kept and len(kept) < len(lines)
    (into / dbs.RECORDS).write_text("\n".join(kept) + "\n")
    return into


def test_without_a_database_no_kernel_is_covered():
    target = resolve("x86")
    built = build.build_model(conv_relu_model(), target, use_shipped_logs=False)
    cov = built.tuning_coverage
    names = _task_names(target)
    assert cov == {"kernels": len(names), "covered": 0, "databases": [], "covered_by": [],
                   "uncovered": names[:pipeline.UNCOVERED_NAMED],
                   "tuning_key": target.tuning_key}
    assert built.manifest()["tuning"] == cov
    assert coverage_line(cov) == (f"tuning records: none apply (0 of {len(names)} kernels; "
                                  f"no database for {target.tuning_key})")


def test_a_tuned_database_covers_every_kernel_it_recorded(tuned, tmp_path):
    target = resolve("x86")
    recorded = [t.name for t in tuned["result"].tasks if t.default_recorded]
    assert sorted(recorded) == _task_names(target)  # one default record per kernel

    built = build.build_model(conv_relu_model(), target, tuning_logs=[tuned["work"]],
                              use_shipped_logs=False)
    cov = built.tuning_coverage
    assert built.databases == [tuned["db"]]
    assert (cov["kernels"], cov["covered"], cov["covered_by"], cov["uncovered"]) == (
        len(recorded), len(recorded), [len(recorded)], [])
    assert cov["databases"] == [str(tuned["db"])]
    assert coverage_line(cov) == (
        f"tuning records: {len(recorded)} of {len(recorded)} kernels ({tuned['db']})")
    # the artifact's manifest carries it, next to the pass list's databases
    manifest = artifact.read_manifest(build.export(built, tmp_path / "tuned.tar"))
    assert manifest["tuning"] == cov
    step = next(p for p in manifest["passes"] if p["name"] == "MetaScheduleApplyDatabase")
    assert step["databases"] == cov["databases"]


def test_partial_databases_count_what_each_covered(tuned, tmp_path):
    target = resolve("x86")
    kernels = len(_task_names(target))
    partial = _only_first_workload(tuned["db"], tmp_path / "partial")

    built = build.build_model(conv_relu_model(), target, tuning_logs=[partial],
                              use_shipped_logs=False)
    cov = built.tuning_coverage
    assert (cov["kernels"], cov["covered"], cov["covered_by"]) == (kernels, 1, [1])
    assert len(cov["uncovered"]) == kernels - 1
    assert set(cov["uncovered"]) < set(_task_names(target))
    assert coverage_line(cov) == f"tuning records: 1 of {kernels} kernels ({partial})"

    # applied in order: a kernel counts for the first database with a record of it
    built = build.build_model(conv_relu_model(), target, tuning_logs=[partial, tuned["work"]],
                              use_shipped_logs=False)
    cov = built.tuning_coverage
    assert (cov["covered"], cov["covered_by"], cov["uncovered"]) == (
        kernels, [1, kernels - 1], [])
    assert coverage_line(cov) == (f"tuning records: {kernels} of {kernels} kernels "
                                  f"({partial}: 1, {tuned['db']}: {kernels - 1})")


def test_coverage_line_wording(monkeypatch, tmp_path):
    def cov(kernels, covered, databases=(), covered_by=(), key="x86-avx2"):
        return {"kernels": kernels, "covered": covered, "databases": list(databases),
                "covered_by": list(covered_by), "uncovered": [], "tuning_key": key}

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    shipped = dbs.shipped_roots()[0] / "x86-avx512-vnni"
    local = tmp_path / "logs" / "x86-avx2"
    cached = tmp_path / "home" / ".cache" / "tvmforge" / "tuning_logs" / "x86-avx2"

    assert coverage_line(cov(53, 41, [shipped], [41], "x86-avx512-vnni")) == \
        "tuning records: 41 of 53 kernels (tuning_logs/x86-avx512-vnni)"
    assert coverage_line(cov(53, 0)) == \
        "tuning records: none apply (0 of 53 kernels; no database for x86-avx2)"
    assert coverage_line(cov(53, 0, key="")) == \
        "tuning records: none apply (0 of 53 kernels; no database for this target)"
    assert coverage_line(cov(53, 0, [local], [0])) == \
        "tuning records: none apply (0 of 53 kernels; no record matches in logs/x86-avx2)"
    assert coverage_line(cov(53, 12, [cached, local], [0, 12])) == \
        "tuning records: 12 of 53 kernels (logs/x86-avx2)"
    assert coverage_line(cov(53, 20, [cached, local], [8, 12])) == \
        ("tuning records: 20 of 53 kernels (~/.cache/tvmforge/tuning_logs/x86-avx2: 8, "
         "logs/x86-avx2: 12)")
    assert coverage_line(cov(0, 0)) == \
        "tuning records: no kernel to tune (every kernel is scheduled by hand)"
    assert coverage_line(None) == "tuning records: not measured"
