"""Import coverage: which real models and ONNX test models tvmforge compiles, and how closely
they match. Regenerates the README's coverage table.

Usage::

    python benchmarks/coverage.py --out benchmarks/results

Real models (PP-OCRv4 det/rec/cls from rapidocr-onnxruntime 1.4.4, every silero-vad 6.2.3
model) are compared with ONNX Runtime on the same seeded inputs; the ONNX wheel's
pytorch-converted / pytorch-operator models with their shipped expected outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np


def _real_models():
    from tvmforge.frontend import zoo

    for name in sorted(zoo.WHEEL_MODELS):
        yield f"zoo:{name}", f"zoo:{name}", {}, {}
    for member in zoo.wheel_members("silero-vad==6.2.3"):
        path = zoo.fetch_wheel_member("silero-vad==6.2.3", member)
        label = f"silero-vad/{Path(member).name}"
        if "sequence" in member:
            yield label, str(path), {"input": (4, 576)}, {}
        elif "openvino" in member:
            yield label, str(path), {}, {}
        else:
            frozen = {} if "half" in member else {"sr": [16000.0]}
            yield label, str(path), {"input": (1, 512), "state": (2, 1, 128)}, frozen


def real_rows() -> list[dict]:
    from tvmforge.bench import reference
    from tvmforge.driver import build
    from tvmforge.frontend import importer as frontend
    from tvmforge.runtime import executor as runtime

    rows = []
    for label, spec, shapes, frozen in _real_models():
        model = frontend.load(spec)
        ops = Counter(n.op_type for n in model.proto.graph.node)
        row = {"model": label, "ops": len(ops), "nodes": sum(ops.values())}
        t0 = time.perf_counter()
        try:
            built = build.build_model(model, "x86", input_shapes=shapes, frozen_inputs=frozen)
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                lib = Path(tmp) / "lib.so"
                built.executable.export_library(str(lib))
                arrays = runtime.random_inputs(built.inputs, seed=0)
                outs = runtime.LocalVM(lib, "cpu").run([arrays[i.name] for i in built.inputs])
            ours = dict(zip([o.name for o in built.outputs], outs, strict=True))
            cmp = reference.compare(ours, reference.run_onnxruntime(built.model, arrays))
            row.update(
                status="ok" if all(c.ok for c in cmp) else "MISMATCH",
                max_abs_err=max(c.max_abs for c in cmp),
                max_rel_err=max(c.max_rel for c in cmp),
            )
        except Exception as err:
            row.update(status=f"failed: {str(err).splitlines()[0][:120]}")
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def onnx_test_rows() -> list[dict]:
    from tvmforge.bench import onnx_tests

    rows = []
    for case in onnx_tests.cases():
        try:
            ours, expected = onnx_tests.run_case(case)
            ok = len(ours) == len(expected) and all(
                o.shape == e.shape and np.allclose(o, e, rtol=1e-3, atol=1e-5, equal_nan=True)
                for o, e in zip(ours, expected, strict=False)
            )
            err = max(
                (float(np.nanmax(np.abs(o.astype(np.float64) - e))) if o.size else 0.0)
                for o, e in zip(ours, expected, strict=False)
            )
            rows.append(
                {"model": case.id, "status": "ok" if ok else "MISMATCH", "max_abs_err": err}
            )
        except Exception as e:
            rows.append({"model": case.id, "status": f"failed: {str(e).splitlines()[0][:120]}"})
    return rows


def markdown(real: list[dict], tests: list[dict], date: str) -> str:
    lines = [
        f"Measured {date}; command: `python benchmarks/coverage.py`.",
        "",
        "| real model | distinct ops | nodes | status | max abs err | max rel err |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for r in real:
        err = f"{r['max_abs_err']:.2g} | {r['max_rel_err']:.2g}" if "max_abs_err" in r else " | "
        lines.append(f"| {r['model']} | {r['ops']} | {r['nodes']} | {r['status']} | {err} |")
    passed = sum(r["status"] == "ok" for r in tests)
    lines += [
        "",
        f"ONNX wheel test models (pytorch-converted + pytorch-operator): **{passed} of "
        f"{len(tests)} pass** ({100 * passed / len(tests):.1f} %), against their shipped outputs "
        "(rtol 1e-3, atol 1e-5).",
    ]
    failures = [r for r in tests if r["status"] != "ok"]
    if failures:
        lines += ["", "| failing test model | reason |", "|---|---|"]
        lines += [f"| {r['model']} | {r['status']} |" for r in failures]
    else:
        lines.append("No failures.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    real, tests = real_rows(), onnx_test_rows()
    date = time.strftime("%Y-%m-%d")
    (args.out / "coverage.json").write_text(json.dumps({"real": real, "tests": tests}, indent=2))
    md = markdown(real, tests, date)
    (args.out / "coverage.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
