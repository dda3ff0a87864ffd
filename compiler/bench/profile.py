"""Where a compiled model spends its time: per-kernel times inside real runs, the ONNX nodes
each kernel computes, and ONNX Runtime's own per-op profile of the same model.

Each kernel is timed in place, in the Relax VM running the whole model (``vm.set_instrument``
around every call), so caches hold what they hold in a real inference: a kernel timed alone
with its inputs hot in cache can look twice as fast as it runs in the model. The instrumented
runs alternate with plain runs, which give the measured total; what the kernels do not account
for is the VM's own work (allocation, shape checks, reshape views). A kernel's time is the sum
over its calls in one run, averaged over the quieter half of the instrumented runs (those whose
kernels took the least in all): on shared cores a run in which another program took a core
for a time slice is left out, and the rows still add up to what the runs kept spent in
kernels. The total is the mean of the quieter half of the plain runs.

Which ONNX nodes a kernel computes is recorded at compile time (``driver.provenance``: the
``kernels`` entry of an artifact's manifest), with its FLOPs (TVM's estimate): a row shows
GFLOP/s where the kernel does at least one FLOP per byte of its arguments, else GB/s (bytes
of its arguments, read and written once).

ONNX Runtime's profiler gives its per-node times on the same inputs and thread count: totals
by op type (the sum of each node's median), and its median run time. tvmforge's kernels are
summed by op type too, each under its main op (a fused conv + bias + ReLU counts as Conv, as
ONNX Runtime's FusedConv does), so the two can be set side by side.
"""

from __future__ import annotations

import collections
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tvmforge.bench import reference
from tvmforge.errors import InputError

__all__ = ["KernelRow", "ProfileResult", "profile"]

# A kernel's main op (what its time is counted under, by op type): the first of these among
# its nodes, else its first node's op.
HEAVY_OPS = (
    "Conv", "ConvTranspose", "QLinearConv", "ConvInteger", "MatMul", "Gemm", "QLinearMatMul",
    "MatMulInteger", "MatMulNBits", "DynamicQuantizeMatMul", "Einsum", "Attention", "LSTM",
    "GRU", "RNN", "MaxPool", "AveragePool", "GlobalAveragePool", "Softmax",
    "LayerNormalization", "Resize",
)

# ONNX Runtime's fused ops, counted under the op they are built on.
ORT_FUSED = {"FusedConv": "Conv", "FusedGemm": "Gemm", "FusedMatMul": "MatMul",
             "NhwcFusedConv": "Conv"}

NO_PROVENANCE = "no provenance recorded (an artifact from before tvmforge profile: recompile)"
NOT_RECORDED = "not in the compile's record of kernels (made after fusion)"
SHAPE_FUNC = "the VM's shape computation (dynamic shapes; no ONNX node)"


@dataclass
class KernelRow:
    """One kernel: its time per run and what it computes."""

    kernel: str
    ms: float  # per run (summed over its calls; the quieter half's mean)
    percent: float  # of the kernels' total
    calls: int  # per run
    onnx_nodes: list[str]
    onnx_ops: list[str]
    ops: list[str]  # the TIR ops fused into it
    shapes: list[list[int]]  # its arguments' shapes at the first call (the last: its output)
    flops: float | None
    bytes: int
    gflops: float | None  # per second
    gbs: float | None  # per second
    note: str = ""  # a layout change tvmforge inserted; a kernel no node was followed to
    nodes_total: int = 0  # the nodes it computes, where onnx_nodes lists only the first ones

    @property
    def rate(self) -> str:
        """GFLOP/s where the kernel does at least a FLOP per byte, else GB/s."""
        if self.gflops is not None and self.flops and self.flops >= self.bytes:
            return f"{self.gflops:.1f} GFLOP/s"
        if self.gbs is not None:
            return f"{self.gbs:.1f} GB/s"
        return "-"

    def nodes_text(self, limit: int = 4) -> str:
        """The nodes with their op types, the first ``limit`` of them, then how many more;
        the note alone where no node was followed to the kernel."""
        if not self.onnx_nodes:
            return self.note or NO_PROVENANCE
        shown = ", ".join(self.onnx_nodes[:limit])
        more = max(self.nodes_total, len(self.onnx_nodes)) - min(limit, len(self.onnx_nodes))
        text = shown + (f" +{more} more" if more > 0 else "")
        ops = "/".join(self.onnx_ops[:4]) + ("/..." if len(self.onnx_ops) > 4 else "")
        text = f"{text} [{ops}]" if ops else text
        return f"{text} ({self.note})" if self.note else text

    def shapes_text(self) -> str:
        if not self.shapes:
            return ""
        dims = ["x".join(str(d) for d in s) or "scalar" for s in self.shapes]
        return f"{dims[0]} -> {dims[-1]}" if len(dims) > 1 else dims[0]


