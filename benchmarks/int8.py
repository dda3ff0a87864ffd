"""int8 against float, tvmforge against ONNX Runtime: one table per run.

For each model, four variants run in one process on the same input and thread count:

- tvmforge float (``build_model``), tvmforge int8 (``--quantize int8``);
- ONNX Runtime float, ONNX Runtime int8: the same model quantized by
  ``onnxruntime.quantization.quantize_static`` (QDQ format, ``per_channel=True``, uint8
  activations, int8 weights, MinMax), calibrated on the same samples as tvmforge.

Timing: rounds interleave the variants (the order rotates each round), each variant's time in
a round is the best of 3 calls; the table gives each variant's median over the rounds and the
medians of the per-round ratios, so noise from other users of the machine hits all alike.
Output agreement: ``||int8 - float|| / ||float||`` on a held-out input, for tvmforge and for
ONNX Runtime, and tvmforge int8 against ONNX Runtime int8. Artifact size: the exported
library of each tvmforge build (bytes), and the bytes of the constants it carries.

Usage::

    python benchmarks/int8.py zoo:resnet50 zoo:ppocr-det --rounds 15 \
        --write benchmarks/results/int8.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Pause before each variant: TVM's and ONNX Runtime's idle workers spin for a while after a
# run (tvmforge's ~30 ms); a variant timed right after another would share the cores with it.
SETTLE_S = 0.1


def ort_session(proto_bytes: bytes, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(proto_bytes, opts, providers=["CPUExecutionProvider"])


def ort_quantize(proto, samples: list[dict[str, np.ndarray]], folder: Path) -> bytes:
    """``quantize_static`` (QDQ, per channel) of ``proto`` calibrated on ``samples``."""
    from prequantized import quantize_ort  # benchmarks/prequantized.py, beside this script

    return quantize_ort(proto, samples, folder, "QDQ")


def library_bytes(built, folder: Path, name: str) -> int:
    path = folder / f"{name}.so"
    built.executable.export_library(str(path))
    return path.stat().st_size


def constant_bytes(built) -> int:
    """Bytes of the serialized VM executable: its constants (weights, biases, scales) and
    bytecode; the kernels' machine code is not in it."""
    import tvm

    pack = tvm.get_global_func("runtime.ModulePackImportsToTensor")
    return int(pack(built.executable.mod).shape[0])


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b), 1e-30))


