"""Tuning: budgets, databases per target key, tune -> compile, Ctrl-C, continuing, the CLI.

Every tune here is tiny (a few trials of a 4-kernel model): the file runs in about two minutes
on 2 cores. The one tuned database is shared through a module fixture that also exercises the
interrupted-then-continued path.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms

from onnx_builders import conv_relu_model
from tvmforge.bench import reference
from tvmforge.driver import build, pipeline
from tvmforge.errors import InputError
from tvmforge.frontend import importer as frontend
from tvmforge.runtime import artifact
from tvmforge.runtime import executor as runtime
from tvmforge.targets import resolve
from tvmforge.targets.base import ResolvedTarget
from tvmforge.tuning import tune as tuning


# the conv kernel's name: ``fused_conv2d_add_relu``, or ``fused_conv2d_nchwc_packed_add_relu``
# where the CPU's vector width blocks its 8 channels (8 lanes)
def _conv_name(target: ResolvedTarget) -> str:
    return next(t.task_name for t in _kernels(target) if t.task_name.startswith("fused_conv2d"))


def _kernels(target: ResolvedTarget) -> list[ms.ExtractedTask]:
    model = frontend.load(conv_relu_model())
    mod = frontend.to_relax(model, frontend.resolve_inputs(model, {}))
    tvm_target = target.tvm_target()
    return list(ms.relax_integration.extract_tasks(pipeline.to_kernels(mod, tvm_target),
                                                   tvm_target))


def _scheduled(target: ResolvedTarget, databases: list[Path]) -> tvm.ir.IRModule:
    """The model's kernels after compile's schedule stage (records, then the defaults)."""
    model = frontend.load(conv_relu_model())
    mod = frontend.to_relax(model, frontend.resolve_inputs(model, {}))
    tvm_target = target.tvm_target()
    kernels = pipeline.to_kernels(mod, tvm_target)
    with tvm_target:
        return tvm.transform.Sequential(pipeline.schedule_passes(tvm_target, databases))(kernels)


def _kernel(mod: tvm.ir.IRModule, name: str) -> tvm.tirx.PrimFunc:
    return next(f for gv, f in mod.functions_items() if gv.name_hint == name)


def _replay(trace, workload_mod: tvm.ir.IRModule) -> tvm.tirx.PrimFunc:
    """What compile makes of a record: the trace replayed, its weight-prefetch marks made
    prefetch loops (as ``ScheduleCpuDefault`` does for a kernel a record scheduled)."""
    from tvmforge.passes.schedule.weight_prefetch import insert_weight_prefetches

    sch = tvm.s_tir.Schedule(workload_mod)
    trace.apply_to_schedule(sch, remove_postproc=False)
    return insert_weight_prefetches(sch.mod["main"])


def _same(a: tvm.tirx.PrimFunc, b: tvm.tirx.PrimFunc) -> bool:
    """Same loops and body; the name and the scheduled mark aside."""
    def bare(f):
        return f.without_attr("global_symbol").without_attr("tirx.is_scheduled")

    return bool(tvm_ffi.structural_equal(bare(a), bare(b)))


# --- budget ----------------------------------------------------------------------------------


def test_budget_reaches_every_task_in_the_first_round():
    b = tuning.plan_budget(64, 26)
    assert (b.per_iter, b.per_task) == (2, 4)  # 26 x 2 = 52 <= 64: every task gets a batch
    assert b.tasks_reached == 26
    assert "below one search round" in b.notes()[0]
    big = tuning.plan_budget(2000, 4)
    assert (big.per_iter, big.per_task, big.population) == (64, 512, 512)
    assert big.notes() == []


def test_budget_below_one_trial_per_task_says_which_tasks_go_untuned():
    b = tuning.plan_budget(10, 26)
    assert b.per_iter == 1 and b.tasks_reached == 10
    assert "16 task(s) get no trial" in b.notes()[0]


def test_budget_respects_an_explicit_cap_rounded_up_to_the_batch():
    b = tuning.plan_budget(100, 4, max_trials_per_task=10)
    assert (b.per_iter, b.per_task) == (10, 10)
    b = tuning.plan_budget(100, 2, max_trials_per_task=70)
    assert (b.per_iter, b.per_task) == (50, 100)


# --- databases per target key ------------------------------------------------------------------


def _fake_database(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / tuning.WORKLOADS).write_text("")
    (folder / tuning.RECORDS).write_text("")
    return folder


def test_records_of_a_feature_level_the_target_lacks_are_not_offered(tmp_path):
    logs = tmp_path / "logs"
    _fake_database(logs / "x86-avx512-vnni")
    avx2 = resolve("x86:avx2")
    assert tuning.databases_for(avx2, [logs]) == []
    _fake_database(logs / "x86-avx2")
    assert tuning.databases_for(avx2, [logs]) == [logs / "x86-avx2"]
    # A folder that is a database itself is the user's explicit choice: applied as given.
    assert tuning.databases_for(avx2, [logs / "x86-avx512-vnni"]) == [logs / "x86-avx512-vnni"]


def test_tune_refuses_targets_it_cannot_measure_here():
    with pytest.raises(InputError, match="tuning measures every candidate"):
        tuning.tune(conv_relu_model(), "arm", trials=4)
    with pytest.raises(InputError, match="unknown cost model"):
        tuning.tune(conv_relu_model(), "x86", trials=4, cost_model="gbm")


# --- tune, interrupt, continue, compile --------------------------------------------------------


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> dict:
    """Tune the conv model: Ctrl-C after the first batch, then continue to the end."""
    work = tmp_path_factory.mktemp("tune")
    batches: list[tuning.BatchInfo] = []

    def interrupt_after_first(batch: tuning.BatchInfo) -> None:
        batches.append(batch)
        raise KeyboardInterrupt

    with pytest.raises(tuning.TuningInterrupted) as caught:
        tuning.tune(conv_relu_model(), "x86", trials=8, work_dir=work,
                    on_batch=interrupt_after_first, progress=False)
    db = tuning.database_dir(work, resolve("x86"))
    after_interrupt = tuning.count_records(db)
    result = tuning.tune(conv_relu_model(), "x86", trials=8, work_dir=work, progress=False)
    return {"work": work, "db": db, "interrupted": caught.value, "batches": batches,
            "after_interrupt": after_interrupt, "result": result}


def test_interrupted_tune_keeps_every_measured_record(tuned):
    err, first = tuned["interrupted"], tuned["batches"][0]
    assert isinstance(err, KeyboardInterrupt)
    # One default-schedule record per kernel (measured before the search) + batch one; the
    # kernel count depends on the CPU's vector width (8 lanes block the 8-channel conv).
    kernels = len(_kernels(resolve("x86")))
    assert tuned["after_interrupt"] == kernels + first.measured == err.records == err.new_records
    assert err.line() == f"interrupted; {err.records} records kept in {tuned['db']} " \
        f"({err.records} from this run)"


def test_tuning_again_continues_the_same_database(tuned):
    res = tuned["result"]
    assert res.database == tuned["db"]
    assert res.records_before == tuned["after_interrupt"]
    assert res.records_after == res.records_before + res.trials > res.records_before
    # The search started from what the database held: its logs say how many it picked.
    log = next((tuned["db"] / "logs").glob("*task_0_*.log")).read_text()
    picked = [int(line.split("Picked top ")[1].split()[0])
              for line in log.splitlines() if "Picked top" in line]
    assert picked[-1] > picked[0] >= 1


def test_the_default_schedule_is_a_record_so_tuning_never_slows_compile(tuned):
    target = resolve("x86")
    db = ms.database.JSONDatabase(work_dir=str(tuned["db"]))
    defaults = _scheduled(target, [])
    for task in _kernels(target):
        mod = task.dispatched[0]
        records = db.get_top_k(db.commit_workload(mod), 1000)
        replays = [_replay(r.trace, mod) for r in records]
        default = _kernel(defaults, task.task_name)
        assert any(_same(f, default) for f in replays), task.task_name
    # The report's baseline: every kernel's default schedule was measured.
    assert all(t.best_s and t.default_s for t in tuned["result"].tasks)


def test_revalidating_shipped_logs_drops_records_that_no_longer_beat_the_default(
    tuned, tmp_path
):
    """``ship_tuning_logs.py --revalidate`` times each workload's best record against the
    current default schedule and keeps it only with the asked-for gain: with a gain nothing
    can reach every record goes, with any gain allowed every record stays."""
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location(
        "ship_tuning_logs", Path(__file__).resolve().parents[2] / "benchmarks" /
        "ship_tuning_logs.py"
    )
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    before = tuning.count_records(tuned["db"])
    kinds = len(_kernels(resolve("x86")))
    for gain, expect in ((-10.0, before), (0.99, 0)):
        db = tmp_path / f"gain{gain}"
        db.mkdir()
        for name in (ship.WORKLOADS, ship.RECORDS):
            shutil.copyfile(tuned["db"] / name, db / name)
        rows = ship.revalidate(db, gain)
        assert len(rows) == kinds  # one row per kernel, however many records it has
        assert all(r["record_us"] and r["default_us"] for r in rows)
        assert tuning.count_records(db) == expect


def test_compile_applies_the_tuned_database_and_still_matches_onnxruntime(tuned, tmp_path):
    """Promote a searched (non-default) conv schedule to best; compile must use it."""
    target = resolve("x86")
    db_dir = tmp_path / target.tuning_key
    shutil.copytree(tuned["db"], db_dir, ignore=shutil.ignore_patterns("logs"))
    db = ms.database.JSONDatabase(work_dir=str(db_dir))
    conv_name = _conv_name(target)
    conv = next(t for t in _kernels(target) if t.task_name == conv_name).dispatched[0]
    default = _kernel(_scheduled(target, []), conv_name)
    searched = [r for r in db.get_top_k(db.commit_workload(conv), 1000)
                if not _same(_replay(r.trace, conv), default)]
    assert searched, "tuning measured no conv schedule other than the default"
    pick = searched[-1]  # the slowest one: compile would never choose it on its own
    db.commit_tuning_record(ms.database.TuningRecord(
        pick.trace, pick.workload, run_secs=[1e-9], target=pick.target, args_info=pick.args_info))

    assert tuning.databases_for(target, [tmp_path])[-1] == db_dir  # after any shipped one
    applied = _kernel(_scheduled(target, [db_dir]), conv_name)
    assert bool(applied.attrs["tirx.is_scheduled"])
    assert _same(applied, _replay(pick.trace, conv))
    assert not _same(applied, default)

    built = build.build_model(conv_relu_model(), target, tuning_logs=[tmp_path])
    assert built.databases[-1] == db_dir  # after any shipped database for the key
    path = build.export(built, tmp_path / "tuned.tar")
    compiled = runtime.load(path)
    arrays = runtime.random_inputs(compiled.inputs, seed=1)
    results = reference.compare(compiled.run(arrays),
                                reference.run_onnxruntime(built.model, arrays))
    assert all(r.ok for r in results), [r.line() for r in results]


def test_records_tuned_for_another_feature_level_are_not_applied(tuned, tmp_path):
    native = resolve("x86")
    if native.tuning_key == "x86-avx2":
        pytest.skip("this CPU's level is avx2, the level the records are filed under")
    shutil.copytree(tuned["db"], tmp_path / "x86-avx2", ignore=shutil.ignore_patterns("logs"))
    assert tuning.databases_for(resolve("x86:avx2"), [tmp_path]) == [tmp_path / "x86-avx2"]
    assert not [d for d in tuning.databases_for(native, [tmp_path]) if tmp_path in d.parents]
    built = build.build_model(conv_relu_model(), native, tuning_logs=[tmp_path])
    assert not [d for d in built.databases if tmp_path in d.parents or d == tmp_path]


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_tune_writes_the_report_and_compile_applies_it(cli, tmp_model, tmp_path):
    model = tmp_model(conv_relu_model())
    res = cli("tune", model, "--target", "x86", "--trials", "4", "--tuning-log", "logs",
              "--report", "rep", "--seed", "3")
    assert res.exit_code == 0, res.output
    assert f"tuning {len(_kernels(resolve('x86')))} task(s) with 4 trials" in res.stderr
    # a budget note: below one search round, or (more kernels than trials) kernels left out
    assert "below one search round" in res.stderr or "get no trial" in res.stderr
    assert "apply with: tvmforge compile" in res.stdout
    for name in ("report.csv", "report.md", "tuning_curve.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    assert (tmp_path / "rep" / "tuning_curve.png").read_bytes()[:4] == b"\x89PNG"
    rows = (tmp_path / "rep" / "report.csv").read_text().splitlines()
    assert rows[0].startswith("task,flops,weight,trials,errors,best_us,gflops")
    conv = _conv_name(resolve("x86"))
    kernels = {t.task_name for t in _kernels(resolve("x86"))}
    assert {r.split(",")[0] for r in rows[1:]} == kernels
    assert {conv, "mean", "matmul"} <= kernels
    assert f"| `{conv}` | 114,688 | 1 |" in (tmp_path / "rep" / "report.md").read_text()

    res = cli("compile", model, "--tuning-log", "logs", "-o", "m.tar", "--check")
    assert res.exit_code == 0, res.output
    manifest = artifact.read_manifest(tmp_path / "m.tar")
    applied = next(p for p in manifest["passes"] if p["name"] == "MetaScheduleApplyDatabase")
    # after the shipped database for this CPU's key, where there is one
    shipped = [str(d) for d in tuning.databases_for(resolve("x86"))]
    assert applied["databases"] == [*shipped, str(Path("logs") / resolve("x86").tuning_key)]

    res = cli("compile", model, "--tuning-log", "logs", "--no-tune", "-o", "n.tar")
    assert res.exit_code == 0, res.output
    manifest = artifact.read_manifest(tmp_path / "n.tar")
    applied = next(p for p in manifest["passes"] if p["name"] == "MetaScheduleApplyDatabase")
    assert applied["databases"] == []


@pytest.mark.parametrize("args, message", [
    (["tune", "{model}", "--trials", "4", "--cost-model", "gbm"], "Invalid value for '--cost"),
    (["tune", "{model}"], "Missing option '--trials'"),
    (["tune", "{model}", "--trials", "0"], "Invalid value for '--trials'"),
    (["compile", "{model}", "--tune-trials", "4", "--no-tune"], "contradict"),
])
def test_cli_usage_errors_exit_2(cli, tmp_model, args, message):
    model = tmp_model(conv_relu_model())
    res = cli(*[a.format(model=model) for a in args])
    assert res.exit_code == 2
    assert message in res.stderr


def test_cli_mlp_without_torch_is_one_line(cli, tmp_model):
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        pytest.skip("PyTorch is installed: --cost-model mlp is usable here")
    res = cli("tune", tmp_model(conv_relu_model()), "--trials", "4", "--cost-model", "mlp")
    assert res.exit_code == 2
    assert res.stderr.strip() == ("error: --cost-model mlp needs PyTorch, which is not "
                                  "installed; pip install torch, or use --cost-model xgb")


def test_cli_ctrl_c_while_tuning_is_one_line_and_exit_130(cli, tmp_model, monkeypatch):
    def interrupted(*args, **kwargs):
        raise tuning.TuningInterrupted(Path("logs/x86-avx512-vnni"), 14, 6)

    monkeypatch.setattr(tuning, "tune", interrupted)
    model = tmp_model(conv_relu_model())
    for args in (["tune", model, "--trials", "9"], ["compile", model, "--tune-trials", "9"]):
        res = cli(*args)
        assert res.exit_code == 130
        assert res.stderr.strip() == (
            "error: interrupted; 14 records kept in logs/x86-avx512-vnni (6 from this run)")


def test_user_cache_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tuning.user_cache() == tmp_path / "tvmforge" / "tuning_logs"


# --- shipped logs ------------------------------------------------------------------------------

SHIPPED = Path(__file__).resolve().parents[2] / "tuning_logs"


def test_shipped_logs_are_offered_only_to_their_feature_level():
    keys = sorted(p.name for p in SHIPPED.iterdir() if tuning.is_database(p))
    assert keys, "tuning_logs/ ships no database"
    for key in keys:
        assert key.startswith("x86-"), key
    native = resolve("x86")
    offered = tuning.databases_for(native)
    if native.tuning_key in keys:
        assert SHIPPED / native.tuning_key in offered
    else:
        assert not [d for d in offered if SHIPPED in d.parents]
    for level in ("avx2", "avx512", "avx512-vnni"):
        target = resolve(f"x86:{level}")
        assert [d for d in tuning.databases_for(target) if SHIPPED in d.parents] == (
            [SHIPPED / target.tuning_key] if target.tuning_key in keys else []
        )


def test_shipped_records_apply_to_squeezenet_on_this_cpu():
    """Compile's schedule stage picks the shipped record (a tuned schedule, not the default)
    for a SqueezeNet kernel whose tuning beat the default."""
    from tvmforge.frontend import zoo

    native = resolve("x86")
    db_dir = SHIPPED / native.tuning_key
    if not tuning.is_database(db_dir):
        pytest.skip(f"no shipped tuning logs for this CPU's level ({native.tuning_key})")
    model = frontend.load(zoo.light_model("squeezenet"))
    tvm_target = native.tvm_target()
    kernels = pipeline.to_kernels(
        frontend.to_relax(model, frontend.resolve_inputs(model, {})), tvm_target
    )
    db = ms.database.JSONDatabase(work_dir=str(db_dir))
    with tvm_target:
        tuned = tvm.transform.Sequential(pipeline.schedule_passes(tvm_target, [db_dir]))(kernels)
        default = tvm.transform.Sequential(pipeline.schedule_passes(tvm_target, []))(kernels)
    hits = []
    for task in ms.relax_integration.extract_tasks(kernels, tvm_target):
        workload = task.dispatched[0]
        if not db.has_workload(workload):
            continue
        (best,) = db.get_top_k(db.commit_workload(workload), 1)
        applied = _kernel(tuned, task.task_name)
        assert _same(applied, _replay(best.trace, workload)), task.task_name
        assert not _same(applied, _kernel(default, task.task_name)), task.task_name
        hits.append(task.task_name)
    assert hits, "no SqueezeNet kernel has a shipped record"


def test_candidates_are_measured_on_the_threads_they_are_compiled_for(monkeypatch):
    """The runner's workers would otherwise take TVM's default (1 thread on a 2-core VM)."""
    from tvm.s_tir import meta_schedule as ms

    from tvmforge.runtime.executor import default_threads, pool_threads

    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = default_threads()  # TVM caps the pool at the CPUs there are
    with tuning._runner_threads(cores):
        runner = ms.runner.LocalRunner(timeout_sec=30.0)
        try:
            seen = runner.pool.submit(os.getenv, "TVM_NUM_THREADS").result()
            threads = runner.pool.submit(pool_threads).result()
        finally:
            runner.pool.shutdown(wait=False)
    assert seen == str(cores) and threads == cores
    assert "TVM_NUM_THREADS" not in os.environ  # restored


# --- int8 kernels: tuned with vpdpbusd, applied by a compile with the same flags ---------------


def _int8_unscheduled() -> tuple[tvm.target.Target, tvm.ir.IRModule]:
    """The int8 model's kernels as tune extracts them and compile's schedule stage gets them."""
    from tvmforge.driver.calibration import quantize_pass

    model = frontend.load(conv_relu_model())
    inputs = frontend.resolve_inputs(model, {})
    quantizer, _ = quantize_pass(model, inputs, "int8", "random")
    tvm_target = resolve("x86").tvm_target()
    kernels = pipeline.to_kernels(frontend.to_relax(model, inputs), tvm_target, [quantizer])
    return tvm_target, kernels


def _int8_kernels(databases: list[Path]) -> tvm.ir.IRModule:
    """The int8 model's kernels after compile's schedule stage (records, then the defaults)."""
    tvm_target, kernels = _int8_unscheduled()
    with tvm_target:
        return tvm.transform.Sequential(pipeline.schedule_passes(tvm_target, databases))(kernels)


def _unscheduled_int8(name: str) -> tvm.ir.IRModule:
    """Kernel ``name`` as tune's workload."""
    tvm_target, kernels = _int8_unscheduled()
    tasks = ms.relax_integration.extract_tasks(kernels, tvm_target)
    return next(t.dispatched[0] for t in tasks if t.task_name == name)