@dataclass
class ProfileResult:
    model: str
    target: str
    threads: int
    runs: int
    run_ms: float  # the plain runs (their quieter half's mean): the measured total
    kernels_ms: float  # the rows' sum
    rows: list[KernelRow]
    by_op: dict[str, float]  # tvmforge's kernel time by main ONNX op type
    ort: dict[str, Any] | None = None  # run_ms, nodes_ms, by_op {op: {"ms", "nodes"}}
    notes: list[str] = field(default_factory=list)

    @property
    def outside_ms(self) -> float:
        """The run's time outside the kernels (the VM's own work; below 0 where the plain runs
        met less load than the instrumented ones)."""
        return self.run_ms - self.kernels_ms

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["outside_ms"] = self.outside_ms
        for row, obj in zip(data["rows"], self.rows, strict=True):
            row["rate"] = obj.rate
        return data


def profile(
    model: str | Path,
    target: str = "x86",
    *,
    threads: int | None = None,
    runs: int = 20,
    warmup: int = 3,
    ort: bool = True,
    seed: int = 0,
    **build_options: Any,
) -> ProfileResult:
    """Profile ``model``: an artifact (``.tar`` from ``tvmforge compile``) as it is, or an ONNX
    model / ``zoo:NAME`` compiled here first with ``build_options`` (``build_model``'s).

    ``ort``: also ONNX Runtime's per-op profile of the same model (for an artifact, the source
    model its manifest names, when that file is still there and unchanged)."""
    from tvmforge.runtime import artifact

    if runs < 1:
        raise InputError(f"--runs {runs}: give at least one run")
    notes: list[str] = []
    if Path(model).is_file() and artifact.is_artifact(model):
        if build_options.get("quantize") or build_options.get("prune") is not None:
            raise InputError(f"{model}: an artifact is profiled as it was built",
                             hint="pass the ONNX model to profile it with --quantize/--prune")
        return _profile_artifact(Path(model), str(model), threads, runs, warmup, ort, seed,
                                 None, notes)
    from tvmforge.driver.build import build_model, export

    built = build_model(str(model), target, threads=threads, **build_options)
    with tempfile.TemporaryDirectory(prefix="tvmforge-profile-") as tmp:
        path = export(built, Path(tmp) / "profile.tar")
        return _profile_artifact(path, str(model), threads, runs, warmup, ort, seed,
                                 built.model if ort else None, notes)


def _profile_artifact(path: Path, label: str, threads: int | None, runs: int, warmup: int,
                      ort: bool, seed: int, onnx_model, notes: list[str]) -> ProfileResult:
    from tvmforge.runtime import executor as runtime

    compiled = runtime.load(path, threads=threads, adapt=False)
    executor = compiled._executor
    if not hasattr(executor, "vm"):
        raise InputError(f"{label}: built for {compiled.manifest['target']['key']}, which runs "
                         "here only under emulation: its times would say nothing",
                         hint="profile it on the device, or compile for this machine")
    manifest = compiled.manifest
    kernels = manifest.get("kernels")
    if not isinstance(kernels, dict):
        kernels = None
        notes.append(NO_PROVENANCE)
    arrays = runtime.random_inputs(compiled.inputs, seed)
    args = [arrays[i.name] for i in compiled.inputs]
    run_ms, timed, shapes = _time_kernels(executor, args, runs, warmup)
    rows = _rows(timed, shapes, kernels or {})
    result = ProfileResult(
        model=label,
        target=f"{manifest['target']['key']}:{manifest['target']['preset']}",
        threads=runtime.pool_threads(),
        runs=runs,
        run_ms=run_ms,
        kernels_ms=sum(r.ms for r in rows),
        rows=rows,
        by_op=_by_op(rows),
        notes=notes,
    )
    if ort:
        if onnx_model is None:
            onnx_model = _source_model(manifest, path, notes)
        if onnx_model is not None:
            try:
                result.ort = ort_profile(onnx_model, arrays, result.threads, runs, warmup)
            except Exception as err:
                from tvmforge.frontend.importer import _first_line

                notes.append(f"onnxruntime could not profile the model: {_first_line(err)}")
    return result