def bench_model(spec: str, args) -> dict:
    import tvm
    from tvm import relax

    from tvmforge.driver.build import build_model
    from tvmforge.driver.calibration import load_samples

    t0 = time.perf_counter()
    f = build_model(spec, "x86", threads=args.threads)
    inputs = f.inputs
    samples = load_samples(args.calibration, inputs, random_samples=args.samples)
    calib = {i.name: np.stack([s[k] for s in samples]) for k, i in enumerate(inputs)}
    q = build_model(spec, "x86", threads=args.threads, quantize="int8", calibration=calib)
    build_s = time.perf_counter() - t0
    proto = f.model.proto
    with tempfile.TemporaryDirectory(prefix="tvmforge-int8-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        ort_q = ort_quantize(
            proto, [{i.name: s[k] for k, i in enumerate(inputs)} for s in samples], folder
        )
        ort_quant_s = time.perf_counter() - t0
        size = {"float": library_bytes(f, folder, "float"), "int8": library_bytes(q, folder, "q")}
    consts = {"float": constant_bytes(f), "int8": constant_bytes(q)}

    rng = np.random.default_rng(1234)  # held-out input, not a calibration sample
    held = [rng.random([int(d) for d in i.shape]).astype(i.dtype) for i in inputs]
    feed = {i.name: a for i, a in zip(inputs, held, strict=True)}
    dev = tvm.cpu()
    targs = [tvm.runtime.tensor(a, dev) for a in held]
    vms = {k: relax.VirtualMachine(b.executable, dev) for k, b in (("tvm_f", f), ("tvm_q", q))}
    sessions = {
        "ort_f": ort_session(proto.SerializeToString(), args.threads),
        "ort_q": ort_session(ort_q, args.threads),
    }

    def call(name):
        if name in vms:
            out = vms[name]["main"](*targs)
            return out
        return sessions[name].run(None, feed)

    def first(out) -> np.ndarray:
        if isinstance(out, list):
            return out[0]
        if hasattr(out, "numpy"):
            return out.numpy()
        return out[0].numpy()

    outs = {name: first(call(name)) for name in ("tvm_f", "tvm_q", "ort_f", "ort_q")}
    names = list(outs)
    for name in names:  # warm-up
        for _ in range(2):
            call(name)

    def best_of(name, n=3) -> float:
        best = float("inf")
        for _ in range(n):
            t = time.perf_counter()
            call(name)
            best = min(best, time.perf_counter() - t)
        return best

    times = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % 4 :] + names[: r % 4]
        for n in order:
            time.sleep(SETTLE_S)  # the previous runtime's spinning workers go to sleep first
            times[n].append(best_of(n))

    def ratio(a, b):
        return round(statistics.median(x / y for x, y in zip(times[a], times[b], strict=True)), 2)

    med = {n: round(statistics.median(t) * 1e3, 2) for n, t in times.items()}
    report = q.quantization["report"]
    return {
        "model": spec,
        "threads": args.threads,
        "rounds": args.rounds,
        "calibration": f"{args.calibration} x{len(samples)}",
        "ms": med,
        "speedup_int8_vs_float": ratio("tvm_f", "tvm_q"),
        "ort_int8_over_tvm_int8": ratio("ort_q", "tvm_q"),
        "ort_float_over_tvm_float": ratio("ort_f", "tvm_f"),
        "ort_int8_speedup": ratio("ort_f", "ort_q"),
        "relerr_tvm_int8": round(rel_err(outs["tvm_q"], outs["tvm_f"]), 4),
        "relerr_ort_int8": round(rel_err(outs["ort_q"], outs["ort_f"]), 4),
        "relerr_tvm_vs_ort_int8": round(rel_err(outs["tvm_q"], outs["ort_q"]), 4),
        "maxabs_tvm_int8": float(np.abs(outs["tvm_q"] - outs["tvm_f"]).max()),
        "maxabs_ort_int8": float(np.abs(outs["ort_q"] - outs["ort_f"]).max()),
        "max_abs_float_output": float(np.abs(outs["tvm_f"]).max()),
        "library_bytes": size,
        "constant_bytes": consts,
        "layers": report["summary"],
        "build_s": round(build_s, 1),
        "ort_quantize_s": round(ort_quant_s, 1),
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }


def table(rows: list[dict]) -> str:
    head = (
        "| model | tvmforge float ms | tvmforge int8 ms | ORT float ms | ORT int8 QDQ ms "
        "| int8/float speed-up (tvmforge) | ORT int8 / tvmforge int8 | int8 rel. err "
        "tvmforge / ORT | int8 max abs err tvmforge / ORT (max abs output) "
        "| int8 weights / float |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        ms = r["ms"]
        c = r["constant_bytes"]
        lines.append(
            f"| {r['model']} | {ms['tvm_f']} | {ms['tvm_q']} | {ms['ort_f']} | {ms['ort_q']} "
            f"| {r['speedup_int8_vs_float']}x | {r['ort_int8_over_tvm_int8']}x "
            f"| {r['relerr_tvm_int8']} / {r['relerr_ort_int8']} "
            f"| {r['maxabs_tvm_int8']:.3g} / {r['maxabs_ort_int8']:.3g} "
            f"({r['max_abs_float_output']:.3g}) "
            f"| {c['int8'] / max(c['float'], 1):.2f} ({c['int8'] / 2**20:.1f} / "
            f"{c['float'] / 2**20:.1f} MiB) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calibration", default="random")
    ap.add_argument("--samples", type=int, default=8, help="random calibration samples")
    ap.add_argument("--write", type=Path, default=None, help="append the table to this file")
    args = ap.parse_args(argv)

    from tvmforge.runtime.executor import set_threads

    set_threads(args.threads)
    rows = []
    for spec in args.models:
        row = bench_model(spec, args)
        print(json.dumps(row), flush=True)
        rows.append(row)
    cmd = "python benchmarks/int8.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (
        f"Measured {time.strftime('%Y-%m-%d %H:%M')}, {args.threads} threads, "
        f"{args.rounds} interleaved rounds (best of 3 per round; medians): `{cmd}`\n\n"
        + table(rows)
        + "\n"
    )
    print(text)
    if args.write:
        with args.write.open("a") as fh:
            fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