@pytest.fixture(scope="module")
def tuned_int8(tmp_path_factory) -> dict:
    from tvmforge.passes.schedule.intrinsics import int8_family

    family = int8_family(resolve("x86").tvm_target())
    if family not in ("vnni", "avx2"):
        pytest.skip(f"no tensorized int8 kernels on this CPU (family {family})")
    work = tmp_path_factory.mktemp("tune8")
    result = tuning.tune(conv_relu_model(), "x86", trials=24, work_dir=work, quantize="int8",
                         calibration="random", progress=False)
    return {"work": work, "db": tuning.database_dir(work, resolve("x86")), "result": result,
            "family": family}


def test_int8_kernels_are_tuned_in_a_space_that_uses_the_dot_product(tuned_int8):
    from tvmforge.passes.schedule.int8_kernels import TUNING_INTRINSICS

    family = tuned_int8["family"]
    task = next(t for t in tuned_int8["result"].tasks if family in t.name)
    assert task.trials > 0 and task.best_s and task.default_s
    kernels = _int8_kernels([])
    workload = _unscheduled_int8(task.name)
    db = ms.database.JSONDatabase(work_dir=str(tuned_int8["db"]))
    records = db.get_top_k(db.commit_workload(workload), 1000)
    default = _kernel(kernels, task.name)
    searched = [r for r in records if not _same(_replay(r.trace, workload), default)]
    assert searched and all(TUNING_INTRINSICS[family] in str(r.trace) for r in searched)


