"""Pre-quantized models: ONNX Runtime's ``quantize_static`` output compiled with no flag, against
tvmforge's own ``--quantize int8`` of the float model and against ONNX Runtime, in one run.

For each model the float ONNX model is quantized by ``onnxruntime.quantization.quantize_static``
(QDQ, and with ``--qoperator`` the QOperator format too; per-channel int8 weights, uint8
activations, MinMax) on the same seeded random samples that calibrate tvmforge's own int8
build. The variants, built for ``--target`` (default: this machine), all in one process:

- ``tvm float``: the float model;
- ``tvm int8 (own)``: ``--quantize int8`` of the float model on the same samples;
- ``tvm QDQ auto``: ORT's QDQ model with no flag (what ``--precision auto`` picks here);
- ``tvm QDQ fp32`` / ``tvm QDQ int8``: the same with ``--precision fp32`` / ``int8`` (when
  different from auto);
- ``tvm QOp auto``: ORT's QOperator model with no flag (``--qoperator``);
- ``ORT float``, ``ORT QDQ``: ONNX Runtime on the float and the QDQ model.

Timing as ``benchmarks/int8.py``: rounds interleave the variants (the order rotates), best of
3 calls per round, medians; the ratios are medians of the per-round ratios. Sizes: bytes of the
exported library. Errors: ``||y - y_float|| / ||y_float||`` against tvmforge's float build on a
held-out input, and against ORT running the QDQ model.

A target this machine cannot run (``x86:avx512-vnni`` on an AVX2 CPU) is built, not timed:
the table then gives the kernels each build has (what ``quantize_int8`` reports) and the sizes.

Usage::

    python benchmarks/prequantized.py zoo:resnet50 zoo:squeezenet --rounds 7 --qoperator \\
        --write benchmarks/results/prequantized.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SETTLE_S = 0.1


def quantize_ort(proto, samples: list[dict[str, np.ndarray]], folder: Path, fmt: str) -> bytes:
    """``quantize_static`` of ``proto`` in ``fmt`` (``QDQ`` or ``QOperator``)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(samples)

        def get_next(self):
            return next(self.it, None)

    src, pre, dst = folder / "float.onnx", folder / "pre.onnx", folder / f"{fmt}.onnx"
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:  # per-channel DequantizeLinear (its axis) needs opset 13
        from onnx import version_converter

        proto = version_converter.convert_version(proto, 13)
    onnx.save(proto, str(src))
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    except Exception:  # pre-processing is an optimization: quantize the original then
        pre = src
    quantize_static(str(pre), str(dst), Reader(), quant_format=getattr(QuantFormat, fmt),
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return dst.read_bytes()


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b), 1e-30))


