"""ONNX Runtime as the reference: run the same model on the same inputs and compare.

The error measure: ``max_abs`` is the largest absolute difference; ``max_rel`` divides it by the
largest magnitude in the reference output (a per-output relative error that stays meaningful when
single elements are near zero). An output matches when ``max_abs <= atol + rtol * max|ref|``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tvmforge.errors import CompileError, printable
from tvmforge.frontend.importer import OnnxModel, _first_line

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3


def as_given(model: OnnxModel):
    """The model a reference runtime runs: as the user gave it, before ``--freeze`` made some
    inputs constants (those are fed as inputs, see :func:`feed`)."""
    return model.given_proto if model.given_proto is not None else model.proto


def feed(model: OnnxModel, names: list[str], arrays: Mapping[str, np.ndarray]) -> dict:
    """The reference runtime's inputs ``names``: the arrays, and the values frozen inputs
    were compiled with."""
    return {n: (model.frozen[n] if n in model.frozen else arrays[n]) for n in names}


def session(model: OnnxModel, threads: int | None = None, as_written: bool = False):
    """An ONNX Runtime CPU session for the model (``threads`` intra-op threads).

    ``as_written``: no graph optimization, so ORT evaluates a QDQ model's pairs and float ops
    as the graph says instead of fusing them into its int8 kernels (which, on x86 CPUs without
    VNNI, add u8 x s8 pairs in saturating int16 and so drift from the model's own numbers)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if as_written:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(
            as_given(model).SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
    except Exception as err:
        raise CompileError(
            f"{model.path}: ONNX Runtime cannot load the model for comparison: {_first_line(err)}"
        ) from None


def run_onnxruntime(
    model: OnnxModel, arrays: Mapping[str, np.ndarray], threads: int | None = None
) -> dict[str, np.ndarray]:
    """Outputs of ONNX Runtime, by ONNX output name; a QDQ model is evaluated as written
    (see :func:`session`)."""
    ops = {n.op_type for n in model.proto.graph.node}
    sess = session(model, threads, as_written={"QuantizeLinear", "DequantizeLinear"} <= ops)
    names = [o.name for o in sess.get_outputs()]
    inputs = feed(model, [i.name for i in sess.get_inputs()], arrays)
    return dict(zip(names, sess.run(names, inputs), strict=True))


OPENVINO_PRECISIONS = ("default", "f32")


def openvino_model(model: OnnxModel, threads: int | None = None, precision: str = "default"):
    """The model compiled by OpenVINO for this CPU (``threads`` inference threads):
    ``default`` is what a user of OpenVINO gets with no settings (bf16 on CPUs with AMX or
    AVX512-BF16, f32 elsewhere), ``f32`` forces fp32 (``INFERENCE_PRECISION_HINT``).

    Raises
    ------
    CompileError
        When openvino is not installed (``pip install openvino``; not a dependency of
        tvmforge) or cannot read the model.
    """
    import tempfile
    from pathlib import Path

    try:
        import openvino as ov
    except ImportError:
        raise CompileError(
            "OpenVINO is not installed: pip install openvino (it is not a dependency of tvmforge)"
        ) from None
    if precision not in OPENVINO_PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {OPENVINO_PRECISIONS}")
    config: dict = {}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if precision == "f32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    core = ov.Core()
    try:
        with tempfile.TemporaryDirectory(prefix="tvmforge-ov-") as tmp:
            path = Path(tmp) / "model.onnx"
            path.write_bytes(as_given(model).SerializeToString())
            return core.compile_model(core.read_model(str(path)), "CPU", config)
    except Exception as err:
        raise CompileError(
            f"{model.path}: OpenVINO cannot compile the model for comparison: {_first_line(err)}"
        ) from None


def openvino_feed(compiled, model: OnnxModel, arrays: Mapping[str, np.ndarray]) -> list:
    """The arrays in the order of an :func:`openvino_model`'s inputs (the ONNX graph's order,
    without inputs that are initializers)."""
    proto = as_given(model)
    inits = {t.name for t in proto.graph.initializer}
    names = [v.name for v in proto.graph.input if v.name not in inits]
    if len(names) != len(compiled.inputs):
        raise CompileError(f"{model.path}: OpenVINO took {len(compiled.inputs)} input(s), "
                           f"the model has {len(names)}")
    return [np.ascontiguousarray(v) for v in feed(model, names, arrays).values()]


def run_openvino(
    compiled, model: OnnxModel, arrays: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Outputs of an :func:`openvino_model`, by ONNX output name (in the graph's order)."""
    result = compiled.create_infer_request().infer(openvino_feed(compiled, model, arrays))
    names = [o.name for o in model.proto.graph.output]
    return {n: np.asarray(result[out]) for n, out in zip(names, compiled.outputs, strict=True)}


@dataclass(frozen=True)
class Comparison:
    """How one output compares with the reference."""

    name: str
    max_abs: float
    max_rel: float
    ref_max: float
    ok: bool
    note: str = ""

    def line(self) -> str:
        status = "ok" if self.ok else "MISMATCH"
        extra = f" ({self.note})" if self.note else ""
        return (
            f"{printable(self.name)}: max abs err {self.max_abs:.3g}, "
            f"max rel err {self.max_rel:.3g} (max |ref| {self.ref_max:.3g}) {status}{extra}"
        )


def compare(
    outputs: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    *,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> list[Comparison]:
    """Compare every reference output with ours."""
    result = []
    for name, ref in reference.items():
        ref = np.asarray(ref)
        ours = outputs.get(name)
        if ours is None:
            result.append(Comparison(name, np.inf, np.inf, 0.0, False, "missing"))
            continue
        ours = np.asarray(ours)
        if ours.shape != ref.shape:
            note = f"shape {list(ours.shape)} vs {list(ref.shape)}"
            result.append(Comparison(name, np.inf, np.inf, 0.0, False, note))
            continue
        if ref.dtype == bool or ours.dtype == bool:
            diff = float(np.count_nonzero(ours != ref))
            result.append(Comparison(name, diff, diff / max(ref.size, 1), 1.0, diff == 0))
            continue
        a, b = ours.astype(np.float64), ref.astype(np.float64)
        ref_max = float(np.max(np.abs(b))) if b.size else 0.0
        if not np.all(np.isfinite(a) == np.isfinite(b)):
            result.append(Comparison(name, np.inf, np.inf, ref_max, False, "non-finite values"))
            continue
        finite = np.isfinite(b)
        max_abs = float(np.max(np.abs(a[finite] - b[finite]))) if finite.any() else 0.0
        max_rel = max_abs / ref_max if ref_max > 0 else max_abs
        ok = max_abs <= atol + rtol * ref_max
        result.append(Comparison(name, max_abs, max_rel, ref_max, ok))
    return result
