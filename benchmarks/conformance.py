"""ONNX's operator conformance suite through tvmforge and ONNX Runtime: the table of which node
cases pass, with the one-line reason for each failure and totals by operator.

Usage::

    python benchmarks/conformance.py                      # the whole suite, 2 workers
    python benchmarks/conformance.py --cases 'test_reduce_*' --workers 1
    python benchmarks/conformance.py --out benchmarks/results --timeout 300

Every case runs in a worker process (``--workers``, one TVM and ORT thread each); a case that
takes longer than ``--timeout`` seconds is recorded as a hang and a case that kills its worker
as a crash, and the worker is replaced. Writes ``conformance.json`` (every case) and
``conformance.md`` (totals, failures by cause, by operator, every failing case).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _worker() -> int:
    """Read case folders on stdin, write one JSON line of outcomes per case on stdout."""
    import logging

    logging.disable(logging.CRITICAL)
    from tvmforge.bench import conformance

    out = sys.stdout
    sys.stdout = sys.stderr  # nothing a case prints may corrupt the protocol
    for line in sys.stdin:
        folder = Path(line.strip())
        ort = conformance.run_ort(folder)
        ours = conformance.run_case(folder)
        out.write(json.dumps({"ort": ort.to_json(), "tvmforge": ours.to_json()}) + "\n")
        out.flush()
    return 0


class Worker:
    def __init__(self) -> None:
        env = dict(os.environ, TVM_NUM_THREADS="1", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
            bufsize=1,
        )
        self.case: str | None = None
        self.started = 0.0

    def send(self, case: str, folder: Path) -> None:
        self.case, self.started = case, time.monotonic()
        self.proc.stdin.write(f"{folder}\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def run_suite(root: Path, cases: list[str], workers: int, timeout: float) -> dict[str, dict]:
    results: dict[str, dict] = {}
    todo = list(reversed(cases))
    pool = [Worker() for _ in range(min(workers, len(cases)))]
    t0 = time.monotonic()

    def record(case: str, row: dict) -> None:
        results[case] = row
        ours = row["tvmforge"]
        mark = "." if ours["status"] == "pass" else ("x" if row["ort"]["status"] == "pass" else "-")
        done = len(results)
        print(
            f"[{done}/{len(cases)} {time.monotonic() - t0:.0f}s] {mark} {case}"
            + ("" if ours["status"] == "pass" else f": {ours['reason'][:150]}"),
            flush=True,
        )

    for w in pool:
        if todo:
            c = todo.pop()
            w.send(c, root / c)
    while any(w.case for w in pool):
        busy = [w for w in pool if w.case]
        ready, _, _ = select.select([w.proc.stdout for w in busy], [], [], 1.0)
        now = time.monotonic()
        for w in busy:
            line = None
            if w.proc.stdout in ready:
                line = w.proc.stdout.readline()
            if line:
                record(w.case, json.loads(line))
                w.case = None
            elif w.proc.stdout in ready or w.proc.poll() is not None:
                code = w.proc.wait()
                record(w.case, _broken(root / w.case, f"crash: the worker died (exit {code})"))
                w.__init__()
            elif now - w.started > timeout:
                w.kill()
                record(w.case, _broken(root / w.case, f"hang: no result in {timeout:.0f} s"))
                w.__init__()
            else:
                continue
            if todo:
                c = todo.pop()
                w.send(c, root / c)
    for w in pool:
        w.proc.stdin.close()
        w.proc.wait()
    return results


def _broken(folder: Path, reason: str) -> dict:
    """A case whose worker crashed or hung: ORT is rerun alone to know whether it counts."""
    from tvmforge.bench import conformance

    return {
        "ort": conformance.run_ort(folder).to_json(),
        "tvmforge": {"status": "error", "reason": reason, "seconds": 0.0},
    }


def summarize(results: dict[str, dict], root: Path) -> dict:
    from tvmforge.bench import conformance

    counted = {c: r for c, r in results.items() if r["ort"]["status"] == "pass"}
    passed = [c for c, r in counted.items() if r["tvmforge"]["status"] == "pass"]
    by_op: dict[str, Counter] = defaultdict(Counter)
    causes: Counter = Counter()
    for case, r in counted.items():
        op = r.get("op") or conformance.op_of(root / case)
        r["op"] = op
        ok = r["tvmforge"]["status"] == "pass"
        by_op[op]["cases"] += 1
        by_op[op]["pass"] += ok
        if not ok:
            causes[conformance.cause(r["tvmforge"]["reason"])] += 1
    unloadable = [  # ONNX Runtime refuses the model itself (a newer opset or IR version)
        r for r in results.values()
        if r["ort"]["status"] == "error"
        and "Unsupported" in r["ort"]["reason"]
        and "Model::Model" in r["ort"]["reason"]
    ]
    return {
        "cases": len(results),
        "ort_pass": len(counted),
        "tvmforge_pass": len(passed),
        "tvmforge_pass_frozen": sum(1 for c in passed if counted[c]["tvmforge"].get("frozen")),
        "ort_cannot_load": len(unloadable),
        "tvmforge_pass_where_ort_cannot_load": sum(
            r["tvmforge"]["status"] == "pass" for r in unloadable
        ),
        "tvmforge_pass_beyond_ort": sum(
            1
            for r in results.values()
            if r["ort"]["status"] != "pass" and r["tvmforge"]["status"] == "pass"
        ),
        "by_op": {op: dict(c) for op, c in sorted(by_op.items())},
        "causes": causes.most_common(),
    }


def markdown(summary: dict, results: dict[str, dict], meta: dict) -> str:
    n, p = summary["ort_pass"], summary["tvmforge_pass"]
    lines = [
        f"# ONNX node conformance (onnx {meta['onnx']}, onnxruntime {meta['onnxruntime']})",
        "",
        f"Measured {meta['date']} on {meta['cpu']}; command: `{meta['command']}`.",
        "",
        f"{summary['cases']} node cases with plain-tensor inputs and outputs; ONNX Runtime "
        f"passes {n}. **tvmforge passes {p} of those {n} ({100 * p / max(n, 1):.1f} %)** "
        f"(and {summary['tvmforge_pass_beyond_ort']} that ONNX Runtime fails). Each case is "
        "compiled for `x86` and compared with the case's expected outputs (rtol 1e-3, atol "
        "1e-5; shape and dtype exact).",
        "",
        f"- {p - summary['tvmforge_pass_frozen']} pass as they are; "
        f"{summary['tvmforge_pass_frozen']} feed a value that fixes a result's shape (a reduce's "
        "`axes`, `TopK`'s `k`, `Resize`'s `sizes`, a `Reshape` target) as a graph input: "
        "tvmforge refuses them in one line that names the input and the `--freeze` that fixes "
        "it, and they pass with that `--freeze` (the case's own value), as a user would run "
        "them. The `frozen` field of each case in `conformance.json` lists them.",
        f"- {summary['ort_cannot_load']} cases ONNX Runtime cannot load (opset 28 or IR 14, "
        "newer than it supports) do not count; tvmforge passes "
        f"{summary['tvmforge_pass_where_ort_cannot_load']} of them.",
        "- String tensors are not compiled by design: those cases are refused with the reason.",
        "",
        "## Failures by cause",
        "",
        "| cases | cause |",
        "|---:|---|",
    ]
    lines += [f"| {k} | {c.replace('|', '/')} |" for c, k in summary["causes"]]
    lines += ["", "## By operator (cases ONNX Runtime passes)", "", "| op | pass | cases |",
              "|---|---:|---:|"]
    for op, c in summary["by_op"].items():
        lines.append(f"| {op} | {c.get('pass', 0)} | {c['cases']} |")
    lines += ["", "## Every failing case", "", "| case | op | reason |", "|---|---|---|"]
    for case, r in sorted(results.items()):
        if r["ort"]["status"] == "pass" and r["tvmforge"]["status"] != "pass":
            reason = r["tvmforge"]["reason"].replace("|", "/")[:200]
            lines.append(f"| {case} | {r.get('op', '')} | {reason} |")
    return "\n".join(lines) + "\n"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--cases", action="append", help="glob(s) of case names (default: all)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per case")
    ap.add_argument("--cache", type=Path, default=None, help="where the cases are written")
    ap.add_argument("--rewrite", action="store_true",
                    help="rewrite conformance.md from the existing conformance.json")
    ap.add_argument("--merge", action="store_true",
                    help="update the existing conformance.json with these cases' results")
    args = ap.parse_args(argv)
    if args.worker:
        return _worker()
    import onnx
    import onnxruntime

    from tvmforge.bench import conformance

    root = args.cache or Path(tempfile.gettempdir()) / f"tvmforge-conformance-{onnx.__version__}"
    cases = conformance.write_cases(root)
    if args.cases:
        cases = [c for c in cases if any(fnmatch.fnmatch(c, g) for g in args.cases)]
    path = args.out / "conformance.json"
    if args.rewrite:  # only the tables, from the last run's results
        previous = json.loads(path.read_text())
        summary = summarize(previous["cases"], root)
        (args.out / "conformance.md").write_text(
            markdown(summary, previous["cases"], previous["meta"])
        )
        path.write_text(json.dumps({**previous, "summary": summary}, indent=1))
        return 0
    results = run_suite(root, cases, args.workers, args.timeout)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.merge and path.exists():
        results = {**json.loads(path.read_text())["cases"], **results}
    summary = summarize(results, root)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": _cpu(),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "command": "python benchmarks/conformance.py",
    }
    path.write_text(json.dumps({"meta": meta, "summary": summary, "cases": results}, indent=1))
    (args.out / "conformance.md").write_text(markdown(summary, results, meta))
    n, p = summary["ort_pass"], summary["tvmforge_pass"]
    print(f"tvmforge passes {p} of the {n} cases ONNX Runtime passes ({100 * p / max(n, 1):.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