def _source_model(manifest: dict[str, Any], artifact_path: Path, notes: list[str]):
    """The model an artifact was built from (its manifest's path: as given to compile, else
    beside the artifact), frozen as it was, or ``None`` with a note."""
    from tvmforge.frontend import importer as frontend
    from tvmforge.runtime.artifact import sha256_of

    source = str(manifest["model"]["source"])
    if not source.startswith("zoo:"):
        found = [p for p in (Path(source), artifact_path.parent / source) if p.is_file()]
        if not found:
            notes.append(f"onnxruntime skipped: the source model {source} is not there")
            return None
        source = str(found[0])
        if manifest["model"].get("sha256") and sha256_of(source) != manifest["model"]["sha256"]:
            notes.append(f"onnxruntime skipped: {source} changed since the artifact was built")
            return None
    try:
        model = frontend.load(source)
        return frontend.freeze_inputs(model, manifest.get("frozen_inputs") or {})
    except Exception as err:
        notes.append(f"onnxruntime skipped: cannot load {source}: {err}")
        return None


def _time_kernels(executor, args: list[np.ndarray], runs: int, warmup: int):
    """``(plain run ms, {kernel: (ms per run, calls per run)}, {kernel: (arg shapes, arg bytes)
    of its first call})``. Plain and instrumented runs alternate, so the machine's load falls
    on both alike; each figure is a mean over the quieter half of its runs (``_quiet_half``),
    a kernel's over the instrumented runs whose kernels took the least in all, so the rows add
    up to what those runs spent in kernels."""
    vm = executor.vm
    dev = executor.dev
    on_cpu = getattr(executor, "_on_cpu", True)
    tensors = executor._tensors(args)
    main = vm["main"]
    for _ in range(warmup):
        main(*tensors)
    calls: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.defaultdict(int)
    shapes: dict[str, list[list[int]]] = {}
    started: list[float] = [0.0]

    def instrument(func, name, before, ret, *call_args):
        if before:
            if name not in shapes and not name.startswith("vm."):
                tensors_ = [a for a in call_args if hasattr(a, "shape")]
                shapes[name] = ([[int(d) for d in a.shape] for a in tensors_],
                                sum(_nbytes(a) for a in tensors_))
            if not on_cpu:
                dev.sync()
            started[0] = time.perf_counter()
        else:
            if not on_cpu:
                dev.sync()
            calls[name] += time.perf_counter() - started[0]
            counts[name] += 1
        return 0

    plain: list[float] = []
    per_run: list[dict[str, float]] = []
    for k in range(runs):
        t0 = time.perf_counter()
        main(*tensors)
        dev.sync()
        plain.append(time.perf_counter() - t0)
        calls.clear()
        vm.set_instrument(instrument)
        try:
            main(*tensors)
        finally:
            vm.set_instrument(None)
        per_run.append({name: s * 1e3 for name, s in calls.items() if not name.startswith("vm.")})
        if k == 0:
            calls_per_run = dict(counts)
    quiet = _quiet_half([sum(run.values()) for run in per_run])
    names = dict.fromkeys(name for run in per_run for name in run)
    timed = {name: (statistics.fmean(per_run[k].get(name, 0.0) for k in quiet),
                    calls_per_run.get(name, 0)) for name in names}
    plain_ms = [plain[k] * 1e3 for k in _quiet_half(plain)]
    return statistics.fmean(plain_ms), timed, shapes


