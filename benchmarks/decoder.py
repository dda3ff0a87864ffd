"""One decoding step of a GPT-2-small-shaped decoder stack at batch 1: tvmforge (fp32, int4,
ONNX Runtime's int8 and 4-bit models imported) against ONNX Runtime, in one process.

The model
---------
``--layers`` (4) pre-LayerNorm decoder blocks, built with ``onnx.helper`` and seeded weights
(GPT-2's initialisation, ``N(0, 0.02)``): d_model 768, 12 heads of 64, FFN 3072, GELU (tanh
form as GPT-2, or ``--gelu erf``). Inputs: the new token's hidden state ``x [1, 1, 768]`` and,
per layer, the KV cache ``past_k_i / past_v_i [1, 12, past, 64]`` (``--past``, 128). Outputs:
the hidden state ``y [1, 1, 768]`` and each layer's ``present_k_i / present_v_i [1, 12, past
+ 1, 64]`` (the cache with the new token's K/V appended)::

    h = LN1(x); q, k, v = split(h @ Wqkv + bqkv)           # Wqkv [768, 2304]
    K = concat(past_k, k); V = concat(past_v, v)
    a = softmax(q K^T / 8) V                              # per head
    x = x + a @ Wo + bo                                   # Wo [768, 768]
    x = x + GELU(LN2(x) @ W1 + b1) @ W2 + b2              # W1 [768, 3072], W2 [3072, 768]

The one new token sits at position ``past``, after every cached one, so the causal mask
lets it see the whole cache and itself: no mask op is needed at one token. Per layer the
four weight matmuls read 7.1 M parameters (28.3 MB fp32): at batch 1 they are matrix-vector
products and the step is bound by the weight stream (4 layers: 113 MB, more than the L3
of most CPUs, so the weights come from memory every step, as in LLM generation).

Variants
--------
- tvmforge fp32 (``build_model(model, "x86")``); tvmforge int4 (``quantize="int4"``,
  symmetric, groups of 32 and of ``--group-size``, 128);
- ONNX Runtime's ``quantize_dynamic`` model (int8 weights, per-tensor, activations quantized
  at run time; ``MatMulConstBOnly``: the attention's activation-activation matmuls stay
  fp32) built by tvmforge and run by ORT;
- ONNX Runtime's ``MatMulNBitsQuantizer`` model (4-bit, block 32, symmetric) built by
  tvmforge and run by ORT;
- ORT fp32.

bf16 weights are not built by tvmforge yet: no row.

Timing: the variants are timed interleaved, in rounds; each round rotates the order and takes
each variant's best of ``--calls`` calls after a pause (``SETTLE_S``: the previous variant's
idle workers spin for a while). Printed: the median over rounds, the median per-round ratio to
tvmforge fp32, the weights' size (ORT: the model file; tvmforge: the exported artifact), the
relative L2 error of the hidden state against ORT fp32, and of the blocks' update ``y - x``
(the residual stream carries ``x`` through unchanged, which hides most of the error in ``y``).
tvmforge runs its exported artifact (``tvmforge.runtime.load``) with ``--threads`` workers and
the thread count fixed (``adapt=False``), ORT with ``intra_op_num_threads = --threads``.

Usage::

    python benchmarks/decoder.py [--layers 4] [--past 128] [--threads 2] [--rounds 10]
        [--calls 10] [--group-size 128] [--gelu tanh|erf] [--write benchmarks/results/decoder.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

D_MODEL, HEADS, HEAD_DIM, FFN = 768, 12, 64, 3072
SETTLE_S = 0.1


# --------------------------------------------------------------------------------------------
# The model


def decoder_model(layers: int = 4, past: int = 128, gelu: str = "tanh", seed: int = 0):
    """The decoder stack as an ``onnx.ModelProto`` (see the module docstring)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, D_MODEL])]
    outputs = []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(name: str, *shape: int, scale: float = 0.02, mean: float = 0.0) -> str:
        return const(name, (mean + rng.normal(size=shape) * scale).astype(np.float32))

    def node(op: str, ins: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    heads4 = const("heads_shape", np.array([1, 1, HEADS, HEAD_DIM], np.int64))
    model3 = const("model_shape", np.array([1, 1, D_MODEL], np.int64))
    split3 = const("qkv_split", np.array([D_MODEL] * 3, np.int64))
    half, one = const("half", np.float32(0.5)), const("one", np.float32(1.0))
    att_scale = const("att_scale", np.float32(1 / np.sqrt(HEAD_DIM)))
    if gelu == "tanh":
        cubic = const("gelu_cubic", np.float32(0.044715))
        tanh_scale = const("gelu_tanh_scale", np.float32(np.sqrt(2 / np.pi)))
    else:
        sqrt2 = const("sqrt2", np.float32(np.sqrt(2.0)))

    x = "x"
    for i in range(layers):
        p = f"l{i}_"
        kv_shape = [1, HEADS, past, HEAD_DIM]
        inputs += [helper.make_tensor_value_info(f"past_k_{i}", TensorProto.FLOAT, kv_shape),
                   helper.make_tensor_value_info(f"past_v_{i}", TensorProto.FLOAT, kv_shape)]
        h = node("LayerNormalization", [x, weight(p + "ln1_g", D_MODEL, mean=1.0),
                                        weight(p + "ln1_b", D_MODEL)], p + "ln1", axis=-1,
                 epsilon=1e-5)
        qkv = node("Add", [node("MatMul", [h, weight(p + "w_qkv", D_MODEL, 3 * D_MODEL)],
                                p + "qkv_mm"), weight(p + "b_qkv", 3 * D_MODEL)], p + "qkv")
        nodes.append(helper.make_node("Split", [qkv, split3], [p + "q3", p + "k3", p + "v3"],
                                      name=p + "split", axis=2))
        q, k, v = (node("Transpose", [node("Reshape", [p + t + "3", heads4], p + t + "4")],
                        p + t, perm=[0, 2, 1, 3]) for t in "qkv")
        keys = node("Concat", [f"past_k_{i}", k], f"present_k_{i}", axis=2)
        values = node("Concat", [f"past_v_{i}", v], f"present_v_{i}", axis=2)
        outputs += [helper.make_tensor_value_info(f"present_k_{i}", TensorProto.FLOAT,
                                                  [1, HEADS, past + 1, HEAD_DIM]),
                    helper.make_tensor_value_info(f"present_v_{i}", TensorProto.FLOAT,
                                                  [1, HEADS, past + 1, HEAD_DIM])]
        scores = node("Mul", [node("MatMul", [q, node("Transpose", [keys], p + "kT",
                                                      perm=[0, 1, 3, 2])], p + "qk"),
                              att_scale], p + "scores")
        probs = node("Softmax", [scores], p + "probs", axis=-1)
        ctx = node("Reshape", [node("Transpose", [node("MatMul", [probs, values], p + "ctx4")],
                                    p + "ctx_t", perm=[0, 2, 1, 3]), model3], p + "ctx")
        attn = node("Add", [node("MatMul", [ctx, weight(p + "w_o", D_MODEL, D_MODEL)],
                                 p + "o_mm"), weight(p + "b_o", D_MODEL)], p + "attn")
        x = node("Add", [x, attn], p + "res1")
        h = node("LayerNormalization", [x, weight(p + "ln2_g", D_MODEL, mean=1.0),
                                        weight(p + "ln2_b", D_MODEL)], p + "ln2", axis=-1,
                 epsilon=1e-5)
        up = node("Add", [node("MatMul", [h, weight(p + "w_1", D_MODEL, FFN)], p + "fc1_mm"),
                          weight(p + "b_1", FFN)], p + "fc1")
        if gelu == "tanh":  # 0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3)))
            u3 = node("Mul", [node("Mul", [up, up], p + "u2"), up], p + "u3")
            inner = node("Add", [up, node("Mul", [u3, cubic], p + "cu")], p + "inner")
            t = node("Tanh", [node("Mul", [inner, tanh_scale], p + "ts")], p + "tanh")
        else:  # 0.5 u (1 + erf(u / sqrt 2))
            t = node("Erf", [node("Div", [up, sqrt2], p + "us")], p + "erf")
        act = node("Mul", [node("Mul", [up, half], p + "uh"),
                           node("Add", [t, one], p + "t1")], p + "gelu")
        down = node("Add", [node("MatMul", [act, weight(p + "w_2", FFN, D_MODEL)], p + "fc2_mm"),
                            weight(p + "b_2", D_MODEL)], p + "fc2")
        x = node("Add", [x, down], p + "res2" if i < layers - 1 else "y")
    outputs.insert(0, helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, D_MODEL]))
    graph = helper.make_graph(nodes, "decoder", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def decoder_inputs(layers: int, past: int, seed: int = 1) -> dict[str, np.ndarray]:
    """A hidden state ``N(0, 1)`` and KV caches ``N(0, 1)``."""
    rng = np.random.default_rng(seed)
    feeds = {"x": rng.normal(size=(1, 1, D_MODEL)).astype(np.float32)}
    for i in range(layers):
        for t in "kv":
            feeds[f"past_{t}_{i}"] = rng.normal(size=(1, HEADS, past, HEAD_DIM)).astype(
                np.float32)
    return feeds


# --------------------------------------------------------------------------------------------
# ONNX Runtime's quantized models


def _copy(model):
    import onnx

    return onnx.ModelProto.FromString(model.SerializeToString())


def ort_dynamic_int8(model, tmp: Path):
    """``quantize_dynamic``: int8 weights, per-tensor, weight matmuls only."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = tmp / "fp32.onnx", tmp / "dynamic_int8.onnx"
    onnx.save(model, str(src))
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                     extra_options={"MatMulConstBOnly": True})
    return onnx.load(str(dst))


def ort_matmul_nbits(model, block: int = 32):
    """``MatMulNBitsQuantizer``: 4-bit, symmetric, blocks of ``block`` (it edits its input in
    place: it gets a copy)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(_copy(model), block_size=block, is_symmetric=True)
    q.process()
    return q.model.model


# --------------------------------------------------------------------------------------------
# Runners: () -> outputs, plus the weights' size in bytes


class Variant:
    def __init__(self, name: str, call: Callable[[], list[np.ndarray]],
                 best_of: Callable[[int], float], size: int):
        self.name, self.call, self.best_of, self.size = name, call, best_of, size


def tvmforge_variant(name: str, model, feeds, threads: int, tmp: Path, **build_kw) -> Variant:
    """Build, export and load with a fixed thread count; times the loaded model's calls."""
    from tvmforge.driver.build import build_model, export
    from tvmforge.runtime import executor as runtime

    built = build_model(model, "x86", threads=threads, **build_kw)
    path = export(built, tmp / (name.replace(" ", "_") + ".tar"))
    compiled = runtime.load(path, threads=threads, adapt=False)
    names = [o.name for o in compiled.outputs]

    def call():
        out = compiled.run(feeds)
        return [out[n] for n in names]

    def best_of(calls: int) -> float:
        return min(compiled.time(feeds, repeat=calls))

    return Variant(name, call, best_of, path.stat().st_size)


def ort_variant(name: str, model, feeds, threads: int) -> Variant:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    data = model.SerializeToString()
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])

    def call():
        return sess.run(None, feeds)

    def best_of(calls: int) -> float:
        best = float("inf")
        for _ in range(calls):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            best = min(best, time.perf_counter() - t0)
        return best

    return Variant(name, call, best_of, len(data))


