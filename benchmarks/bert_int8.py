"""Transformers in int8: BERT-base with dynamic activation scales, against fp32 and ONNX Runtime.

Variants, all in one process on the same input (``zoo:bert-base``, or any model whose
matmuls have constant weights; ``--seq`` fixes the sequence length of ``zoo:bert-base``):

- ``tvm fp32``: ``build_model(model)``;
- ``tvm int8 dynamic``: ``build_model(model, quantize="int8", activation_scales="dynamic")``:
  every matmul with a constant weight on the int8 kernels, its input quantized per tensor
  at run time; LayerNorm, softmax, GELU and attention's two activation matmuls stay fp32;
- ``tvm on ORT dynamic``: the model quantized by ``onnxruntime.quantization.quantize_dynamic``
  (int8 weights, per tensor), compiled by tvmforge as it is;
- ``ORT fp32``, ``ORT dynamic``: ONNX Runtime on the float and the ``quantize_dynamic`` model.

Timing as ``benchmarks/int8.py`` (rounds interleave the variants, rotating; best of 3 per
round; medians; ratios are medians of per-round ratios against ``tvm fp32``). Errors:
``||y - y_fp32|| / ||y_fp32||`` and the cosine against tvmforge's fp32 output. Sizes: bytes
of the exported library (tvmforge) or of the ONNX file (ORT).

Usage::

    python benchmarks/bert_int8.py --rounds 7 --write benchmarks/results/bert_int8.md
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="zoo:bert-base")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--write", type=Path, default=None, help="append the table to this file")
    args = ap.parse_args(argv)

    import onnx
    import onnxruntime as ort
    import tvm
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from tvm import relax

    from tvmforge.driver.build import build_model
    from tvmforge.frontend import importer as frontend
    from tvmforge.runtime.executor import set_threads
    from tvmforge.targets.features import detect_host

    set_threads(args.threads)
    model = frontend.load(args.model)
    inputs = frontend.resolve_inputs(model, {})
    rng = np.random.default_rng(0)
    feeds = {i.name: (rng.integers(0, 100, [int(d) for d in i.shape]).astype(i.dtype)
                      if "int" in i.dtype else
                      rng.standard_normal([int(d) for d in i.shape]).astype(i.dtype))
             for i in inputs}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="tvmforge-bert-") as tmp:
        folder = Path(tmp)
        src, dyn = folder / "f.onnx", folder / "dyn.onnx"
        onnx.save(model.proto, str(src))
        quantize_dynamic(str(src), str(dyn), weight_type=QuantType.QInt8)
        dyn_bytes = dyn.read_bytes()
        sizes["ORT fp32"], sizes["ORT dynamic"] = src.stat().st_size, len(dyn_bytes)
        builds = {}
        for name, proto, kw in (
                ("tvm fp32", model.proto, {}),
                ("tvm int8 dynamic", model.proto,
                 {"quantize": "int8", "activation_scales": "dynamic"}),
                ("tvm on ORT dynamic", onnx.load_from_string(dyn_bytes), {})):
            t0 = time.perf_counter()
            builds[name] = build_model(proto, "x86", threads=args.threads, **kw)
            print(f"built {name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            path = folder / f"{len(sizes)}.so"
            builds[name].executable.export_library(str(path))
            sizes[name] = path.stat().st_size
    dev = tvm.cpu()
    targs = [tvm.runtime.tensor(feeds[i.name], dev) for i in inputs]
    vms = {n: relax.VirtualMachine(b.executable, dev)["main"] for n, b in builds.items()}
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    sessions = {"ORT fp32": ort.InferenceSession(model.proto.SerializeToString(), opts,
                                                 providers=["CPUExecutionProvider"]),
                "ORT dynamic": ort.InferenceSession(dyn_bytes, opts,
                                                    providers=["CPUExecutionProvider"])}

    def call(name):
        return vms[name](*targs) if name in vms else sessions[name].run(None, feeds)

    def first(out) -> np.ndarray:
        if isinstance(out, list):
            return np.asarray(out[0], np.float64)
        return (out.numpy() if hasattr(out, "numpy") else out[0].numpy()).astype(np.float64)

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
    ref = outs["tvm fp32"]
    cpu = detect_host()
    cmd = "python benchmarks/bert_int8.py " + " ".join(argv if argv is not None
                                                      else sys.argv[1:])
    lines = [f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {cpu.model_name} (int8 dot "
             f"product: {cpu.int8_dot}, {cpu.lanes} fp32 lanes), {args.threads} threads, "
             f"{args.rounds} interleaved rounds, load {os.getloadavg()[0]:.2f}: `{cmd}`", "",
             "| variant | ms | / tvm fp32 | size MiB | rel. err vs fp32 | cosine |",
             "|---|---:|---:|---:|---:|---:|"]
    for n in names:
        ratio = statistics.median(a / b for a, b in zip(times[n], times["tvm fp32"],
                                                        strict=True))
        y = outs[n]
        err = np.linalg.norm(y - ref) / np.linalg.norm(ref)
        cos = float((y * ref).sum() / (np.linalg.norm(y) * np.linalg.norm(ref)))
        lines.append(f"| {n} | {statistics.median(times[n]) * 1e3:.1f} | {ratio:.2f}x | "
                     f"{sizes[n] / 2**20:.1f} | {err:.4f} | {cos:.5f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        with args.write.open("a") as fh:
            fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
