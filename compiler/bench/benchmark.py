"""tvmforge against ONNX Runtime on the same model, inputs and thread count.

Both run a warm-up, then ``repeat`` timed calls each, alternating in rounds of a few calls
(the machine's load then falls on both alike); the report gives medians, the spread
(interquartile range), the ratio tvmforge/ONNX Runtime (below 1 means tvmforge is faster) and
the largest output difference.

The ratio is paired: the median over rounds of (tvmforge's median in the round / ONNX
Runtime's median in the same round). On shared cores the load drifts within a run; a round's
two halves run within a few hundred milliseconds of each other, so each round's ratio sees one
load, where the ratio of the two overall medians mixes rounds that saw different loads.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tvmforge.bench import reference
from tvmforge.driver.build import build_model, export
from tvmforge.errors import CompileError
from tvmforge.runtime.executor import load, random_inputs


@dataclass
class BenchResult:
    model: str
    target: str
    threads: int | None
    repeat: int
    compile_s: float
    tvmforge_ms: float
    tvmforge_iqr_ms: float
    ort_ms: float
    ort_iqr_ms: float
    ratio: float
    max_abs_err: float
    max_rel_err: float
    outputs_match: bool
    lossy: bool = False  # pruned/quantized: compared with the float model, differences expected
    threads_used: int = 0  # the worker threads TVM's pool ran on
    tvmforge_mean_ms: float = 0.0
    tvmforge_p90_ms: float = 0.0
    tvmforge_p99_ms: float = 0.0
    throughput_per_s: float = 0.0  # tvmforge runs per second at the median latency
    busy: bool = False  # the spread says the machine was busy: the figures are noisy
    # the thread counts tvmforge's runtime went to while the cores were busy (in order)
    thread_changes: list[int] = field(default_factory=list)
    # With ``openvino=``: OpenVINO on the same inputs and threads, timed in the same rounds.
    openvino_precision: str | None = None  # "default" (bf16 where the CPU has it) or "f32"
    openvino_ms: float | None = None
    openvino_iqr_ms: float | None = None
    ratio_openvino: float | None = None  # tvmforge / OpenVINO, paired like ``ratio``
    openvino_max_rel_err: float | None = None  # OpenVINO's own difference from ONNX Runtime
    openvino_error: str | None = None  # why OpenVINO could not run the model (not ours to fix)

    @property
    def spread(self) -> float:
        """Interquartile range over median, tvmforge's and ONNX Runtime's, the larger."""
        return max(self.tvmforge_iqr_ms / max(self.tvmforge_ms, 1e-9),
                   self.ort_iqr_ms / max(self.ort_ms, 1e-9))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)



# After its last kernel a worker of TVM's pool spins (``runtime.SPIN_COUNT``, ~30 ms here)
# before it sleeps, and ONNX Runtime's idle threads spin too: each library is timed after the
# other's have stopped (back to back, ONNX Runtime's spinning made tvmforge's pool shrink, as
# it does beside any busy neighbour).
SETTLE_S = 0.2

# An interquartile range above this fraction of the median: the machine was busy (a quiet
# 2-core machine gives 1-5 %).
BUSY_SPREAD = 0.15

# Runs per runtime and round: ``bench`` alternates tvmforge and ONNX Runtime in rounds.
ROUND = 5


def paired_ratio(rounds: list[tuple[list[float], list[float]]]) -> float:
    """Median over rounds of (median of the first runtime's times / median of the second's)."""
    ratios = [
        statistics.median(a) / statistics.median(b) for a, b in rounds if a and b and min(b) > 0
    ]
    return statistics.median(ratios) if ratios else float("inf")


def _median_iqr(seconds: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1e3 for s in seconds)
    if len(ms) < 4:
        return statistics.median(ms), 0.0
    q = statistics.quantiles(ms, n=4)
    return statistics.median(ms), q[2] - q[0]


def compiled_threads() -> int:
    """The worker threads this process's TVM pool runs on (what OpenVINO is given when no
    thread count was asked for, so that both run on as many threads)."""
    from tvmforge.runtime.executor import pool_threads

    return pool_threads()


def bench(
    model_spec: str,
    target: str = "x86",
    *,
    threads: int | None = None,
    adapt: bool = True,
    repeat: int = 20,
    warmup: int = 2,
    seed: int = 0,
    openvino: str | None = None,
    **build_options: Any,
) -> BenchResult:
    """Compile ``model_spec`` and time it against ONNX Runtime: ``repeat`` runs of each, in
    alternating rounds of ``ROUND``, after ``warmup`` runs. ``adapt``: the thread count
    follows contention, as ``load`` does by default. ``openvino`` ("default" or "f32"): time
    OpenVINO in the same rounds too (``reference.openvino_model``)."""
    t0 = time.perf_counter()
    built = build_model(model_spec, target, threads=threads, **build_options)
    with tempfile.TemporaryDirectory(prefix="tvmforge-bench-") as tmp:
        path = export(built, Path(tmp) / "bench.tar")
        compile_s = time.perf_counter() - t0
        compiled = load(path, threads=threads, adapt=adapt)
        arrays = random_inputs(compiled.inputs, seed)
        ours = compiled.run(arrays)
        ref = reference.run_onnxruntime(built.model, arrays, threads)
        cmp = reference.compare(ours, ref)
        for _ in range(max(warmup - 1, 0)):
            compiled.run(arrays)
        sess = reference.session(built.model, threads)
        feed = reference.feed(built.model, [i.name for i in sess.get_inputs()], arrays)
        for _ in range(warmup):
            sess.run(None, feed)
        ov_request = ov_feed = None
        ov_rel = ov_error = None
        if openvino is not None:
            ov_threads = threads or compiled_threads()
            try:
                ov_model = reference.openvino_model(built.model, ov_threads, openvino)
                ov_out = reference.run_openvino(ov_model, built.model, arrays)
            except CompileError as err:  # OpenVINO lacks an op (If, ai.onnx.ml): no column
                ov_error = str(err)
            else:
                cmp_ov = reference.compare(ov_out, ref)
                ov_rel = float(max((c.max_rel for c in cmp_ov), default=0.0))
                ov_request = ov_model.create_infer_request()
                ov_feed = reference.openvino_feed(ov_model, built.model, arrays)
                for _ in range(warmup):
                    ov_request.infer(ov_feed)
        # Interleaved in rounds of ROUND runs each, so that a neighbour's load on the shared
        # cores falls on both runtimes alike rather than on whichever ran during it.
        tvm_times, ort_times, ov_times = [], [], []
        rounds: list[tuple[list[float], list[float]]] = []
        ov_rounds: list[tuple[list[float], list[float]]] = []
        while len(tvm_times) < repeat:
            n = min(ROUND, repeat - len(tvm_times))
            time.sleep(SETTLE_S)  # ONNX Runtime's idle threads spin too: let them stop first
            compiled.run(arrays)  # the pool's workers were asleep during ONNX Runtime
            ours_round = compiled.time(arrays, n)
            time.sleep(SETTLE_S)  # tvmforge's idle workers stop spinning before ORT runs
            sess.run(None, feed)
            ort_round = []
            for _ in range(n):
                t1 = time.perf_counter()
                sess.run(None, feed)
                ort_round.append(time.perf_counter() - t1)
            tvm_times += ours_round
            ort_times += ort_round
            rounds.append((ours_round, ort_round))
            if ov_request is not None:
                time.sleep(SETTLE_S)
                ov_request.infer(ov_feed)
                ov_round = []
                for _ in range(n):
                    t1 = time.perf_counter()
                    ov_request.infer(ov_feed)
                    ov_round.append(time.perf_counter() - t1)
                ov_times += ov_round
                ov_rounds.append((ours_round, ov_round))
    tvm_med, tvm_iqr = _median_iqr(tvm_times)
    ort_med, ort_iqr = _median_iqr(ort_times)
    ms = np.asarray(tvm_times) * 1e3
    from tvmforge.runtime.executor import pool_threads

    result = BenchResult(
        model=model_spec,
        target=built.target.spec(),
        threads=threads,
        repeat=repeat,
        compile_s=round(compile_s, 2),
        tvmforge_ms=round(tvm_med, 3),
        tvmforge_iqr_ms=round(tvm_iqr, 3),
        ort_ms=round(ort_med, 3),
        ort_iqr_ms=round(ort_iqr, 3),
        ratio=round(paired_ratio(rounds), 2),
        max_abs_err=float(max((c.max_abs for c in cmp), default=0.0)),
        max_rel_err=float(max((c.max_rel for c in cmp), default=0.0)),
        outputs_match=all(c.ok for c in cmp),
        lossy=bool(build_options.get("quantize")) or bool(build_options.get("prune")),
        threads_used=compiled.governor.full if compiled.governor else pool_threads(),
        tvmforge_mean_ms=round(float(ms.mean()), 3),
        tvmforge_p90_ms=round(float(np.percentile(ms, 90)), 3),
        tvmforge_p99_ms=round(float(np.percentile(ms, 99)), 3),
        throughput_per_s=round(1e3 / tvm_med, 2) if tvm_med > 0 else 0.0,
    )
    result.openvino_error = ov_error
    if ov_times:
        ov_med, ov_iqr = _median_iqr(ov_times)
        result.openvino_precision = openvino
        result.openvino_ms, result.openvino_iqr_ms = round(ov_med, 3), round(ov_iqr, 3)
        result.ratio_openvino = round(paired_ratio(ov_rounds), 2)
        result.openvino_max_rel_err = ov_rel
    result.busy = result.spread > BUSY_SPREAD
    if compiled.governor is not None:
        result.thread_changes = [c[1] for c in compiled.governor.changes]
    return result


__all__ = ["BenchResult", "bench", "paired_ratio"]