def bench_model(spec: str, args) -> dict:
    import onnx
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from tvmforge.driver.build import build_model
    from tvmforge.frontend import importer as frontend
    from tvmforge.targets import resolve

    model = frontend.load(spec)
    inputs = frontend.resolve_inputs(model, {})
    rng = np.random.default_rng(0)
    samples = [{i.name: rng.random([int(d) for d in i.shape]).astype(i.dtype) for i in inputs}
               for _ in range(args.samples)]
    calib = {i.name: np.stack([s[i.name] for s in samples]) for i in inputs}
    from tvmforge.targets.features import detect_host, features_of

    wanted, host = features_of(resolve(args.target).tvm_target()), detect_host()
    runs_here = (wanted is not None and wanted.arch == host.arch and wanted.lanes <= host.lanes
                 and wanted.int8_dot in ("none", host.int8_dot))
    builds: dict[str, object] = {}
    protos: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="tvmforge-preq-") as tmp:
        folder = Path(tmp)
        protos["qdq"] = quantize_ort(model.proto, samples, folder, "QDQ")
        if args.qoperator:
            protos["qop"] = quantize_ort(model.proto, samples, folder, "QOperator")

        def build(name, proto, **kw):
            t0 = time.perf_counter()
            builds[name] = build_model(proto, args.target, threads=args.threads, **kw)
            print(f"  built {name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        build("tvm float", model.proto)
        build("tvm int8 (own)", model.proto, quantize="int8", calibration=calib)
        build("tvm QDQ auto", onnx.load_from_string(protos["qdq"]))
        auto = builds["tvm QDQ auto"].precision["kernels"]
        other = "int8" if auto == "fp32" else "fp32"
        build(f"tvm QDQ {other}", onnx.load_from_string(protos["qdq"]), precision=other)
        if args.qoperator:
            build("tvm QOp auto", onnx.load_from_string(protos["qop"]))
        sizes = {}
        for name, b in builds.items():
            path = folder / (name.replace(" ", "_").replace("(", "").replace(")", "") + ".so")
            b.executable.export_library(str(path))
            sizes[name] = path.stat().st_size
    kernels = {name: (b.quantization or {}).get("report", {}).get("summary", "float kernels")
               for name, b in builds.items()}
    notes = {name: b.precision.get("reason", "") for name, b in builds.items()}
    row = {"model": spec, "target": args.target, "threads": args.threads, "sizes": sizes,
           "kernels": kernels, "precision": notes, "ms": {}, "ratio": {}, "relerr": {}}
    if not runs_here:
        return row

    held = [np.random.default_rng(1234).random([int(d) for d in i.shape]).astype(i.dtype)
            for i in inputs]
    feed = {i.name: a for i, a in zip(inputs, held, strict=True)}
    dev = tvm.cpu()
    targs = [tvm.runtime.tensor(a, dev) for a in held]
    vms = {name: relax.VirtualMachine(b.executable, dev)["main"] for name, b in builds.items()}
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    sessions = {"ORT float": ort.InferenceSession(model.proto.SerializeToString(), opts,
                                                  providers=["CPUExecutionProvider"]),
                "ORT QDQ": ort.InferenceSession(protos["qdq"], opts,
                                                providers=["CPUExecutionProvider"])}

    def call(name):
        if name in vms:
            return vms[name](*targs)
        return sessions[name].run(None, feed)

    def first(out) -> np.ndarray:
        if isinstance(out, list):
            return np.asarray(out[0])
        return out.numpy() if hasattr(out, "numpy") else out[0].numpy()

    names = [*vms, *sessions]
    outs = {n: first(call(n)) for n in names}
    for n in names:
        call(n)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            time.sleep(SETTLE_S)
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                call(n)
                best = min(best, time.perf_counter() - t)
            times[n].append(best)
    row["ms"] = {n: round(statistics.median(t) * 1e3, 2) for n, t in times.items()}
    base = "tvm int8 (own)"
    row["ratio"] = {n: round(statistics.median(a / b for a, b in zip(times[n], times[base],
                                                                    strict=True)), 2)
                    for n in names}
    row["relerr"] = {n: (round(rel_err(outs[n], outs["tvm float"]), 4),
                         round(rel_err(outs[n], outs["ORT QDQ"]), 4)) for n in names}
    row["loadavg_1min"] = round(os.getloadavg()[0], 2)
    return row


def table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        float_size = r["sizes"]["tvm float"]
        lines.append(f"**{r['model']}** ({r['target']}, {r['threads']} threads"
                     + (f", load {r['loadavg_1min']}" if "loadavg_1min" in r else "") + ")\n")
        lines.append("| variant | ms | / own int8 | size / float | rel. err vs float / vs ORT "
                     "QDQ | kernels |")
        lines.append("|---|---:|---:|---:|---:|---|")
        for name in [*r["sizes"], *(n for n in r["ms"] if n not in r["sizes"])]:
            ms = r["ms"].get(name, "-")
            ratio = f"{r['ratio'][name]}x" if name in r["ratio"] else "-"
            size = (f"{r['sizes'][name] / float_size:.2f}" if name in r["sizes"] else "-")
            err = r["relerr"].get(name)
            err = f"{err[0]} / {err[1]}" if err else "-"
            kern = r["kernels"].get(name, "")
            why = r["precision"].get(name, "")
            lines.append(f"| {name} | {ms} | {ratio} | {size} | {err} | {kern}"
                         + (f"; {why}" if why else "") + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--target", default="x86")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--samples", type=int, default=8, help="random calibration samples")
    ap.add_argument("--qoperator", action="store_true", help="also the QOperator format")
    ap.add_argument("--write", type=Path, default=None, help="append the tables to this file")
    args = ap.parse_args(argv)

    from tvmforge.runtime.executor import set_threads
    from tvmforge.targets.features import detect_host

    set_threads(args.threads)
    rows = [bench_model(spec, args) for spec in args.models]
    cpu = detect_host()
    cmd = "python benchmarks/prequantized.py " + " ".join(argv if argv is not None
                                                          else sys.argv[1:])
    text = (f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {cpu.model_name} "
            f"(int8 dot product: {cpu.int8_dot}, {cpu.lanes} fp32 lanes), {args.rounds} "
            f"interleaved rounds: `{cmd}`\n\n" + table(rows))
    print(text)
    if args.write:
        with args.write.open("a") as fh:
            fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
