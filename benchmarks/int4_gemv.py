"""4-bit weight-only against fp32 at batch 1: a GPT-2-small-shaped MLP block
(``x[1, 768] -> MatMul 768x3072 -> Relu -> MatMul 3072x768``), five variants in one process:

- tvmforge fp32 (``build_model``) and tvmforge int4 (``quantize_int4``, group 32, symmetric);
- ONNX Runtime fp32, ONNX Runtime ``MatMulNBits`` (the fp32 model quantized by ORT's
  ``MatMulNBitsQuantizer``, block 32, symmetric, ``accuracy_level`` unset: fp32 compute);
- tvmforge on that ORT ``MatMulNBits`` model (the same 4-bit weights, imported).

Timing: rounds interleave the variants (order rotating), each variant's time in a round is
the best of ``--calls`` calls after a short pause (idle workers of the previous variant spin
for a while); the medians over the rounds and the median per-round ratio to tvmforge fp32 are
printed, so noise from other users of the machine hits all variants alike.

Usage::

    python benchmarks/int4_gemv.py --threads 2 --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

SETTLE_S = 0.1


def _mlp(k: int, h: int, seed: int = 0):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.normal(size=(k, h)) * 0.02).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.normal(size=(h, k)) * 0.02).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, k])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _tvm_runner(built, x):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    arg = tvm.runtime.tensor(x)
    fn = vm["main"]
    return lambda: fn(arg).numpy()


def _ort_runner(model, x, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"x": x})[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=3072)
    ap.add_argument("--dim", type=int, default=768)
    args = ap.parse_args()
    from tvmforge.runtime.executor import set_threads

    set_threads(args.threads)  # TVM's pool, which relax.VirtualMachine alone leaves at its default

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from tvmforge.driver.build import build_model
    from tvmforge.passes.quantize.int4 import int4_pass, lower_matmul_nbits

    model = _mlp(args.dim, args.hidden)
    x = np.random.default_rng(1).normal(size=(1, args.dim)).astype(np.float32)
    import onnx

    # the quantizer rewrites the model it is given in place: give it a copy
    q = MatMulNBitsQuantizer(onnx.ModelProto.FromString(model.SerializeToString()),
                             block_size=32, is_symmetric=True)
    q.process()
    nbits = q.model.model
    quant = int4_pass(32, True)
    variants = {
        "tvmforge fp32": _tvm_runner(build_model(model, "x86", threads=args.threads), x),
        "tvmforge int4": _tvm_runner(
            build_model(model, "x86", threads=args.threads, graph_passes=[quant]), x),
        "tvmforge MatMulNBits": _tvm_runner(
            build_model(nbits, "x86", threads=args.threads,
                        graph_passes=[lower_matmul_nbits()]), x),
        "ORT fp32": _ort_runner(model, x, args.threads),
        "ORT MatMulNBits": _ort_runner(nbits, x, args.threads),
    }
    outs = {name: run() for name, run in variants.items()}
    ref = outs["tvmforge fp32"]
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            run = variants[name]
            time.sleep(SETTLE_S)
            best = float("inf")
            for _ in range(args.calls):
                t0 = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - t0)
            times[name].append(best)
    print(f"MLP {args.dim} -> {args.hidden} -> {args.dim}, M=1, {args.threads} threads, "
          f"{args.rounds} rounds x best of {args.calls}; {quant.report.summary()}")
    print(f"{'variant':24s} {'median us':>10s} {'vs tvmforge fp32':>17s} {'rel. err':>9s}")
    for name in names:
        ratio = statistics.median(a / b for a, b in zip(times[name], times["tvmforge fp32"],
                                                         strict=True))
        err = np.linalg.norm(outs[name] - ref) / np.linalg.norm(ref)
        print(f"{name:24s} {statistics.median(times[name]) * 1e6:10.1f} {ratio:17.2f} "
              f"{err:9.4f}")
    a, b = outs["tvmforge MatMulNBits"], outs["ORT MatMulNBits"]
    print(f"tvmforge vs ORT on the MatMulNBits model: rel. diff "
          f"{np.linalg.norm(a - b) / np.linalg.norm(b):.2e}")


if __name__ == "__main__":
    main()