# --------------------------------------------------------------------------------------------
# Machine description


def cpu_description() -> str:
    """``/proc/cpuinfo``'s model name, the logical CPUs, and the AVX-512/VNNI/AMX flags."""
    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == "unknown CPU":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    marks = [f"{f} {'yes' if f in flags else 'no'}"
             for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")]
    return f"{name}, {os.cpu_count()} logical CPUs; " + ", ".join(marks)


# --------------------------------------------------------------------------------------------
# Main


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def build_variants(args, tmp: Path) -> tuple[list[Variant], dict[str, np.ndarray]]:
    model = decoder_model(args.layers, args.past, args.gelu)
    feeds = decoder_inputs(args.layers, args.past)
    dyn = ort_dynamic_int8(model, tmp)
    nbits = ort_matmul_nbits(model, 32)
    t = args.threads
    specs = [
        ("tvmforge fp32", lambda: tvmforge_variant("tvmforge fp32", model, feeds, t, tmp)),
        ("tvmforge int4 g32", lambda: tvmforge_variant(
            "tvmforge int4 g32", model, feeds, t, tmp, quantize="int4", group_size=32)),
        (f"tvmforge int4 g{args.group_size}", lambda: tvmforge_variant(
            f"tvmforge int4 g{args.group_size}", model, feeds, t, tmp, quantize="int4",
            group_size=args.group_size)),
        ("tvmforge ORT-int8-dynamic", lambda: tvmforge_variant(
            "tvmforge ORT-int8-dynamic", dyn, feeds, t, tmp)),
        ("tvmforge ORT-MatMulNBits", lambda: tvmforge_variant(
            "tvmforge ORT-MatMulNBits", nbits, feeds, t, tmp)),
        ("ORT fp32", lambda: ort_variant("ORT fp32", model, feeds, t)),
        ("ORT int8-dynamic", lambda: ort_variant("ORT int8-dynamic", dyn, feeds, t)),
        ("ORT MatMulNBits", lambda: ort_variant("ORT MatMulNBits", nbits, feeds, t)),
    ]
    variants = []
    for name, make in specs:
        if args.only and not any(s in name for s in args.only.split(",")):
            continue
        t0 = time.perf_counter()
        variants.append(make())
        print(f"  built {name} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return variants, feeds


def measure(variants: list[Variant], rounds: int, calls: int) -> dict[str, list[float]]:
    """Per variant, the best-of-``calls`` seconds of each round (order rotating)."""
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(rounds):
        shift = r % len(variants)
        for v in variants[shift:] + variants[:shift]:
            time.sleep(SETTLE_S)
            times[v.name].append(v.best_of(calls))
    return times


def report(args, variants, feeds, outs, times, load: tuple[float, float]) -> str:
    ref = outs["ORT fp32"] if "ORT fp32" in outs else outs[variants[0].name]
    base = "tvmforge fp32" if "tvmforge fp32" in times else variants[0].name
    x = feeds["x"]
    lines = [
        "| variant | ms | vs tvmforge fp32 | weights / artifact MB | rel. err y | "
        "rel. err y - x | max err K/V cache |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v in variants:
        ratio = statistics.median(a / b for a, b in zip(times[v.name], times[base], strict=True))
        y = outs[v.name][0]
        kv = max(_rel(a, b) for a, b in zip(outs[v.name][1:], ref[1:], strict=True))
        lines.append(
            f"| {v.name} | {statistics.median(times[v.name]) * 1e3:.3f} | {ratio:.2f} | "
            f"{v.size / 2**20:.1f} | {_rel(y, ref[0]):.2e} | {_rel(y - x, ref[0] - x):.2e} | "
            f"{kv:.2e} |")
    lines.append("| bf16 (tvmforge) | not built yet | | | | | |")
    weights = args.layers * (4 * D_MODEL * D_MODEL + 2 * D_MODEL * FFN) * 4
    head = [
        f"# Decoder step at batch 1: {args.layers} GPT-2-small blocks, KV cache {args.past}",
        "",
        f"Date: {datetime.datetime.now():%Y-%m-%d %H:%M}. CPU: {cpu_description()}. "
        f"Load average (1 min) {load[0]:.2f} at the start, {load[1]:.2f} at the end.",
        f"Command: `python benchmarks/decoder.py {shlex.join(sys.argv[1:])}`",
        "",
        f"One new token through {args.layers} pre-LN decoder blocks (d_model 768, 12 heads, FFN "
        f"3072, GELU {args.gelu}, KV cache of {args.past} tokens given as inputs), seeded "
        f"weights; the weight matmuls are matrix-vector products reading "
        f"{weights / 1e6:.0f} MB of fp32 weights per step. {args.threads} threads; "
        f"{args.rounds} rounds, each the best of {args.calls} calls per variant, order "
        "rotating; ms is the median over rounds, the ratio the median per-round ratio. "
        "Errors are relative L2 against ORT fp32: of the output hidden state `y`, of the "
        "blocks' update `y - x`, and the largest over the new K/V caches.",
        "",
    ]
    notes = [
        "",
        "Notes: `tvmforge ORT-*` rows are ORT's quantized models (`quantize_dynamic`, int8 "
        "per-tensor weights with activations quantized at run time, `MatMulConstBOnly`; "
        "`MatMulNBitsQuantizer`, 4-bit block 32 symmetric) compiled by tvmforge. bf16 weights "
        "are not built by tvmforge yet (no row is faked). tvmforge sizes are the exported "
        "artifact (library + manifest), ORT's the serialized model.",
    ]
    same = [(f"tvmforge {a}", f"ORT {a.removeprefix('ORT-')}")
            for a in ("ORT-int8-dynamic", "ORT-MatMulNBits")]
    diffs = [f"{a} vs {b}: {_rel(outs[a][0], outs[b][0]):.1e}" for a, b in same
             if a in outs and b in outs]
    if diffs:
        notes += ["", "tvmforge against ORT on the same quantized model (rel. L2 of `y`): "
                  + "; ".join(diffs) + "."]
    if args.note:
        notes += ["", args.note]
    return "\n".join(head + lines + notes) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--past", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--gelu", choices=("tanh", "erf"), default="tanh")
    ap.add_argument("--only", default="", help="comma-separated name parts: build only these")
    ap.add_argument("--write", type=Path, help="write the markdown table here")
    ap.add_argument("--note", default="", help="a note for the written table")
    args = ap.parse_args()

    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        variants, feeds = build_variants(args, Path(tmp))
        outs = {v.name: v.call() for v in variants}
        times = measure(variants, args.rounds, args.calls)
    text = report(args, variants, feeds, outs, times, (load0, os.getloadavg()[0]))
    print(text)
    if args.write:
        args.write.write_text(text)


if __name__ == "__main__":
    main()