def _quiet_half(totals: list[float]) -> list[int]:
    """The runs whose total is at most the median: on shared cores a run that another
    program interrupted (a kernel descheduled for a time slice) is left out."""
    cut = statistics.median(totals)
    return [k for k, t in enumerate(totals) if t <= cut]


def _nbytes(tensor) -> int:
    """A tensor argument's size in bytes."""
    try:
        itemsize = np.dtype(str(tensor.dtype)).itemsize
    except TypeError:
        itemsize = 1
    return int(np.prod([int(d) for d in tensor.shape])) * itemsize


def _rows(timed: dict[str, tuple[float, int]],
          shapes: dict[str, tuple[list[list[int]], int]],
          kernels: dict[str, dict[str, Any]]) -> list[KernelRow]:
    """One row per kernel that ran, slowest first."""
    times = {name: ms for name, (ms, _) in timed.items()}
    total = sum(times.values()) or 1.0
    rows = []
    for name, ms in sorted(times.items(), key=lambda kv: -kv[1]):
        calls = timed[name][1]
        info = kernels.get(name)
        info = info if isinstance(info, dict) else None
        arg_shapes, call_bytes = shapes.get(name, ([], 0))
        nbytes = call_bytes * max(calls, 1)
        flops = None
        if info is not None and info.get("flops") is not None:
            flops = float(info["flops"]) * max(calls, 1)
        seconds = ms / 1e3
        note = ""
        if name.startswith("shape_func"):
            note = SHAPE_FUNC
        elif info is None:
            note = NOT_RECORDED if kernels else NO_PROVENANCE
        elif info.get("inserted"):
            note = info["inserted"]
        elif info.get("inferred"):
            note = "nodes inferred from the op that consumes it"
        rows.append(KernelRow(
            kernel=name,
            ms=ms,
            percent=100.0 * ms / total,
            calls=calls,
            onnx_nodes=list(info["onnx_nodes"]) if info else [],
            onnx_ops=list(info.get("onnx_ops", [])) if info else [],
            ops=list(info.get("ops", [])) if info else [],
            shapes=arg_shapes,
            flops=flops,
            bytes=nbytes,
            gflops=flops / seconds / 1e9 if flops and seconds > 0 else None,
            gbs=nbytes / seconds / 1e9 if seconds > 0 else None,
            note=note,
            nodes_total=int(info.get("nodes_total", 0)) if info else 0,
        ))
    return rows


def main_op(row: KernelRow) -> str:
    """The op type a kernel's time counts under (``HEAVY_OPS``; layout changes and kernels
    no node was followed to under a name of their own)."""
    if not row.onnx_ops:
        if row.note == SHAPE_FUNC:
            return "(VM shapes)"
        return "(tvmforge layout)" if "layout" in row.note else "(untraced)"
    if "layout transform" in row.note:
        return "(tvmforge layout)"
    return next((op for op in HEAVY_OPS if op in row.onnx_ops), row.onnx_ops[0])


def _by_op(rows: list[KernelRow]) -> dict[str, float]:
    by_op: dict[str, float] = collections.defaultdict(float)
    for row in rows:
        by_op[main_op(row)] += row.ms
    return dict(sorted(by_op.items(), key=lambda kv: -kv[1]))