def test_compile_applies_int8_records_with_the_same_bits(tuned_int8, tmp_path):
    """A searched (non-default) VNNI / AVX2 schedule promoted to best is what compile builds;
    int8 arithmetic is exact, so the outputs are the untuned build's to the bit."""
    target = resolve("x86")
    db_dir = tmp_path / target.tuning_key
    shutil.copytree(tuned_int8["db"], db_dir, ignore=shutil.ignore_patterns("logs"))
    db = ms.database.JSONDatabase(work_dir=str(db_dir))
    task = next(t for t in tuned_int8["result"].tasks if tuned_int8["family"] in t.name)
    workload = _unscheduled_int8(task.name)
    default = _kernel(_int8_kernels([]), task.name)
    searched = [r for r in db.get_top_k(db.commit_workload(workload), 1000)
                if not _same(_replay(r.trace, workload), default)]
    pick = searched[-1]
    db.commit_tuning_record(ms.database.TuningRecord(
        pick.trace, pick.workload, run_secs=[1e-9], target=pick.target, args_info=pick.args_info))
    applied = _kernel(_int8_kernels([db_dir]), task.name)
    assert _same(applied, _replay(pick.trace, workload)) and not _same(applied, default)

    plain = build.build_model(conv_relu_model(), target, quantize="int8", calibration="random",
                              use_shipped_logs=False)
    tuned = build.build_model(conv_relu_model(), target, quantize="int8", calibration="random",
                              tuning_logs=[tmp_path], use_shipped_logs=False)
    assert tuned.databases == [db_dir]  # the folder's database for this key, and only it
    instruction = {"vnni": "vpdpbusd", "avx2": "vpmaddubsw"}[tuned_int8["family"]]
    assert instruction in tuned.executable.mod.imports[0].inspect_source("asm")
    arrays = runtime.random_inputs(plain.inputs, seed=2)
    outs = []
    for built in (plain, tuned):
        path = build.export(built, tmp_path / "m.tar")
        outs.append(runtime.load(path).run(arrays))
    for name in outs[0]:
        np.testing.assert_array_equal(outs[0][name], outs[1][name])
