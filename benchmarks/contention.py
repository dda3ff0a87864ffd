"""tvmforge against ONNX Runtime (and OpenVINO) on a machine that is not theirs alone: quiet,
beside busy neighbour processes, and confined to fewer CPUs.

Usage::

    python benchmarks/contention.py --models zoo:resnet50 zoo:shufflenet --rounds 6 \\
        --name contention_epyc

For each model (compiled once, untuned unless ``--tune``) and each condition:

- ``quiet``: nothing else runs;
- ``busy1`` / ``busy2``: 1 or 2 neighbour processes that keep a CPU busy each (``yes >
  /dev/null``), started before and stopped after the condition by this script;
- ``taskset1``: the benchmark process may run on one CPU only (its affinity mask, as
  ``taskset -c 0`` sets it), so every library picks its thread count from that;
- ``quota1``: a cgroup v2 CPU quota of one CPU (``cpu.max``), where this machine lets the
  script create a cgroup; otherwise the row says why it was skipped.

In each condition two fresh processes run: one with tvmforge's default runtime (the thread
count adapts to contention, ``tvmforge.runtime.contention``) and one with the count fixed
(``load(adapt=False)``, the runtime before the adaptation). Each alternates rounds of
``--runs`` inferences with ONNX Runtime (same thread count, a 0.3 s pause between blocks so
that one library's spinning threads do not slow the other), so both ratios are taken in one
run. With ``openvino`` installed (``pip install openvino``; not a dependency of tvmforge) its
default CPU build of the ONNX model (bf16 on AMX CPUs, f32 elsewhere) runs in the same rounds.
Writes ``<out>/<name>.json`` and ``<out>/<name>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONDITIONS = ("quiet", "busy1", "busy2", "taskset1", "quota1")
SETTLE_S = 0.3


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "median_ms": round(float(np.median(ms)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def worker(artifact: str, model: str, adapt: bool, rounds: int, runs: int) -> dict:
    """Alternate tvmforge and ONNX Runtime in this process; medians, tails and the ratio."""
    import tvmforge
    from tvmforge.bench.reference import session
    from tvmforge.frontend.importer import load as load_model
    from tvmforge.runtime.executor import random_inputs, thread_choice

    threads = thread_choice()[0] or 1
    compiled = tvmforge.load(artifact, threads=threads, adapt=adapt)
    arrays = random_inputs(compiled.inputs, seed=0)
    onnx_model = load_model(model)
    sess = session(onnx_model, threads)
    libraries = {
        "tvmforge": lambda: compiled(**arrays),
        "ort": lambda: sess.run(None, arrays),
    }
    openvino = _openvino(onnx_model.proto, threads)
    if openvino is not None:
        request = openvino.create_infer_request()
        libraries["openvino"] = lambda: request.infer(arrays)
    for warm in libraries.values():
        for _ in range(3):
            warm()
        time.sleep(SETTLE_S)  # (back to back, each library's spinning threads slow the other)
    times: dict[str, list[float]] = {name: [] for name in libraries}
    ratios: dict[str, list[float]] = {name: [] for name in libraries if name != "tvmforge"}
    for _ in range(rounds):
        medians = {}
        for name, call in libraries.items():
            block = []
            time.sleep(SETTLE_S)
            for _ in range(runs):
                t0 = time.perf_counter()
                call()
                block.append(time.perf_counter() - t0)
            times[name] += block
            medians[name] = np.median(block)
        for name in ratios:
            ratios[name].append(float(medians["tvmforge"] / medians[name]))
    governor = compiled.governor
    result = {
        "threads": threads,
        **{name: _stats(t) for name, t in times.items()},
        "ratio": round(float(np.median(ratios["ort"])), 3),
        "thread_changes": [c[1] for c in governor.changes] if governor else [],
    }
    if "openvino" in ratios:
        result["ratio_openvino"] = round(float(np.median(ratios["openvino"])), 3)
    return result


def _openvino(proto, threads: int):
    """The model compiled by OpenVINO for the CPU with its defaults (bf16 on AMX CPUs) and
    ``threads`` inference threads, or ``None`` when openvino is not installed
    (``pip install openvino``)."""
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(proto.SerializeToString())
        return core.compile_model(core.read_model(str(path)), "CPU",
                                  {"INFERENCE_NUM_THREADS": threads})


class _Condition:
    """Neighbours started, or a confinement prepared, for one condition."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.procs: list[subprocess.Popen] = []
        self.cgroup: Path | None = None
        self.skipped: str | None = None
        self.prefix: list[str] = []

    def __enter__(self) -> _Condition:
        if self.name.startswith("busy"):
            busy = shutil.which("yes")
            cmd = [busy] if busy else [sys.executable, "-c", "while True: pass"]
            for _ in range(int(self.name.removeprefix("busy"))):
                self.procs.append(
                    subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                )
            time.sleep(0.5)
        elif self.name == "taskset1":
            cpu = min(os.sched_getaffinity(0))
            self.prefix = ["taskset", "-c", str(cpu)] if shutil.which("taskset") else []
            if not self.prefix:
                self.skipped = "taskset is not installed"
        elif self.name == "quota1":
            self.skipped = self._make_cgroup()
        return self

    def _make_cgroup(self) -> str | None:
        root = Path("/sys/fs/cgroup")
        if not (root / "cgroup.controllers").exists():
            return "no cgroup v2 hierarchy at /sys/fs/cgroup"
        try:
            if "cpu" not in (root / "cgroup.controllers").read_text().split():
                return "the cgroup v2 cpu controller is not available"
            group = root / f"tvmforge-bench-{os.getpid()}"
            group.mkdir()
            (group / "cpu.max").write_text("100000 100000\n")
            self.cgroup = group
        except OSError as err:
            return f"cannot create a cgroup with a CPU quota here ({err.strerror})"
        return None

    def run(self, argv: list[str]) -> subprocess.CompletedProcess:
        if self.cgroup is None:
            return subprocess.run(self.prefix + argv, capture_output=True, text=True)
        procs = self.cgroup / "cgroup.procs"
        launcher = f"echo $$ > {procs} && exec \"$@\""
        return subprocess.run(["sh", "-c", launcher, "sh", *argv], capture_output=True, text=True)

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        if self.cgroup is not None:
            try:
                self.cgroup.rmdir()
            except OSError:
                pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["zoo:resnet50", "zoo:shufflenet"])
    ap.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--runs", type=int, default=5, help="inferences per round and library")
    ap.add_argument("--target", default="x86")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--name", default="contention")
    ap.add_argument("--worker", nargs=3, metavar=("ARTIFACT", "MODEL", "ADAPT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        artifact, model, adapt = args.worker
        print(json.dumps(worker(artifact, model, adapt == "1", args.rounds, args.runs)))
        return 0

    import tvmforge

    sys.path.insert(0, str(Path(__file__).parent))
    from run import load_average, machine

    rows = []
    with tempfile.TemporaryDirectory(prefix="tvmforge-contention-") as tmp:
        for model in args.models:
            artifact = Path(tmp) / f"{model.replace(':', '_')}.tar"
            tvmforge.compile_model(
                model, target=args.target, output=artifact, use_shipped_logs=False
            )
            for cond in args.conditions:
                row = {"model": model, "condition": cond}
                with _Condition(cond) as c:
                    if c.skipped:
                        row["skipped"] = c.skipped
                    for adapt in ("1", "0") if not c.skipped else ():
                        res = c.run([
                            sys.executable, __file__, "--worker", str(artifact), model, adapt,
                            "--rounds", str(args.rounds), "--runs", str(args.runs),
                        ])
                        key = "adaptive" if adapt == "1" else "fixed"
                        try:
                            row[key] = json.loads(res.stdout.strip().splitlines()[-1])
                        except (IndexError, json.JSONDecodeError):
                            row[key] = {"error": (res.stderr.strip().splitlines() or ["?"])[-1]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": "python benchmarks/contention.py " + " ".join(argv or sys.argv[1:]),
        "load_average": load_average(),
        "rounds": args.rounds,
        "runs": args.runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (args.out / f"{args.name}.md").write_text(markdown(meta, rows))
    print((args.out / f"{args.name}.md").read_text())
    return 0


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        f"Measured {meta['date']} on {meta['machine']}; {meta['rounds']} rounds of "
        f"{meta['runs']} runs per library, alternating, untuned builds.",
        f"Command: `{meta['command']}`",
        "",
        "Latency in ms (median / p99); ratio = tvmforge / ONNX Runtime, median of the "
        "per-round ratios, lower is better. *adaptive*: tvmforge's runtime as shipped (the "
        "thread count follows contention); *fixed*: the thread count held.",
        "",
        "| model | condition | threads | tvmforge adaptive | ORT | ratio | tvmforge fixed | ORT "
        "| ratio | adaptive went to | OpenVINO (tvmforge adaptive / OpenVINO) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]

    def cells(r: dict | None) -> list[str]:
        if not r:
            return ["", "", ""]
        if "error" in r:
            return [f"failed: {r['error']}", "", ""]
        t, o = r["tvmforge"], r["ort"]
        return [
            f"{t['median_ms']:.1f} / {t['p99_ms']:.1f}",
            f"{o['median_ms']:.1f} / {o['p99_ms']:.1f}",
            f"{r['ratio']:.2f}x",
        ]

    def openvino(r: dict | None) -> str:
        if not r or "openvino" not in r:
            return ""
        v = r["openvino"]
        return f"{v['median_ms']:.1f} / {v['p99_ms']:.1f} ({r['ratio_openvino']:.2f}x)"

    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['model']} | {row['condition']} | | skipped: {row['skipped']} "
                         "| | | | | | | |")
            continue
        a, f = row.get("adaptive"), row.get("fixed")
        threads = (a or f or {}).get("threads", "")
        went = a.get("thread_changes") if a and "error" not in a else None
        lines.append(
            f"| {row['model']} | {row['condition']} | {threads} | "
            + " | ".join(cells(a) + cells(f))
            + f" | {' -> '.join(map(str, went)) if went else 'unchanged'} | {openvino(a)} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