def ort_profile(model, arrays: dict[str, np.ndarray], threads: int, runs: int,
                warmup: int = 3) -> dict[str, Any]:
    """ONNX Runtime's profile of ``model`` (an ``OnnxModel``) on ``arrays``:
    ``{"run_ms": median run, "nodes_ms": sum of node medians,
    "by_op": {op type: {"ms": sum of its nodes' medians, "nodes": count}},
    "nodes": [{"node", "op", "ms", "inputs": [shape, ...], "output": [shape, ...]}, ...]}``
    (nodes slowest first; ONNX Runtime's own node names, after its graph optimizations)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="tvmforge-ort-profile-") as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(reference.as_given(model).SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        feed = reference.feed(model, [i.name for i in sess.get_inputs()], arrays)
        for _ in range(warmup + runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    node_times: dict[str, list[float]] = collections.defaultdict(list)
    about: dict[str, dict[str, Any]] = {}
    run_times = []
    for e in events:
        if e.get("cat") == "Session" and e.get("name") == "model_run":
            run_times.append(e["dur"] / 1e3)
        elif e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            node_times[node].append(e["dur"] / 1e3)
            args = e.get("args", {})
            op = str(args.get("op_name", "?"))
            about[node] = {
                "op": ORT_FUSED.get(op, op),
                "inputs": [next(iter(d.values())) for d in args.get("input_type_shape", [])],
                "output": [next(iter(d.values())) for d in args.get("output_type_shape", [])],
            }
    nodes = sorted(({"node": node, "ms": statistics.median(times[warmup:] or times),
                     **about[node]} for node, times in node_times.items()),
                   key=lambda n: -n["ms"])
    by_op: dict[str, dict[str, float]] = {}
    for n in nodes:
        entry = by_op.setdefault(n["op"], {"ms": 0.0, "nodes": 0})
        entry["ms"] += n["ms"]
        entry["nodes"] += 1
    by_op = dict(sorted(by_op.items(), key=lambda kv: -kv[1]["ms"]))
    return {
        "run_ms": statistics.median(run_times[warmup:] or run_times) if run_times else None,
        "nodes_ms": sum(n["ms"] for n in nodes),
        "by_op": by_op,
        "nodes": nodes,
    }


def table(result: ProfileResult, top: int | None = None) -> list[str]:
    """The report as text lines (``tvmforge profile``'s output)."""
    r = result
    lines = [
        f"profile {r.model} on {r.target}, {r.threads} thread(s), {r.runs} runs (the quieter "
        "half's mean)",
        f"run {r.run_ms:.3f} ms; kernels {r.kernels_ms:.3f} ms "
        f"({100 * r.kernels_ms / max(r.run_ms, 1e-9):.0f}% of the run); outside kernels "
        + (f"{r.outside_ms:.3f} ms (the VM's allocations, shape checks, views)"
           if r.outside_ms >= 0 else "none measurable (the plain runs were the faster: a "
           "busy machine)"),
        f"{'ms':>8} {'%':>6} {'calls':>5} {'rate':>16}  {'kernel':<40} {'shapes (in -> out)':<30}"
        " ONNX nodes [op types]",
    ]
    shown = r.rows if top is None else r.rows[:top]
    for row in shown:
        name = row.kernel if len(row.kernel) <= 40 else row.kernel[:37] + "..."
        lines.append(f"{row.ms:8.3f} {row.percent:5.1f}% {row.calls:5d} {row.rate:>16}  "
                     f"{name:<40} {row.shapes_text():<30} {row.nodes_text()}")
    rest = r.rows[len(shown):]
    if rest:
        lines.append(f"  ... {len(rest)} more kernel(s), {sum(x.ms for x in rest):.3f} ms "
                     "(--top to show more)")
    lines.append("by op type (a kernel counts under its main op)      tvmforge    onnxruntime")
    ort_ops = (r.ort or {}).get("by_op", {})
    for op in list(dict.fromkeys([*r.by_op, *ort_ops])):
        ours = f"{r.by_op[op]:9.3f} ms" if op in r.by_op else f"{'-':>12}"
        theirs = (f"{ort_ops[op]['ms']:9.3f} ms ({int(ort_ops[op]['nodes'])} nodes)"
                  if op in ort_ops else ("-" if r.ort else ""))
        lines.append(f"  {op:<48} {ours}  {theirs}")
    if r.ort:
        run = r.ort["run_ms"]
        ratio = f"; tvmforge/onnxruntime {r.run_ms / run:.2f}x" if run else ""
        lines.append(f"onnxruntime: run {run:.3f} ms, its nodes {r.ort['nodes_ms']:.3f} ms"
                     f"{ratio}" if run else f"onnxruntime: its nodes {r.ort['nodes_ms']:.3f} ms")
    lines += [f"note: {n}" for n in r.notes]
    return lines
